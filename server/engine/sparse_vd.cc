#include "server/engine/sparse_vd.h"

#include <cmath>

#include "server/engine/gemm.h"
#include "server/engine/thread_pool.h"

namespace dropnet::engine {
namespace {

constexpr double kK1 = 0.63576, kK2 = 1.87320, kK3 = 1.48695;
constexpr float kLogAlphaClip = 10.0f;
constexpr float kVarEps = 1e-8f;

// Indices of LayerCache::extra.
enum CacheSlot { kNoise = 0, kStd, kSlots };

}  // namespace

LayerPlan PlanSparseVd(const LayerConfig& config, const Shape& input) {
  CheckDenseInput("sparse_vd", config, input);
  if (!std::isfinite(config.log_sigma2_init)) {
    throw InvalidArgument("sparse_vd.log_sigma2_init must be finite, got " +
                          std::to_string(config.log_sigma2_init));
  }
  if (!std::isfinite(config.prune_threshold)) {
    throw InvalidArgument("sparse_vd.prune_threshold must be finite, got " +
                          std::to_string(config.prune_threshold));
  }
  if (!(config.kl_weight >= 0 && std::isfinite(config.kl_weight))) {
    throw InvalidArgument("sparse_vd.kl_weight must be finite and >= 0, got " +
                          std::to_string(config.kl_weight));
  }
  // theta and log sigma^2 for every weight, then the bias.
  const int64_t weights = SaturatingMul(input.Size(), config.units);
  return LayerPlan{Shape{{config.units}},
                   SaturatingAdd(SaturatingMul(2, weights), config.use_bias ? config.units : 0)};
}

SparseVdDense::SparseVdDense(const LayerConfig& config, const Shape& input, uint64_t init_seed)
    : LayerOf(config, input) {
  output_shape_ = PlanSparseVd(config, input).output;
  Parameter w{"weight", {}, false, false};  // theta; the KL term is its prior
  InitializeWeights(config.init, input.Size(), config.units, init_seed, &w.value);
  params_.push_back(std::move(w));
  params_.push_back(Parameter{
      "log_sigma2",
      Matrix::Constant(input.Size(), config.units, static_cast<float>(config.log_sigma2_init))});
  if (config.use_bias) params_.push_back(Parameter{"bias", Matrix::Zero(1, config.units)});
}

Matrix SparseVdDense::LogAlpha() const {
  const Matrix& theta = params_[0].value;
  const Matrix& ls2 = params_[1].value;
  return (ls2.array() - (theta.array().square() + kVarEps).log())
      .cwiseMax(-kLogAlphaClip)
      .cwiseMin(kLogAlphaClip)
      .matrix();
}

Matrix SparseVdDense::KeepMask() const {
  const float th = static_cast<float>(config_.prune_threshold);
  return LogAlpha().unaryExpr([th](float v) { return v > th ? 0.0f : 1.0f; });
}

double SparseVdDense::Sparsity() const {
  const Matrix keep = KeepMask();
  return 1.0 - keep.cast<double>().sum() / static_cast<double>(keep.size());
}

std::vector<double> SparseVdDense::LearnedRates() const {
  const Matrix la = LogAlpha();
  double sum = 0;
  for (int64_t i = 0; i < la.size(); ++i) sum += 1.0 / (1.0 + std::exp(-la.data()[i]));
  return {sum / static_cast<double>(la.size())};
}

void SparseVdDense::Forward(const Matrix& x, const Context& ctx, LayerCache* cache,
                            Matrix* y) const {
  const bool train = ctx.mode == Mode::kTrain;
  Matrix keep;
  if (!train) keep = KeepMask();
  const Matrix theta = train ? params_[0].value : params_[0].value.cwiseProduct(keep);
  MatMul(x, false, theta, false, y, ctx.threads);
  if (params_.size() > 2) y->rowwise() += params_[2].value.row(0);
  if (!Stochastic(ctx.mode)) return;
  Matrix sigma2 = params_[1].value.array().exp().matrix();
  if (!train) sigma2 = sigma2.cwiseProduct(keep);
  const Matrix x2 = x.cwiseProduct(x);
  Matrix var;
  MatMul(x2, false, sigma2, false, &var, ctx.threads);
  const int64_t cols = y->cols();
  Matrix noise(x.rows(), cols), stddev(x.rows(), cols);
  ParallelFor(x.rows(), ctx.threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      RowRng(ctx.rng, ctx.layer, r).Normal(noise.row(r).data(), cols);
      stddev.row(r) = (var.row(r).array() + kVarEps).sqrt().matrix();
      y->row(r) += stddev.row(r).cwiseProduct(noise.row(r));
    }
  });
  if (cache) {
    KeepInput(x, cache);
    cache->extra.resize(kSlots);
    cache->extra[kNoise] = std::move(noise);
    cache->extra[kStd] = std::move(stddev);
  }
}

void SparseVdDense::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                             Matrix* dx) const {
  const Matrix& x = cache.input;
  const Matrix& noise = cache.extra[kNoise];
  const Matrix& stddev = cache.extra[kStd];
  const int threads = cache.threads;
  MatMul(x, true, dy, false, &grads[0], threads);
  if (params_.size() > 2) grads[2] = dy.colwise().sum();
  // var = x^2 sigma^2, std = sqrt(var + e): dL/dvar = dy * eps / (2 std).
  const Matrix dvar = (dy.array() * noise.array() / (2.0f * stddev.array())).matrix();
  const Matrix x2 = x.cwiseProduct(x);
  const Matrix sigma2 = params_[1].value.array().exp().matrix();
  MatMul(x2, true, dvar, false, &grads[1], threads);
  grads[1] = grads[1].cwiseProduct(sigma2);
  if (dx) {
    MatMul(dy, false, params_[0].value, true, dx, threads);
    Matrix t;
    MatMul(dvar, false, sigma2, true, &t, threads);
    *dx += 2.0f * x.cwiseProduct(t);
  }
}

double SparseVdDense::Regularize(int64_t n, std::span<Matrix> grads) const {
  const double scale = config_.kl_weight / static_cast<double>(std::max<int64_t>(n, 1));
  if (scale == 0) return 0.0;
  const Matrix& theta = params_[0].value;
  const Matrix& ls2 = params_[1].value;
  double kl = 0;
  for (int64_t i = 0; i < theta.size(); ++i) {
    const double t = theta.data()[i];
    const double raw = ls2.data()[i] - std::log(t * t + kVarEps);
    const double la =
        std::clamp(raw, -static_cast<double>(kLogAlphaClip), static_cast<double>(kLogAlphaClip));
    const double sg = 1.0 / (1.0 + std::exp(-(kK2 + kK3 * la)));
    kl += kK1 - kK1 * sg + 0.5 * std::log1p(std::exp(-la));
    if (raw <= -kLogAlphaClip || raw >= kLogAlphaClip) continue;  // clipped: no gradient
    const double dla = -kK1 * kK3 * sg * (1 - sg) - 0.5 / (1.0 + std::exp(la));
    grads[1].data()[i] += static_cast<float>(scale * dla);
    grads[0].data()[i] += static_cast<float>(scale * dla * (-2.0 * t / (t * t + kVarEps)));
  }
  return scale * kl;
}

}  // namespace dropnet::engine
