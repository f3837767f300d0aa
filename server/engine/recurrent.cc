#include "server/engine/recurrent.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "server/engine/dropout.h"
#include "server/engine/gemm.h"
#include "server/engine/thread_pool.h"

namespace dropnet::engine {
namespace {

// Indices of LayerCache::extra.
enum CacheSlot {
  kInputs = 0,   // T*B x F: the (masked) inputs, time-major (row t*B + b)
  kGates,        // T*B x G: gate activations after their nonlinearities
  kStates,       // (T+1)*B x H: h_0 = 0, h_1 .. h_T
  kRecurrentIn,  // T*B x H: h_{t-1} times the recurrent mask, as fed to weight_hh
  kCells,        // LSTM: (T+1)*B x H cell states; GRU: T*B x H, W_hn h + b_hn
  kCandTanh,     // LSTM: T*B x H, tanh(c~_t)
  kInputMask,    // B x F or empty
  kRecMask,      // B x H or empty
  kCellZone,     // T*B x H zoneout keep-previous masks (0/1) or empty
  kHiddenZone,   // T*B x H or empty
  kSlots
};

using Block = Eigen::Block<Matrix, Eigen::Dynamic, Eigen::Dynamic, true>;
using Array = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename T>
auto Sigmoid(const T& a) {
  return (a * 0.5f).tanh() * 0.5f + 0.5f;
}

// The masks of one pass, empty when not drawn: the variational input (b x f) and recurrent
// (b x h) masks, one per sequence, and the zoneout draws of every step, time-major (T*b x h, 1 =
// keep the previous state).
struct SequenceMasks {
  Matrix in, rec, cell, hidden;
};

// Draws the masks of rows [row_offset, row_offset + b) of a pass at the addresses of ctx: the
// input and recurrent masks at rates p_in and p_rec (scaled by 1/(1-p)), zoneout with probability
// z_cell and z_hidden; a zero rate draws nothing.
SequenceMasks DrawSequenceMasks(const Context& ctx, int64_t row_offset, int64_t b, int64_t t_steps,
                                int64_t f, int64_t h, double p_in, double p_rec, double z_cell,
                                double z_hidden) {
  SequenceMasks m;
  const bool zone_cell = z_cell > 0, zone_hidden = z_hidden > 0;
  if (p_in > 0) m.in.resize(b, f);
  if (p_rec > 0) m.rec.resize(b, h);
  if (zone_cell) m.cell.resize(t_steps * b, h);
  if (zone_hidden) m.hidden.resize(t_steps * b, h);
  if (!(p_in > 0 || p_rec > 0 || zone_cell || zone_hidden)) return m;
  auto threshold = [](double p) { return static_cast<uint64_t>(std::ldexp(p, 32)); };
  const uint64_t th_in = threshold(p_in), th_rec = threshold(p_rec);
  const uint64_t th_c = threshold(z_cell), th_h = threshold(z_hidden);
  const float keep_in = static_cast<float>(1.0 / (1.0 - p_in));
  const float keep_rec = static_cast<float>(1.0 / (1.0 - p_rec));
  const int64_t words = f + h + (zone_cell || zone_hidden ? 2 * h * t_steps : 0);
  ParallelFor(b, ctx.threads, [&](int64_t r0, int64_t r1) {
    std::vector<uint32_t> bits(words);
    for (int64_t r = r0; r < r1; ++r) {
      RowRng(ctx.rng, ctx.layer, row_offset + r).Bits(bits.data(), words);
      if (p_in > 0)
        for (int64_t j = 0; j < f; ++j) m.in(r, j) = bits[j] >= th_in ? keep_in : 0.0f;
      if (p_rec > 0)
        for (int64_t j = 0; j < h; ++j) m.rec(r, j) = bits[f + j] >= th_rec ? keep_rec : 0.0f;
      for (int64_t s = 0; s < t_steps && (zone_cell || zone_hidden); ++s) {
        const uint32_t* w = bits.data() + f + h + 2 * h * s;
        if (zone_cell)
          for (int64_t j = 0; j < h; ++j) m.cell(s * b + r, j) = w[j] < th_c ? 1.0f : 0.0f;
        if (zone_hidden)
          for (int64_t j = 0; j < h; ++j) m.hidden(s * b + r, j) = w[j + h] < th_h ? 1.0f : 0.0f;
      }
    }
  });
  return m;
}

// x (batch x (steps * features)) as time-major rows (steps * batch) x features, each times its
// sequence's input mask when there is one.
Matrix TimeMajorInputs(const Matrix& x, const Matrix* in_mask, int64_t t_steps, int64_t f,
                       int threads) {
  const int64_t b = x.rows();
  Matrix xt(t_steps * b, f);
  ParallelFor(b, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t s = 0; s < t_steps; ++s) {
        if (in_mask) {
          xt.row(s * b + r) = x.row(r).segment(s * f, f).cwiseProduct(in_mask->row(r));
        } else {
          xt.row(s * b + r) = x.row(r).segment(s * f, f);
        }
      }
  });
  return xt;
}

}  // namespace

LayerPlan PlanRecurrent(const LayerConfig& config, const Shape& input) {
  const std::string& t = config.type;
  const bool lstm = t == "lstm";
  if (input.dims.size() != 2) {
    throw InvalidArgument(t + " expects sequences of shape [steps, features], got " +
                          input.ToString());
  }
  if (config.units <= 0) {
    throw InvalidArgument(t + ".units must be positive, got " + std::to_string(config.units));
  }
  CheckDropRate((t + ".rate").c_str(), config.rate);
  CheckDropRate((t + ".recurrent_rate").c_str(), config.recurrent_rate);
  CheckDropRate((t + ".zoneout_cell").c_str(), config.zoneout_cell);
  CheckDropRate((t + ".zoneout_hidden").c_str(), config.zoneout_hidden);
  if (!lstm && config.zoneout_cell != 0) {
    throw InvalidArgument("gru has no cell state: zoneout_cell must be 0, got " +
                          std::to_string(config.zoneout_cell));
  }
  const int steps = input.dims[0], units = config.units;
  // weight_ih (features x G), weight_hh (units x G), bias_ih and bias_hh, G = gates * units.
  const int64_t g = (lstm ? 4 : 3) * int64_t{units};
  return LayerPlan{config.return_sequences ? Shape{{steps, units}} : Shape{{units}},
                   SaturatingMul(g, SaturatingAdd(int64_t{input.dims[1]} + 2, units))};
}

Recurrent::Recurrent(const LayerConfig& config, const Shape& input, uint64_t init_seed)
    : LayerOf(config, input), lstm_(config.type == "lstm") {
  PlanRecurrent(config, input);
  steps_ = input.dims[0];
  features_ = input.dims[1];
  units_ = config.units;
  gates_ = lstm_ ? 4 : 3;
  output_shape_ = config.return_sequences ? Shape{{steps_, units_}} : Shape{{units_}};
  const int64_t g = static_cast<int64_t>(gates_) * units_;
  // PyTorch's initialisation: every weight and bias U(-1/sqrt(H), 1/sqrt(H)).
  SplitMix64 rng(init_seed);
  const double k = 1.0 / std::sqrt(static_cast<double>(units_));
  auto uniform = [&](int64_t rows, int64_t cols) {
    Matrix m(rows, cols);
    for (int64_t i = 0; i < m.size(); ++i) {
      m.data()[i] = static_cast<float>((2 * rng.Uniform() - 1) * k);
    }
    return m;
  };
  params_.push_back(Parameter{"weight_ih", uniform(features_, g), true, false});
  params_.push_back(Parameter{"weight_hh", uniform(units_, g), true, false});
  params_.push_back(Parameter{"bias_ih", uniform(1, g)});
  params_.push_back(Parameter{"bias_hh", uniform(1, g)});
  if (!config.init.empty()) {
    InitializeWeights(config.init, features_, g, init_seed ^ 0x1, &params_[0].value);
    InitializeWeights(config.init, units_, g, init_seed ^ 0x2, &params_[1].value);
  }
}

bool Recurrent::IsStochastic() const {
  return config_.rate > 0 || config_.recurrent_rate > 0 || config_.zoneout_cell > 0 ||
         config_.zoneout_hidden > 0;
}

void Recurrent::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  // Without a cache (kEval, kMonteCarlo) rows run in blocks: the per-step buffers stay small
  // whatever the batch (Monte Carlo passes T x B rows), and blocks fill the threads.
  constexpr int64_t kBlock = 256;
  if (cache || x.rows() <= kBlock) {
    ForwardRows(x, ctx, 0, cache, y);
    return;
  }
  y->resize(x.rows(), output_shape_.Size());
  const int64_t blocks = (x.rows() + kBlock - 1) / kBlock;
  ParallelFor(blocks, ctx.threads, [&](int64_t k0, int64_t k1) {
    Context block_ctx = ctx;
    block_ctx.threads = 1;
    Matrix in, out;
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r0 = k * kBlock, n = std::min(kBlock, x.rows() - r0);
      in = x.middleRows(r0, n);
      ForwardRows(in, block_ctx, r0, nullptr, &out);
      y->middleRows(r0, n) = out;
    }
  });
}

void Recurrent::ForwardRows(const Matrix& x, const Context& ctx, int64_t row_offset,
                            LayerCache* cache, Matrix* y) const {
  const int64_t b = x.rows(), t_steps = steps_, f = features_, h = units_, g = gates_ * units_;
  const bool stochastic = Stochastic(ctx.mode);
  const double p_in = stochastic ? config_.rate : 0.0;
  const double p_rec = stochastic ? config_.recurrent_rate : 0.0;
  const double z_cell = lstm_ ? config_.zoneout_cell : 0.0, z_hidden = config_.zoneout_hidden;
  const bool zone_cell = stochastic && z_cell > 0, zone_hidden = stochastic && z_hidden > 0;
  // Without masks the zoneout mix uses its expectation (kEval) or nothing (rate 0).
  const float ez_cell = stochastic ? 0.0f : static_cast<float>(z_cell);
  const float ez_hidden = stochastic ? 0.0f : static_cast<float>(z_hidden);

  SequenceMasks masks = DrawSequenceMasks(ctx, row_offset, b, t_steps, f, h, p_in, p_rec,
                                          zone_cell ? z_cell : 0.0, zone_hidden ? z_hidden : 0.0);
  Matrix& in_mask = masks.in;
  Matrix& rec_mask = masks.rec;
  Matrix& zc = masks.cell;
  Matrix& zh = masks.hidden;

  // Time-major inputs, masked, and their projection for every step in one product.
  Matrix xt = TimeMajorInputs(x, p_in > 0 ? &in_mask : nullptr, t_steps, f, ctx.threads);
  Matrix gates;
  MatMul(xt, false, params_[0].value, false, &gates, ctx.threads);
  gates.rowwise() += params_[2].value.row(0);
  const Matrix& w_hh = params_[1].value;
  const auto b_hh = params_[3].value.row(0);

  Matrix states((t_steps + 1) * b, h);  // every block but h_0 is written before it is read
  states.topRows(b).setZero();
  Matrix rec_in(t_steps * b, h);
  Matrix cells, cand_tanh;
  if (lstm_) {
    cells.resize((t_steps + 1) * b, h);
    cells.topRows(b).setZero();
    cand_tanh.resize(t_steps * b, h);
  } else {
    cells.resize(t_steps * b, h);  // W_hn h + b_hn
  }

  // Sequences are independent: each thread runs the whole recurrence for its block of rows.
  ParallelFor(b, ctx.threads, [&](int64_t r0, int64_t r1) {
    const int64_t nb = r1 - r0;
    Matrix hh(nb, g);
    for (int64_t s = 0; s < t_steps; ++s) {
      const int64_t cur = s * b + r0;  // rows of step s in the time-major buffers
      auto h_prev = states.middleRows(s * b + r0, nb);
      auto hr = rec_in.middleRows(cur, nb);
      if (p_rec > 0)
        hr = h_prev.cwiseProduct(rec_mask.middleRows(r0, nb));
      else
        hr = h_prev;
      hh.noalias() = hr * w_hh;
      hh.rowwise() += b_hh;
      auto gt = gates.middleRows(cur, nb);
      auto h_new = states.middleRows((s + 1) * b + r0, nb);
      if (lstm_) {
        gt += hh;
        auto a = gt.array();
        a.leftCols(2 * h) = Sigmoid(a.leftCols(2 * h));
        a.middleCols(2 * h, h) = a.middleCols(2 * h, h).tanh();
        a.rightCols(h) = Sigmoid(a.rightCols(h));
        auto c_prev = cells.middleRows(s * b + r0, nb).array();
        auto c_new = cells.middleRows((s + 1) * b + r0, nb).array();
        auto tc = cand_tanh.middleRows(cur, nb).array();
        c_new = a.middleCols(h, h) * c_prev + a.leftCols(h) * a.middleCols(2 * h, h);  // c~
        tc = c_new.tanh();
        h_new.array() = a.rightCols(h) * tc;  // h~
        if (zone_cell) {
          auto d = zc.middleRows(cur, nb).array();
          c_new = d * c_prev + (1 - d) * c_new;
        } else if (ez_cell != 0) {
          c_new = ez_cell * c_prev + (1 - ez_cell) * c_new;
        }
      } else {
        auto a = gt.array();
        a.leftCols(2 * h) = Sigmoid(a.leftCols(2 * h) + hh.array().leftCols(2 * h));
        cells.middleRows(cur, nb) = hh.rightCols(h);
        a.rightCols(h) = (a.rightCols(h) + a.leftCols(h) * hh.array().rightCols(h)).tanh();
        // h~ = (1 - z) n + z h_{t-1}
        h_new.array() =
            (1 - a.middleCols(h, h)) * a.rightCols(h) + a.middleCols(h, h) * h_prev.array();
      }
      if (zone_hidden) {
        auto d = zh.middleRows(cur, nb).array();
        h_new.array() = d * h_prev.array() + (1 - d) * h_new.array();
      } else if (ez_hidden != 0) {
        h_new.array() = ez_hidden * h_prev.array() + (1 - ez_hidden) * h_new.array();
      }
    }
  });

  if (config_.return_sequences) {
    y->resize(b, t_steps * h);
    for (int64_t r = 0; r < b; ++r)
      for (int64_t s = 0; s < t_steps; ++s)
        y->row(r).segment(s * h, h) = states.row((s + 1) * b + r);
  } else {
    *y = states.bottomRows(b);
  }
  if (cache) {
    cache->extra.resize(kSlots);
    cache->extra[kInputs] = std::move(xt);
    cache->extra[kGates] = std::move(gates);
    cache->extra[kStates] = std::move(states);
    cache->extra[kRecurrentIn] = std::move(rec_in);
    cache->extra[kCells] = std::move(cells);
    cache->extra[kCandTanh] = std::move(cand_tanh);
    cache->extra[kInputMask] = std::move(in_mask);
    cache->extra[kRecMask] = std::move(rec_mask);
    cache->extra[kCellZone] = std::move(zc);
    cache->extra[kHiddenZone] = std::move(zh);
  }
}

void Recurrent::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                         Matrix* dx) const {
  const auto& e = cache.extra;
  const Matrix& xt = e[kInputs];
  const Matrix& gates = e[kGates];
  const Matrix& states = e[kStates];
  const Matrix& rec_in = e[kRecurrentIn];
  const Matrix& cells = e[kCells];
  const Matrix& cand_tanh = e[kCandTanh];
  const Matrix& in_mask = e[kInputMask];
  const Matrix& rec_mask = e[kRecMask];
  const Matrix& zc = e[kCellZone];
  const Matrix& zh = e[kHiddenZone];
  const int64_t t_steps = steps_, h = units_, g = gates_ * units_, f = features_;
  const int64_t b = states.rows() / (t_steps + 1);
  const Matrix& w_hh = params_[1].value;
  const bool seq = config_.return_sequences;

  Matrix d_in(t_steps * b, g);                               // dL/d(pre-activations), input side
  Matrix d_rec = lstm_ ? Matrix() : Matrix(t_steps * b, g);  // GRU: hidden side differs
  ParallelFor(b, cache.threads, [&](int64_t r0, int64_t r1) {
    const int64_t nb = r1 - r0;
    Matrix dh(nb, h), dc = Matrix::Zero(nb, h), dhr(nb, h), dcn(nb, h), dhn(nb, h);
    auto external = [&](int64_t state) {  // dL/dh_state from dy, state in 1..T
      if (seq) {
        Matrix out(nb, h);
        for (int64_t r = 0; r < nb; ++r) out.row(r) = dy.row(r0 + r).segment((state - 1) * h, h);
        return out;
      }
      return state == t_steps ? Matrix(dy.middleRows(r0, nb)) : Matrix::Zero(nb, h).eval();
    };
    dh = external(t_steps);
    for (int64_t s = t_steps - 1; s >= 0; --s) {
      const int64_t cur = s * b + r0;
      auto a = gates.middleRows(cur, nb).array();
      auto h_prev = states.middleRows(s * b + r0, nb).array();
      // Gradient reaching the new (not zoned-out) hidden state.
      if (zh.size())
        dhn.array() = dh.array() * (1 - zh.middleRows(cur, nb).array());
      else
        dhn = dh;
      if (lstm_) {
        auto da = d_in.middleRows(cur, nb).array();
        auto tc = cand_tanh.middleRows(cur, nb).array();
        auto c_prev = cells.middleRows(s * b + r0, nb).array();
        auto i = a.leftCols(h), fg = a.middleCols(h, h), gg = a.middleCols(2 * h, h),
             o = a.rightCols(h);
        if (zc.size())
          dcn.array() = dc.array() * (1 - zc.middleRows(cur, nb).array());
        else
          dcn = dc;
        dcn.array() += dhn.array() * o * (1 - tc * tc);
        da.leftCols(h) = dcn.array() * gg * i * (1 - i);
        da.middleCols(h, h) = dcn.array() * c_prev * fg * (1 - fg);
        da.middleCols(2 * h, h) = dcn.array() * i * (1 - gg * gg);
        da.rightCols(h) = dhn.array() * tc * o * (1 - o);
        // dc_{t-1}
        if (zc.size())
          dc.array() = dc.array() * zc.middleRows(cur, nb).array() + dcn.array() * fg;
        else
          dc.array() = dcn.array() * fg;
        dhr.noalias() = d_in.middleRows(cur, nb) * w_hh.transpose();
      } else {
        auto di = d_in.middleRows(cur, nb).array();
        auto dr = d_rec.middleRows(cur, nb).array();
        auto r = a.leftCols(h), z = a.middleCols(h, h), n = a.rightCols(h);
        auto hhn = cells.middleRows(cur, nb).array();
        // dn, then the pre-activation of n
        di.rightCols(h) = dhn.array() * (1 - z) * (1 - n * n);
        di.middleCols(h, h) = dhn.array() * (h_prev - n) * z * (1 - z);
        di.leftCols(h) = di.rightCols(h) * hhn * r * (1 - r);
        dr.leftCols(2 * h) = di.leftCols(2 * h);
        dr.rightCols(h) = di.rightCols(h) * r;
        dhr.noalias() = d_rec.middleRows(cur, nb) * w_hh.transpose();
      }
      // dh_{t-1}: zoned-out path, GRU's z path, recurrent input path, external gradient.
      Matrix dprev(nb, h);
      if (zh.size())
        dprev.array() = dh.array() * zh.middleRows(cur, nb).array();
      else
        dprev.setZero();
      if (!lstm_) dprev.array() += dhn.array() * a.middleCols(h, h);
      if (rec_mask.size())
        dprev.array() += dhr.array() * rec_mask.middleRows(r0, nb).array();
      else
        dprev += dhr;
      if (s > 0 && seq) dprev += external(s);
      dh = std::move(dprev);
    }
  });
  const Matrix& d_hidden = lstm_ ? d_in : d_rec;
  MatMul(xt, true, d_in, false, &grads[0], cache.threads);
  MatMul(rec_in, true, d_hidden, false, &grads[1], cache.threads);
  grads[2] = d_in.colwise().sum();
  grads[3] = d_hidden.colwise().sum();
  if (dx) {
    Matrix dxt;
    MatMul(d_in, false, params_[0].value, true, &dxt, cache.threads);
    dx->resize(b, t_steps * f);
    for (int64_t r = 0; r < b; ++r)
      for (int64_t s = 0; s < t_steps; ++s) {
        if (in_mask.size()) {
          dx->row(r).segment(s * f, f) = dxt.row(s * b + r).cwiseProduct(in_mask.row(r));
        } else {
          dx->row(r).segment(s * f, f) = dxt.row(s * b + r);
        }
      }
  }
}

}  // namespace dropnet::engine
