#include "server/engine/dropout.h"

#include <cmath>
#include <sstream>
#include <vector>

#include "server/engine/thread_pool.h"

namespace dropnet::engine {

void CheckDropRate(const char* field, double p) {
  if (!(p >= 0.0 && p < 1.0)) {  // also rejects NaN
    std::ostringstream msg;
    msg << field << " must be in [0, 1), got " << p;
    throw InvalidArgument(msg.str());
  }
}

namespace {

// The mask of BernoulliMask row by row, into `mask` when given (a pass that needs no backward
// does not keep it: each row's mask is then only a scratch row); with x, also y = x * mask.
void DrawMask(int64_t rows, int64_t cols, double p, float keep_value, const Context& ctx,
              const Matrix* x, Matrix* y, Matrix* mask) {
  if (mask) mask->resize(rows, cols);
  if (y) y->resize(rows, cols);
  // Element dropped when its 32-bit word falls below p * 2^32.
  // p < 1, so p * 2^32 < 2^32 fits the word's range.
  const uint32_t threshold = static_cast<uint32_t>(std::ldexp(p, 32));
  const int threads = rows * cols < (1 << 14) ? 1 : ctx.threads;
  ParallelFor(rows, threads, [&, keep_value](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      RowRng(ctx.rng, ctx.layer, r)
          .Keep(threshold, keep_value, x ? x->row(r).data() : nullptr,
                y ? y->row(r).data() : nullptr, mask ? mask->row(r).data() : nullptr, cols);
    }
  });
}

}  // namespace

Matrix BernoulliMask(int64_t rows, int64_t cols, double p, float keep_value, const Context& ctx) {
  Matrix mask;
  DrawMask(rows, cols, p, keep_value, ctx, nullptr, nullptr, &mask);
  return mask;
}

LayerPlan PlanDropout(const LayerConfig& config, const Shape& input) {
  CheckDropRate("dropout.rate", config.rate);
  return LayerPlan{input, 0};
}

Dropout::Dropout(const LayerConfig& config, const Shape& input) : RateDropoutOf(config, input) {
  PlanDropout(config, input);
}

void Dropout::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  const double p = config_.rate;
  if (PassesThrough(ctx.mode) || !Stochastic(ctx.mode)) {
    // In eval, classic scaling multiplies by the keep probability instead of dropping.
    if (PassesThrough(ctx.mode))
      *y = x;
    else
      *y = x * static_cast<float>(1.0 - p);
    if (cache) cache->mask.resize(0, 0);
    return;
  }
  const float keep_value = config_.classic_scaling ? 1.0f : static_cast<float>(1.0 / (1.0 - p));
  DrawMask(x.rows(), x.cols(), p, keep_value, ctx, &x, y, cache ? &cache->mask : nullptr);
}

}  // namespace dropnet::engine
