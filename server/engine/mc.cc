#include "server/engine/mc.h"

#include <algorithm>
#include <cmath>

#include "server/engine/thread_pool.h"

namespace dropnet::engine {
namespace {

constexpr double kLog2Pi = 1.8378770664093453;

// The predictions of one chunk's samples in double (sample s in rows s*B .. s*B+B-1), their
// predicted variances and, for classification, each row's entropy and arg max: computed by the
// thread that ran the chunk, added to the Accumulator in sample order. One allocation a chunk,
// not several a sample.
struct ChunkStats {
  int64_t b = 0;
  Eigen::MatrixXd p;
  Eigen::VectorXd entropy;
  std::vector<Eigen::Index> arg_max;
  std::vector<Matrix> var;

  void Init(int samples, int64_t rows, int64_t cols, bool classify) {
    b = rows;
    p.resize(samples * rows, cols);
    var.resize(samples);
    if (!classify) return;
    entropy.resize(samples * rows);
    arg_max.resize(samples * rows);
  }

  int samples() const { return static_cast<int>(var.size()); }

  // Sample s's predictions (B x C).
  void Set(int s, const Matrix& pred) {
    auto ps = p.middleRows(s * b, b);
    ps = pred.cast<double>();
    if (arg_max.empty()) return;  // not classification
    for (int64_t r = 0; r < b; ++r) {
      double h = 0;
      for (int64_t c = 0; c < ps.cols(); ++c)
        if (ps(r, c) > 0) h -= ps(r, c) * std::log(ps(r, c));
      entropy[s * b + r] = h;
      ps.row(r).maxCoeff(&arg_max[s * b + r]);
    }
  }
};

// Running statistics over the samples added so far, in double precision.
struct Accumulator {
  int64_t n = 0;
  Eigen::MatrixXd mean, m2;        // B x C
  Eigen::VectorXd entropy_sum;     // classification
  Eigen::MatrixXi votes;           // classification: B x C argmax counts
  Eigen::MatrixXd aleatoric_sum;   // gaussian head: sum of predicted variances
  Eigen::MatrixXd ll_max, ll_sum;  // log-sum-exp state per (row, target)
  Eigen::MatrixXd delta;           // scratch of Add

  void Init(int64_t b, int64_t c, bool classify, bool aleatoric, bool ll) {
    mean = Eigen::MatrixXd::Zero(b, c);
    m2 = Eigen::MatrixXd::Zero(b, c);
    if (classify) {
      entropy_sum = Eigen::VectorXd::Zero(b);
      votes = Eigen::MatrixXi::Zero(b, c);
    }
    if (aleatoric) aleatoric_sum = Eigen::MatrixXd::Zero(b, c);
    if (ll) {
      ll_max = Eigen::MatrixXd::Constant(b, c, -INFINITY);
      ll_sum = Eigen::MatrixXd::Zero(b, c);
    }
  }

  // Adds sample s of a chunk: its predictions (B x C probabilities or means), for classification
  // each row's entropy and arg max, and its predicted variances (or none).
  void Add(const ChunkStats& cs, int s, const Matrix* targets, double tau) {
    ++n;
    const auto p = cs.p.middleRows(s * cs.b, cs.b);
    const Matrix& var = cs.var[s];
    delta = p - mean;
    mean += delta / static_cast<double>(n);
    m2 += delta.cwiseProduct(p - mean);
    if (votes.size()) {
      for (int64_t r = 0; r < p.rows(); ++r) {
        entropy_sum[r] += cs.entropy[s * cs.b + r];
        ++votes(r, cs.arg_max[s * cs.b + r]);
      }
    }
    if (aleatoric_sum.size()) aleatoric_sum += var.cast<double>();
    if (ll_max.size()) {
      for (int64_t r = 0; r < p.rows(); ++r) {
        for (int64_t c = 0; c < p.cols(); ++c) {
          const double v = var.size() ? var(r, c) : 1.0 / tau;
          const double d = (*targets)(r, c) - p(r, c);
          const double l = -0.5 * (kLog2Pi + std::log(v) + d * d / v);
          double& mx = ll_max(r, c);
          double& s = ll_sum(r, c);
          if (l > mx) {
            s = s * std::exp(mx - l) + 1.0;
            mx = l;
          } else {
            s += std::exp(l - mx);
          }
        }
      }
    }
  }
};

// The statistics of all samples: mean and sample std, then per row the entropies, mutual
// information and vote (classification), or the total variance, central interval and MC test
// log-likelihood (regression).
void Summarize(const Accumulator& total, bool classify, bool gaussian, bool want_ll, double tau,
               double z, McResult* result) {
  const int64_t b = total.mean.rows(), out_cols = total.mean.cols();
  const double t = static_cast<double>(total.n);
  result->mean = total.mean.cast<float>();
  const Eigen::MatrixXd var = total.m2 / t;
  result->stddev = var.cwiseSqrt().cast<float>();
  if (classify) {
    result->predictive_entropy.resize(b);
    result->expected_entropy.resize(b);
    result->mutual_information.resize(b);
    result->variation_ratio.resize(b);
    result->predicted_class.resize(b);
    for (int64_t r = 0; r < b; ++r) {
      double h = 0;
      for (int64_t c = 0; c < out_cols; ++c) {
        const double p = total.mean(r, c);
        if (p > 0) h -= p * std::log(p);
      }
      const double eh = total.entropy_sum[r] / t;
      result->predictive_entropy[r] = static_cast<float>(h);
      result->expected_entropy[r] = static_cast<float>(eh);
      result->mutual_information[r] = static_cast<float>(std::max(0.0, h - eh));
      result->variation_ratio[r] = static_cast<float>(1.0 - total.votes.row(r).maxCoeff() / t);
      Eigen::Index arg;
      total.mean.row(r).maxCoeff(&arg);
      result->predicted_class[r] = static_cast<int>(arg);
    }
  } else {
    Eigen::MatrixXd total_var = var;
    if (tau > 0) total_var.array() += 1.0 / tau;
    if (gaussian) total_var += total.aleatoric_sum / t;
    result->total_variance = total_var.cast<float>();
    const Eigen::MatrixXd half = total_var.cwiseSqrt() * z;
    result->lower = (total.mean - half).cast<float>();
    result->upper = (total.mean + half).cast<float>();
    if (want_ll) {
      result->log_likelihood.resize(b);
      for (int64_t r = 0; r < b; ++r) {
        double s = 0;
        for (int64_t c = 0; c < out_cols; ++c)
          s += total.ll_max(r, c) + std::log(total.ll_sum(r, c)) - std::log(t);
        result->log_likelihood[r] = s;
      }
    }
  }
}

}  // namespace

double NormalQuantileTwoSided(double mass) {
  if (!(mass > 0 && mass < 1)) {
    throw InvalidArgument("interval must be in (0, 1), got " + std::to_string(mass));
  }
  // Solve erf(z / sqrt 2) = mass by bisection: monotone, 60 halvings reach double precision.
  double lo = 0, hi = 40;
  for (int i = 0; i < 60; ++i) {
    double mid = 0.5 * (lo + hi);
    (std::erf(mid / std::sqrt(2.0)) < mass ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

std::vector<uint32_t> MonteCarloRowKeys(const Matrix& x) {
  std::vector<uint32_t> keys(x.rows());
  for (int64_t r = 0; r < x.rows(); ++r) keys[r] = RowKey(x.row(r).data(), x.cols());
  return keys;
}

McResult MonteCarloPredict(const Network& net, Task task, LossKind loss, const Matrix& x,
                           const McOptions& options) {
  if (options.samples <= 0) {
    throw InvalidArgument("samples must be positive, got " + std::to_string(options.samples));
  }
  if (x.rows() == 0) throw InvalidArgument("the batch is empty");
  const double z = task == Task::kRegression ? NormalQuantileTwoSided(options.interval) : 0.0;
  const bool classify = task == Task::kClassification;
  const bool gaussian = !classify && loss == LossKind::kGaussianNll;
  const int64_t b = x.rows();
  const int first = net.FirstStochasticLayer();

  Context prefix_ctx;
  prefix_ctx.mode = Mode::kMonteCarlo;
  prefix_ctx.threads = options.threads;
  const Matrix prefix = net.Forward(x, prefix_ctx, nullptr, 0, first);
  const std::vector<uint32_t> keys = MonteCarloRowKeys(x);

  // Samples per chunk: the widest remaining activation, a few live copies, within the budget.
  int64_t width = prefix.cols();
  for (int i = first; i < net.size(); ++i) {
    width = std::max(width, net.layer(i).output_shape().Size());
  }
  const int64_t per_sample =
      std::max<int64_t>(1, b * width * static_cast<int64_t>(sizeof(float)) * 4);
  // At most an equal share of the samples per thread, so that every thread gets a chunk: one
  // hand-off per wave instead of one per product.
  const int threads = std::max(1, options.threads);
  const int64_t share = (options.samples + threads - 1) / threads;
  // A chunk's rows in multiples of four where the batch allows, so that the products run in the
  // kernel's full blocks of rows (100 samples on two threads: 52 + 48, not 50 + 50).
  const int64_t align = b % 4 == 0 ? 1 : b % 2 == 0 ? 2 : 4;
  const int64_t aligned = std::min<int64_t>(options.samples, (share + align - 1) / align * align);
  const int chunk =
      static_cast<int>(std::clamp<int64_t>(options.memory_budget_bytes / per_sample, 1, aligned));
  const int chunks = (options.samples + chunk - 1) / chunk;
  const bool stochastic = first < net.size();

  const int64_t out_cols = [&] {
    int64_t c = net.output_shape().Size();
    return gaussian ? c / 2 : c;
  }();
  if (options.targets && !classify) {
    if (options.targets->rows() != b || options.targets->cols() != out_cols) {
      throw InvalidArgument("targets must be " + std::to_string(b) + " x " +
                            std::to_string(out_cols));
    }
    if (options.tau <= 0 && !gaussian) {
      throw InvalidArgument("the MC test log-likelihood needs tau > 0 or a gaussian_nll head");
    }
  }
  const bool want_ll = options.targets && !classify;

  McResult result;
  result.samples = options.samples;
  result.chunk_samples = chunk;
  if (options.keep_samples) result.sample_outputs.resize(options.samples);

  auto run_chunk = [&](int c, ChunkStats* out, int inner_threads) {
    const int t0 = c * chunk;
    const int t1 = std::min(options.samples, t0 + chunk);
    out->Init(t1 - t0, b, out_cols, classify);
    Matrix raw;
    if (stochastic) {
      Context ctx;
      ctx.mode = Mode::kMonteCarlo;
      ctx.threads = inner_threads;
      ctx.rng = RandomStream{options.seed, static_cast<uint64_t>(t0), b, keys.data()};
      if (t1 - t0 == 1) {
        raw = net.Forward(prefix, ctx, nullptr, first, -1);  // one sample: no copy of the prefix
      } else {
        Matrix rep(static_cast<int64_t>(t1 - t0) * b, prefix.cols());
        for (int t = t0; t < t1; ++t) rep.middleRows(static_cast<int64_t>(t - t0) * b, b) = prefix;
        raw = net.Forward(rep, ctx, nullptr, first, -1);
      }
    } else {
      raw = net.Forward(prefix, prefix_ctx, nullptr, first, -1);
    }
    // One sample's outputs at a time, in buffers reused across the samples.
    Matrix sample_raw, pred;
    for (int t = t0; t < t1; ++t) {
      const int64_t off = stochastic ? static_cast<int64_t>(t - t0) * b : 0;
      sample_raw = raw.middleRows(off, b);
      HeadOutputs(task, loss, net.EndsWithSoftmax(), sample_raw, &pred, &out->var[t - t0]);
      out->Set(t - t0, pred);
      if (options.keep_samples) result.sample_outputs[t] = pred;
    }
  };

  // Waves of up to `threads` chunks run at once; each wave is then reduced one sample at a time
  // in sample order, so the result is bit-identical for any chunking and thread count.
  Accumulator total;
  total.Init(b, out_cols, classify, gaussian, want_ll);
  const int wave = std::max(1, options.threads);
  for (int c0 = 0; c0 < chunks; c0 += wave) {
    if (options.should_stop && options.should_stop()) {
      throw Cancelled("Monte-Carlo prediction stopped after " + std::to_string(c0 * chunk) +
                      " of " + std::to_string(options.samples) + " samples");
    }
    const int count = std::min(wave, chunks - c0);
    std::vector<ChunkStats> parts(count);
    const int inner = count == 1 ? options.threads : 1;
    ParallelFor(count, count, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) run_chunk(c0 + static_cast<int>(i), &parts[i], inner);
    });
    for (const auto& p : parts) {
      for (int s = 0; s < p.samples(); ++s) {
        total.Add(p, s, options.targets, options.tau);
      }
    }
  }

  Summarize(total, classify, gaussian, want_ll, options.tau, z, &result);
  return result;
}

}  // namespace dropnet::engine
