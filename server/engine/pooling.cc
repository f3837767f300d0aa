#include "server/engine/pooling.h"

#include <algorithm>
#include <limits>

#include "server/engine/thread_pool.h"

namespace dropnet::engine {

namespace {

// Calls visit(c, o, hs, he, ws, we) for every output position o (of channel c, as an index into
// an output row) with the window [hs, he) x [ws, we) of the input it reads, clipped to the input.
template <typename Visit>
void ForEachWindow(const ConvGeometry& g, Visit&& visit) {
  const int64_t out_positions = g.OutPositions();
  for (int c = 0; c < g.channels; ++c) {
    for (int oh = 0; oh < g.out_height; ++oh) {
      const int h0 = oh * g.stride_h - g.pad_h;
      const int hs = std::max(h0, 0), he = std::min(h0 + g.kernel_h, g.height);
      for (int ow = 0; ow < g.out_width; ++ow) {
        const int w0 = ow * g.stride_w - g.pad_w;
        const int ws = std::max(w0, 0), we = std::min(w0 + g.kernel_w, g.width);
        visit(c, c * out_positions + int64_t{oh} * g.out_width + ow, hs, he, ws, we);
      }
    }
  }
}

}  // namespace

LayerPlan PlanPool(const LayerConfig& config, const Shape& input) {
  const ConvGeometry g = MakeConvGeometry(config, input);
  return LayerPlan{ConvOutputShape(g, g.channels, config.type == "global_avg_pool"), 0};
}

Pool::Pool(const LayerConfig& config, const Shape& input)
    : LayerOf(config, input), g_(MakeConvGeometry(config, input)) {
  max_ = config.type.rfind("max_pool", 0) == 0;
  output_shape_ = ConvOutputShape(g_, g_.channels, config.type == "global_avg_pool");
}

void Pool::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  const int64_t n = x.rows();
  const int64_t out_positions = g_.OutPositions();
  const int64_t out_cols = int64_t{g_.channels} * out_positions;
  y->resize(n, out_cols);
  Matrix* argmax = nullptr;
  if (cache && max_) {
    cache->mask.resize(n, out_cols);  // index of the max within the input row (exact in float)
    argmax = &cache->mask;
  }
  const float inv_area = 1.0f / static_cast<float>(g_.kernel_h * g_.kernel_w);
  ParallelFor(n, ctx.threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x.row(r).data();
      float* yr = y->row(r).data();
      float* ar = argmax ? argmax->row(r).data() : nullptr;
      if (max_ && g_.kernel_h == 2 && g_.kernel_w == 2 && g_.stride_h == 2 && g_.stride_w == 2 &&
          g_.pad_h == 0 && g_.pad_w == 0) {
        // The common 2x2 / stride 2 case: the general rule below, unrolled.
        for (int c = 0; c < g_.channels; ++c) {
          for (int oh = 0; oh < g_.out_height; ++oh) {
            const int64_t i0 = (int64_t{c} * g_.height + 2 * oh) * g_.width;
            const float* r0p = xr + i0;
            const float* r1p = r0p + g_.width;
            const int64_t o0 = c * out_positions + int64_t{oh} * g_.out_width;
            for (int ow = 0; ow < g_.out_width; ++ow) {
              const float v0 = r0p[2 * ow], v1 = r0p[2 * ow + 1];
              const float v2 = r1p[2 * ow], v3 = r1p[2 * ow + 1];
              // Branch-free selects: which element wins is data-dependent and unpredictable.
              float best = v0;
              int k = 0;
              bool t = v1 > best || v1 != v1;
              best = t ? v1 : best;
              k = t ? 1 : k;
              t = v2 > best || v2 != v2;
              best = t ? v2 : best;
              k = t ? 2 : k;
              t = v3 > best || v3 != v3;
              best = t ? v3 : best;
              k = t ? 3 : k;
              yr[o0 + ow] = best;
              if (ar) ar[o0 + ow] = static_cast<float>(i0 + 2 * ow + (k & 1) + (k >> 1) * g_.width);
            }
          }
        }
        continue;
      }
      ForEachWindow(g_, [&](int c, int64_t o, int hs, int he, int ws, int we) {
        const int64_t plane = int64_t{c} * g_.height * g_.width;
        const float* xc = xr + plane;
        if (max_) {
          // PyTorch's rule: the first maximum, and NaN wins.
          float best = -std::numeric_limits<float>::infinity();
          int64_t best_i = plane + int64_t{hs} * g_.width + ws;
          for (int h = hs; h < he; ++h) {
            const float* xh = xc + int64_t{h} * g_.width;
            for (int w = ws; w < we; ++w) {
              const float v = xh[w];
              if (v > best || v != v) {
                best = v;
                best_i = plane + int64_t{h} * g_.width + w;
              }
            }
          }
          yr[o] = best;
          if (ar) ar[o] = static_cast<float>(best_i);
        } else {
          float s = 0.0f;
          for (int h = hs; h < he; ++h)
            for (int w = ws; w < we; ++w) s += xc[int64_t{h} * g_.width + w];
          yr[o] = s * inv_area;  // zeros of the padding count (count_include_pad)
        }
      });
    }
  });
}

void Pool::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                    Matrix* dx) const {
  if (!dx) return;
  const int64_t n = dy.rows();
  dx->setZero(n, g_.InputSize());
  const float inv_area = 1.0f / static_cast<float>(g_.kernel_h * g_.kernel_w);
  ParallelFor(n, cache.threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* gr = dy.row(r).data();
      float* dr = dx->row(r).data();
      if (max_) {
        const float* ar = cache.mask.row(r).data();
        for (int64_t o = 0; o < dy.cols(); ++o) dr[static_cast<int64_t>(ar[o])] += gr[o];
        continue;
      }
      ForEachWindow(g_, [&](int c, int64_t o, int hs, int he, int ws, int we) {
        float* dc = dr + int64_t{c} * g_.height * g_.width;
        const float v = gr[o] * inv_area;
        for (int h = hs; h < he; ++h)
          for (int w = ws; w < we; ++w) dc[int64_t{h} * g_.width + w] += v;
      });
    }
  });
}

}  // namespace dropnet::engine
