#include "server/engine/concrete_dropout.h"

#include <cmath>

#include "server/engine/dropout.h"
#include "server/engine/gemm.h"
#include "server/engine/thread_pool.h"

namespace dropnet::engine {
namespace {

constexpr double kEps = 1e-7;

// Indices of LayerCache::extra.
enum CacheSlot { kDropped = 0, kSoft, kSlots };

double Logistic(double v) { return 1.0 / (1.0 + std::exp(-v)); }

}  // namespace

LayerPlan PlanConcreteDropout(const LayerConfig& config, const Shape& input) {
  if (config.units < 0) {
    throw InvalidArgument("concrete_dropout.units must be >= 0, got " +
                          std::to_string(config.units));
  }
  if (!(config.init_rate > 0 && config.init_rate < 1)) {
    throw InvalidArgument("concrete_dropout.init_rate must be in (0, 1), got " +
                          std::to_string(config.init_rate));
  }
  if (!(config.temperature > 0 && std::isfinite(config.temperature))) {
    throw InvalidArgument("concrete_dropout.temperature must be positive and finite, got " +
                          std::to_string(config.temperature));
  }
  if (!(config.length_scale > 0 && std::isfinite(config.length_scale))) {
    throw InvalidArgument("concrete_dropout.length_scale must be positive and finite, got " +
                          std::to_string(config.length_scale));
  }
  if (!std::isfinite(config.weight_regularizer) || !std::isfinite(config.dropout_regularizer)) {
    throw InvalidArgument("concrete_dropout regularizers must be finite");
  }
  const bool has_dense = config.units > 0;
  if (has_dense && input.dims.size() != 1) {
    throw InvalidArgument("concrete_dropout with units expects flat input, got shape " +
                          input.ToString() + "; add a flatten layer before it");
  }
  // p_logit (one per layer or per unit), then the dense layer's weights and bias.
  const int64_t rates = config.per_unit ? input.Size() : 1;
  if (!has_dense) return LayerPlan{input, rates};
  return LayerPlan{
      Shape{{config.units}},
      SaturatingAdd(rates, DenseParameterCount(input.Size(), config.units, config.use_bias))};
}

ConcreteDropout::ConcreteDropout(const LayerConfig& config, const Shape& input, uint64_t init_seed)
    : LayerOf(config, input), has_dense_(config.units > 0) {
  PlanConcreteDropout(config, input);
  const int64_t k = input.Size();
  const float logit = static_cast<float>(std::log(config.init_rate / (1 - config.init_rate)));
  params_.push_back(Parameter{"p_logit", Matrix::Constant(1, config.per_unit ? k : 1, logit)});
  if (has_dense_) {
    output_shape_ = Shape{{config.units}};
    Parameter w{"weight", {}, false, true};  // its own regulariser replaces weight decay
    InitializeWeights(config.init, k, config.units, init_seed, &w.value);
    params_.push_back(std::move(w));
    if (config.use_bias) params_.push_back(Parameter{"bias", Matrix::Zero(1, config.units)});
  }
}

double ConcreteDropout::WeightRegularizer(int64_t n) const {
  if (config_.weight_regularizer >= 0) return config_.weight_regularizer;
  return config_.length_scale * config_.length_scale / static_cast<double>(std::max<int64_t>(n, 1));
}

double ConcreteDropout::DropoutRegularizer(int64_t n) const {
  if (config_.dropout_regularizer >= 0) return config_.dropout_regularizer;
  return 2.0 / static_cast<double>(std::max<int64_t>(n, 1));
}

std::vector<double> ConcreteDropout::LearnedRates() const {
  std::vector<double> out;
  const Matrix& l = params_[0].value;
  for (int64_t j = 0; j < l.size(); ++j) out.push_back(Logistic(l.data()[j]));
  return out;
}

void ConcreteDropout::Forward(const Matrix& x, const Context& ctx, LayerCache* cache,
                              Matrix* y) const {
  const int64_t k = x.cols();
  const bool per_unit = params_[0].value.size() > 1;
  Matrix dropped, soft;
  if (Stochastic(ctx.mode)) {
    // Per input unit: the logit of p plus 1/(1-p), shared by the rows.
    std::vector<float> base(k), scale(k);
    for (int64_t j = 0; j < k; ++j) {
      const double p = Logistic(params_[0].value(0, per_unit ? j : 0));
      base[j] = static_cast<float>(std::log(p + kEps) - std::log(1 - p + kEps));
      scale[j] = static_cast<float>(1.0 / (1.0 - p));
    }
    const float inv_t = static_cast<float>(1.0 / config_.temperature);
    dropped.resize(x.rows(), k);
    soft.resize(x.rows(), k);
    ParallelFor(x.rows(), ctx.threads, [&](int64_t r0, int64_t r1) {
      std::vector<float> u(k);
      for (int64_t r = r0; r < r1; ++r) {
        RowRng(ctx.rng, ctx.layer, r).Uniform(u.data(), k);
        for (int64_t j = 0; j < k; ++j) {
          const float z = base[j] + std::log(u[j] + static_cast<float>(kEps)) -
                          std::log(1 - u[j] + static_cast<float>(kEps));
          const float s = 1.0f / (1.0f + std::exp(-z * inv_t));  // relaxed "drop" variable
          soft(r, j) = s;
          dropped(r, j) = x(r, j) * (1 - s) * scale[j];
        }
      }
    });
  } else {
    dropped = x;
  }
  if (has_dense_) {
    MatMul(dropped, false, params_[1].value, false, y, ctx.threads);
    if (params_.size() > 2) y->rowwise() += params_[2].value.row(0);
  } else {
    *y = dropped;
  }
  if (cache) {
    KeepInput(x, cache);
    cache->extra.resize(kSlots);
    cache->extra[kDropped] = std::move(dropped);
    cache->extra[kSoft] = std::move(soft);
  }
}

void ConcreteDropout::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                               Matrix* dx) const {
  const Matrix& x = cache.input;
  const Matrix& soft = cache.extra[kSoft];
  const int64_t k = x.cols();
  const bool per_unit = params_[0].value.size() > 1;
  Matrix d_dropped;
  if (has_dense_) {
    MatMul(cache.extra[kDropped], true, dy, false, &grads[1], cache.threads);
    if (params_.size() > 2) grads[2] = dy.colwise().sum();
    MatMul(dy, false, params_[1].value, true, &d_dropped, cache.threads);
  } else {
    d_dropped = dy;
  }
  grads[0] = Matrix::Zero(1, params_[0].value.size());
  if (soft.size() == 0) {  // not stochastic: identity
    if (dx) *dx = std::move(d_dropped);
    return;
  }
  // y = x (1 - s) / (1 - p): dy/dp = x [ (1 - s) / (1-p)^2 - (ds/dp) / (1-p) ],
  // ds/dp = s (1 - s) / t * (1/(p+e) + 1/(1-p+e)); dp/dlogit = p (1 - p).
  const double inv_t = 1.0 / config_.temperature;
  std::vector<double> dlogit(params_[0].value.size(), 0.0);
  std::vector<float> scale(k);
  std::vector<double> p(k), dz_dp(k);
  for (int64_t j = 0; j < k; ++j) {
    p[j] = Logistic(params_[0].value(0, per_unit ? j : 0));
    scale[j] = static_cast<float>(1.0 / (1.0 - p[j]));
    dz_dp[j] = 1.0 / (p[j] + kEps) + 1.0 / (1.0 - p[j] + kEps);
  }
  if (dx) dx->resize(x.rows(), k);
  std::vector<double> col(k, 0.0);
  for (int64_t r = 0; r < x.rows(); ++r) {
    for (int64_t j = 0; j < k; ++j) {
      const double s = soft(r, j), g = d_dropped(r, j);
      const double q = 1.0 - p[j];
      const double dydp = x(r, j) * ((1 - s) / (q * q) - s * (1 - s) * inv_t * dz_dp[j] / q);
      col[j] += g * dydp;
      if (dx) (*dx)(r, j) = static_cast<float>(g * (1 - s) * scale[j]);
    }
  }
  for (int64_t j = 0; j < k; ++j) dlogit[per_unit ? j : 0] += col[j] * p[j] * (1 - p[j]);
  for (size_t j = 0; j < dlogit.size(); ++j) grads[0](0, j) = static_cast<float>(dlogit[j]);
}

double ConcreteDropout::Regularize(int64_t n, std::span<Matrix> grads) const {
  const double wr = WeightRegularizer(n), dr = DropoutRegularizer(n);
  const Matrix& logit = params_[0].value;
  const int64_t k = input_shape_.Size();
  const bool per_unit = logit.size() > 1;
  double total = 0;
  // Sum of squares of the incoming weights of each dropped unit (rows of W), or of all of W.
  std::vector<double> sq(logit.size(), 0.0);
  if (has_dense_) {
    const Matrix& w = params_[1].value;
    for (int64_t j = 0; j < k; ++j) sq[per_unit ? j : 0] += w.row(j).cast<double>().squaredNorm();
  }
  const double units = per_unit ? 1.0 : static_cast<double>(k);
  for (int64_t u = 0; u < logit.size(); ++u) {
    const double p = Logistic(logit(0, u)), q = 1 - p;
    total += wr * sq[u] / q + dr * units * (p * std::log(p) + q * std::log(q));
    const double dp = wr * sq[u] / (q * q) + dr * units * std::log(p / q);
    grads[0](0, u) += static_cast<float>(dp * p * q);
    if (has_dense_) {
      const float c = static_cast<float>(2 * wr / q);
      if (per_unit)
        grads[1].row(u) += c * params_[1].value.row(u);
      else
        grads[1] += c * params_[1].value;
    }
  }
  return total;
}

}  // namespace dropnet::engine
