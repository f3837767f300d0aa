#include "server/engine/dropconnect.h"

#include <algorithm>
#include <cmath>

#include "server/engine/dropout.h"
#include "server/engine/gemm.h"
#include "server/engine/thread_pool.h"

namespace dropnet::engine {
namespace {

constexpr uint32_t kSharedRow = 0xFFFFFFFFu;  // the row address of a mask shared by a stream
constexpr double kPi = 3.14159265358979323846;

// The random address of a pass, kept in the cache so that Backward regenerates the masks:
// seed, stream_base, rows_per_stream and layer as 16-bit pieces (exact in float).
Matrix EncodeAddress(const Context& ctx) {
  Matrix a(1, 14);
  const uint64_t v[3] = {ctx.rng.seed, ctx.rng.stream_base,
                         static_cast<uint64_t>(ctx.rng.rows_per_stream)};
  for (int k = 0; k < 3; ++k)
    for (int i = 0; i < 4; ++i) a(0, 4 * k + i) = static_cast<float>((v[k] >> (16 * i)) & 0xFFFF);
  a(0, 12) = static_cast<float>(ctx.layer & 0xFFFF);
  a(0, 13) = static_cast<float>(ctx.layer >> 16);
  return a;
}

Context DecodeAddress(const Matrix& a) {
  uint64_t v[3] = {0, 0, 0};
  for (int k = 0; k < 3; ++k)
    for (int i = 0; i < 4; ++i) v[k] |= static_cast<uint64_t>(a(0, 4 * k + i)) << (16 * i);
  Context ctx;
  ctx.mode = Mode::kTrain;
  ctx.rng = RandomStream{v[0], v[1], static_cast<int64_t>(v[2])};
  ctx.layer = static_cast<uint32_t>(a(0, 12)) | (static_cast<uint32_t>(a(0, 13)) << 16);
  return ctx;
}

uint64_t StreamOf(const RandomStream& s, int64_t row) {
  return s.stream_base + static_cast<uint64_t>(row / s.rows_per_stream);
}

float Sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

}  // namespace

DropConnectDense::Act DropConnectDense::ActivationOf(const std::string& a) {
  if (a.empty() || a == "linear") return Act::kLinear;
  if (a == "relu") return Act::kRelu;
  if (a == "sigmoid") return Act::kSigmoid;
  if (a == "tanh") return Act::kTanh;
  throw InvalidArgument(
      "drop_connect.activation must be one of linear, relu, sigmoid, tanh "
      "(or empty), got '" +
      a + "'");
}

LayerPlan PlanDropConnect(const LayerConfig& config, const Shape& input) {
  CheckDenseInput("drop_connect", config, input);
  CheckDropRate("drop_connect.rate", config.rate);
  DropConnectDense::ActivationOf(config.activation);
  return LayerPlan{Shape{{config.units}},
                   DenseParameterCount(input.Size(), config.units, config.use_bias)};
}

DropConnectDense::DropConnectDense(const LayerConfig& config, const Shape& input,
                                   uint64_t init_seed)
    : LayerOf(config, input) {
  PlanDropConnect(config, input);
  act_ = ActivationOf(config.activation);
  threshold_ = static_cast<uint32_t>(std::lround(config.rate * 65536.0));
  if (threshold_ >= 65536) threshold_ = 65535;
  keep_scale_ = static_cast<float>(65536.0 / (65536.0 - threshold_));
  output_shape_ = Shape{{config.units}};
  Parameter w{"weight", {}, true, true};
  InitializeWeights(config.init, input.Size(), config.units, init_seed, &w.value);
  params_.push_back(std::move(w));
  if (config.use_bias) params_.push_back(Parameter{"bias", Matrix::Zero(1, config.units)});
}

void DropConnectDense::FillMask(const CounterRng& rng, int64_t e0, int64_t e1, float* out) const {
  uint32_t w[4];
  int64_t e = e0;
  while (e < e1) {
    const int64_t block = e / 8;
    rng.Block(static_cast<uint32_t>(block), w);
    const int64_t end = std::min(e1, (block + 1) * 8);
    for (; e < end; ++e) {
      const int k = static_cast<int>(e & 7);
      const uint32_t h = (w[k >> 1] >> ((k & 1) * 16)) & 0xFFFFu;
      out[e - e0] = h >= threshold_ ? keep_scale_ : 0.0f;
    }
  }
}

CounterRng DropConnectDense::SharedRng(const RandomStream& s, uint32_t layer,
                                       uint64_t stream) const {
  return CounterRng(s.seed, stream, layer, kSharedRow);
}

void DropConnectDense::ForEachSharedMask(
    const Context& ctx, int64_t n,
    const std::function<void(int64_t, int64_t, const Matrix&)>& take) const {
  Matrix m(params_[0].value.rows(), params_[0].value.cols());
  for (int64_t g0 = 0; g0 < n;) {
    const uint64_t stream = StreamOf(ctx.rng, g0);
    int64_t g1 = g0 + 1;
    while (g1 < n && StreamOf(ctx.rng, g1) == stream) ++g1;
    FillMask(SharedRng(ctx.rng, ctx.layer, stream), 0, m.size(), m.data());
    take(g0, g1 - g0, m);
    g0 = g1;
  }
}

Matrix DropConnectDense::MaskFor(const Context& ctx, int64_t row) const {
  const Matrix& w = params_[0].value;
  Matrix m(w.rows(), w.cols());
  const CounterRng rng = config_.drop_connect_shared
                             ? SharedRng(ctx.rng, ctx.layer, StreamOf(ctx.rng, row))
                             : RowRng(ctx.rng, ctx.layer, row);
  FillMask(rng, 0, m.size(), m.data());
  return m;
}

void DropConnectDense::ApplyActivation(const Matrix& z, Matrix* y) const {
  switch (act_) {
    case Act::kLinear:
      *y = z;
      break;
    case Act::kRelu:
      *y = z.cwiseMax(0.0f);
      break;
    case Act::kSigmoid:
      *y = z.unaryExpr([](float v) { return Sigmoid(v); });
      break;
    case Act::kTanh:
      *y = z.array().tanh().matrix();
      break;
  }
}

void DropConnectDense::Forward(const Matrix& x, const Context& ctx, LayerCache* cache,
                               Matrix* y) const {
  const Matrix& w = params_[0].value;
  const int64_t n = x.rows(), in = w.rows(), out = w.cols();
  const bool has_bias = params_.size() > 1;
  const bool stochastic = Stochastic(ctx.mode) && threshold_ > 0;
  Matrix z;
  if (!stochastic) {
    MatMul(x, false, w, false, &z, ctx.threads);
    if (has_bias) z.rowwise() += params_[1].value.row(0);
    if (ctx.mode == Mode::kEval && config_.moment_matching && threshold_ > 0) {
      // Wan et al. 2013: u ~ N(mu, s2) per unit, y = E[a(u)].
      const double p = EffectiveRate();
      Matrix s2;
      MatMul(x.cwiseProduct(x), false, w.cwiseProduct(w), false, &s2, ctx.threads);
      s2 *= static_cast<float>(p / (1.0 - p));
      y->resize(n, out);
      for (int64_t i = 0; i < z.size(); ++i) {
        const double mu = z.data()[i], var = std::max(0.0, static_cast<double>(s2.data()[i]));
        double v = mu;
        switch (act_) {
          case Act::kLinear:
            break;
          case Act::kRelu: {
            const double sd = std::sqrt(var);
            if (sd < 1e-12) {
              v = std::max(mu, 0.0);
            } else {
              const double t = mu / sd;
              v = mu * 0.5 * std::erfc(-t / std::sqrt(2.0)) +
                  sd * std::exp(-0.5 * t * t) / std::sqrt(2.0 * kPi);
            }
            break;
          }
          case Act::kSigmoid:
            v = 1.0 / (1.0 + std::exp(-mu / std::sqrt(1.0 + kPi * var / 8.0)));
            break;
          case Act::kTanh:
            v = 2.0 / (1.0 + std::exp(-2.0 * mu / std::sqrt(1.0 + kPi * var / 2.0))) - 1.0;
            break;
        }
        y->data()[i] = static_cast<float>(v);
      }
      return;
    }
  } else if (config_.drop_connect_shared) {
    z.resize(n, out);
    ForEachSharedMask(ctx, n, [&](int64_t g0, int64_t rows, const Matrix& m) {
      Matrix zg;
      MatMul(x.middleRows(g0, rows), false, w.cwiseProduct(m), false, &zg, ctx.threads);
      z.middleRows(g0, rows) = zg;
    });
    if (has_bias) z.rowwise() += params_[1].value.row(0);
  } else {
    z.resize(n, out);
    ParallelFor(n, ctx.threads, [&](int64_t r0, int64_t r1) {
      std::vector<float> m(out);
      for (int64_t r = r0; r < r1; ++r) {
        Eigen::Map<RowVector> zr(z.row(r).data(), out);
        if (has_bias)
          zr = params_[1].value.row(0);
        else
          zr.setZero();
        const CounterRng rng = RowRng(ctx.rng, ctx.layer, r);
        const float* xr = x.row(r).data();
        float* zp = z.row(r).data();
        for (int64_t i = 0; i < in; ++i) {
          const float xi = xr[i];
          if (xi == 0.0f) continue;  // the mask is addressed, not sequential: skipping is safe
          FillMask(rng, i * out, (i + 1) * out, m.data());
          const float* wi = w.row(i).data();
          for (int64_t j = 0; j < out; ++j) zp[j] += xi * wi[j] * m[j];
        }
      }
    });
  }
  ApplyActivation(z, y);
  if (cache) {
    KeepInput(x, cache);
    cache->output = std::move(z);  // pre-activation
    cache->extra = {EncodeAddress(ctx)};
    if (stochastic)
      cache->mask = Matrix::Ones(1, 1);  // a flag: masks were drawn
    else
      cache->mask.resize(0, 0);
  }
}

void DropConnectDense::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                                Matrix* dx) const {
  const Matrix& x = cache.input;
  const Matrix& z = cache.output;
  const Matrix& w = params_[0].value;
  const int64_t n = x.rows(), in = w.rows(), out = w.cols();
  const bool has_bias = params_.size() > 1;
  // g = dL/dz
  Matrix g;
  switch (act_) {
    case Act::kLinear:
      g = dy;
      break;
    case Act::kRelu:
      g = dy.binaryExpr(z, [](float d, float v) { return v > 0 ? d : 0.0f; });
      break;
    case Act::kSigmoid:
      g = dy.binaryExpr(z, [](float d, float v) {
        const float s = Sigmoid(v);
        return d * s * (1.0f - s);
      });
      break;
    case Act::kTanh:
      g = dy.binaryExpr(z, [](float d, float v) {
        const float t = std::tanh(v);
        return d * (1.0f - t * t);
      });
      break;
  }
  if (has_bias) grads[1] = g.colwise().sum();
  const int threads = cache.threads;
  if (cache.mask.size() == 0) {  // mean weights
    MatMul(x, true, g, false, &grads[0], threads);
    if (dx) MatMul(g, false, w, true, dx, threads);
    return;
  }
  const Context ctx = DecodeAddress(cache.extra[0]);
  if (dx) dx->resize(n, in);
  if (config_.drop_connect_shared) {
    grads[0] = Matrix::Zero(in, out);
    ForEachSharedMask(ctx, n, [&](int64_t g0, int64_t rows, const Matrix& m) {
      Matrix dw;
      MatMul(x.middleRows(g0, rows), true, g.middleRows(g0, rows), false, &dw, threads);
      grads[0] += dw.cwiseProduct(m);
      if (dx) {
        Matrix dxg;
        MatMul(g.middleRows(g0, rows), false, w.cwiseProduct(m), true, &dxg, threads);
        dx->middleRows(g0, rows) = dxg;
      }
    });
    return;
  }
  const int parts =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(std::max(threads, 1), n)));
  std::vector<Matrix> dw(parts);
  ParallelFor(parts, parts, [&](int64_t p0, int64_t p1) {
    std::vector<float> m(out);
    for (int64_t part = p0; part < p1; ++part) {
      Matrix& acc = dw[part];
      acc = Matrix::Zero(in, out);
      for (int64_t r = n * part / parts; r < n * (part + 1) / parts; ++r) {
        const CounterRng rng = RowRng(ctx.rng, ctx.layer, r);
        const float* xr = x.row(r).data();
        const float* gr = g.row(r).data();
        for (int64_t i = 0; i < in; ++i) {
          const float xi = xr[i];
          if (xi == 0.0f && !dx) continue;
          FillMask(rng, i * out, (i + 1) * out, m.data());
          const float* wi = w.row(i).data();
          if (xi != 0.0f) {
            float* ai = acc.row(i).data();
            for (int64_t j = 0; j < out; ++j) ai[j] += xi * gr[j] * m[j];
          }
          if (dx) {
            float s = 0.0f;
            for (int64_t j = 0; j < out; ++j) s += gr[j] * wi[j] * m[j];
            (*dx)(r, i) = s;
          }
        }
      }
    }
  });
  grads[0] = std::move(dw[0]);
  for (int p = 1; p < parts; ++p) grads[0] += dw[p];
}

}  // namespace dropnet::engine
