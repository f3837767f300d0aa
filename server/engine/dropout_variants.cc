#include "server/engine/dropout_variants.h"

#include <cmath>

#include "server/engine/dropout.h"
#include "server/engine/thread_pool.h"

namespace dropnet::engine {

// ---- SpatialDropout ----

LayerPlan PlanSpatialDropout(const LayerConfig& config, const Shape& input) {
  CheckDropRate((config.type + ".rate").c_str(), config.rate);
  const size_t dims = input.dims.size();
  const bool ok = config.type == "spatial_dropout1d"   ? dims == 2
                  : config.type == "spatial_dropout2d" ? dims == 3
                                                       : dims == 2 || dims == 3;
  if (!ok) {
    throw InvalidArgument(config.type + " expects input of shape " +
                          (config.type == "spatial_dropout1d"   ? "[channels, length]"
                           : config.type == "spatial_dropout2d" ? "[channels, height, width]"
                                                                : "[channels, ...]") +
                          ", got " + input.ToString());
  }
  return LayerPlan{input, 0};
}

SpatialDropout::SpatialDropout(const LayerConfig& config, const Shape& input)
    : RateDropoutOf(config, input) {
  PlanSpatialDropout(config, input);
  channels_ = input.dims[0];
  spatial_ = input.Size() / channels_;
}

void SpatialDropout::Forward(const Matrix& x, const Context& ctx, LayerCache* cache,
                             Matrix* y) const {
  const double p = config_.rate;
  if (PassesThrough(ctx.mode)) {
    *y = x;
    if (cache) cache->mask.resize(0, 0);
    return;
  }
  // One draw per (row, channel): element c of the row's random address.
  Matrix mask = BernoulliMask(x.rows(), channels_, p, static_cast<float>(1.0 / (1.0 - p)), ctx);
  y->resize(x.rows(), x.cols());
  const int64_t s = spatial_;
  ParallelFor(x.rows(), ctx.threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < channels_; ++c)
        y->row(r).segment(c * s, s) = x.row(r).segment(c * s, s) * mask(r, c);
  });
  if (cache) cache->mask = std::move(mask);
}

void SpatialDropout::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                              Matrix* dx) const {
  if (!dx) return;
  if (cache.mask.size() == 0) {
    *dx = dy;
    return;
  }
  dx->resize(dy.rows(), dy.cols());
  const int64_t s = spatial_;
  ParallelFor(dy.rows(), cache.threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < channels_; ++c)
        dx->row(r).segment(c * s, s) = dy.row(r).segment(c * s, s) * cache.mask(r, c);
  });
}

// ---- GaussianDropout ----

LayerPlan PlanGaussianDropout(const LayerConfig& config, const Shape& input) {
  CheckDropRate("gaussian_dropout.rate", config.rate);
  return LayerPlan{input, 0};
}

GaussianDropout::GaussianDropout(const LayerConfig& config, const Shape& input)
    : RateDropoutOf(config, input) {
  PlanGaussianDropout(config, input);
}

void GaussianDropout::Forward(const Matrix& x, const Context& ctx, LayerCache* cache,
                              Matrix* y) const {
  const double p = config_.rate;
  if (PassesThrough(ctx.mode)) {
    *y = x;
    if (cache) cache->mask.resize(0, 0);
    return;
  }
  const float sigma = static_cast<float>(std::sqrt(p / (1.0 - p)));
  Matrix noise(x.rows(), x.cols());
  ParallelFor(x.rows(), ctx.threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* e = noise.row(r).data();
      RowRng(ctx.rng, ctx.layer, r).Normal(e, x.cols());
      for (int64_t j = 0; j < x.cols(); ++j) e[j] = 1.0f + sigma * e[j];
    }
  });
  *y = x.cwiseProduct(noise);
  if (cache) cache->mask = std::move(noise);
}

// ---- AlphaDropout ----

LayerPlan PlanAlphaDropout(const LayerConfig& config, const Shape& input) {
  CheckDropRate("alpha_dropout.rate", config.rate);
  return LayerPlan{input, 0};
}

AlphaDropout::AlphaDropout(const LayerConfig& config, const Shape& input)
    : RateDropoutOf(config, input) {
  PlanAlphaDropout(config, input);
}

void AlphaDropout::Affine(double p, double* a, double* b) {
  const double q = 1.0 - p, ap = kAlphaDropoutValue;
  *a = 1.0 / std::sqrt(q + ap * ap * q * (1.0 - q));
  *b = -(*a) * (1.0 - q) * ap;
}

void AlphaDropout::Forward(const Matrix& x, const Context& ctx, LayerCache* cache,
                           Matrix* y) const {
  const double p = config_.rate;
  if (PassesThrough(ctx.mode)) {
    *y = x;
    if (cache) cache->mask.resize(0, 0);
    return;
  }
  double a, b;
  Affine(p, &a, &b);
  // mask holds a for kept units and 0 for dropped ones: dy/dx.
  Matrix mask = BernoulliMask(x.rows(), x.cols(), p, static_cast<float>(a), ctx);
  const float bf = static_cast<float>(b);
  const float dropped = static_cast<float>(a * kAlphaDropoutValue + b);
  *y = x.binaryExpr(mask,
                    [bf, dropped](float v, float m) { return m != 0.0f ? m * v + bf : dropped; });
  if (cache) cache->mask = std::move(mask);
}

}  // namespace dropnet::engine
