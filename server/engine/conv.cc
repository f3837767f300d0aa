#include "server/engine/conv.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "server/engine/gemm.h"
#include "server/engine/thread_pool.h"

namespace dropnet::engine {
namespace {

[[noreturn]] void Fail(const std::string& field, const std::string& what) {
  throw InvalidArgument(field + " " + what);
}

std::string Str(int v) { return std::to_string(v); }

bool IsConvType(const std::string& t) { return t == "conv1d" || t == "conv2d"; }

}  // namespace

ConvGeometry MakeConvGeometry(const LayerConfig& c, const Shape& input) {
  const std::string& t = c.type;
  const bool conv = IsConvType(t);
  const bool global = t == "global_avg_pool";
  int rank = 0;  // 0: either
  if (t == "conv1d" || t == "max_pool1d" || t == "avg_pool1d") rank = 2;
  if (t == "conv2d" || t == "max_pool2d" || t == "avg_pool2d") rank = 3;
  const int dims = static_cast<int>(input.dims.size());
  if ((rank != 0 && dims != rank) || (rank == 0 && dims != 2 && dims != 3)) {
    Fail(t, "expects input of shape " +
                std::string(rank == 2   ? "[channels, length]"
                            : rank == 3 ? "[channels, height, width]"
                                        : "[channels, length] or [channels, height, width]") +
                ", got " + input.ToString());
  }
  ConvGeometry g;
  g.one_d = dims == 2;
  g.channels = input.dims[0];
  g.height = g.one_d ? 1 : input.dims[1];
  g.width = input.dims[dims - 1];
  if (global) {
    g.kernel_h = g.height, g.kernel_w = g.width;
    g.out_height = g.out_width = 1;
    return g;
  }
  int k = 0, stride = 0;
  if (conv) {
    if (c.filters <= 0) Fail(t + ".filters", "must be positive, got " + Str(c.filters));
    if (c.kernel_size <= 0) Fail(t + ".kernel_size", "must be positive, got " + Str(c.kernel_size));
    k = c.kernel_size;
    stride = c.stride == 0 ? 1 : c.stride;
  } else {
    if (c.pool_size < 0) Fail(t + ".pool_size", "must be positive, got " + Str(c.pool_size));
    k = c.pool_size == 0 ? 2 : c.pool_size;
    stride = c.stride == 0 ? k : c.stride;
  }
  if (stride <= 0) Fail(t + ".stride", "must be positive (0: default), got " + Str(c.stride));
  if (c.padding < 0) Fail(t + ".padding", "must be >= 0, got " + Str(c.padding));
  if (!conv && 2 * int64_t{c.padding} > k) {
    Fail(t + ".padding",
         "must be at most half the pool size " + Str(k) + ", got " + Str(c.padding));
  }
  g.kernel_w = k;
  g.stride_w = stride;
  g.pad_w = c.padding;
  if (!g.one_d) g.kernel_h = k, g.stride_h = stride, g.pad_h = c.padding;
  // In 64 bits: padding and kernel may be anything an int holds.
  const int64_t span_h = int64_t{g.height} + 2 * int64_t{g.pad_h} - g.kernel_h;
  const int64_t span_w = int64_t{g.width} + 2 * int64_t{g.pad_w} - g.kernel_w;
  if (span_h < 0 || span_w < 0) {
    Fail(t, "window " + Str(k) + " with padding " + Str(c.padding) + " does not fit input " +
                input.ToString());
  }
  const int64_t out_h = span_h / g.stride_h + 1, out_w = span_w / g.stride_w + 1;
  if (out_h > std::numeric_limits<int>::max() || out_w > std::numeric_limits<int>::max()) {
    Fail(t + ".padding", Str(c.padding) + " makes the output too large");
  }
  g.out_height = static_cast<int>(out_h);
  g.out_width = static_cast<int>(out_w);
  return g;
}

Shape ConvOutputShape(const ConvGeometry& g, int channels, bool global) {
  if (global) return Shape{{channels}};
  if (g.one_d) return Shape{{channels, g.out_width}};
  return Shape{{channels, g.out_height, g.out_width}};
}

namespace {

// The output positions ow in [lo, hi) whose input column ow*s + offset lies in [0, size).
inline void ValidRange(int out, int s, int offset, int size, int* lo, int* hi) {
  // ow*s + offset >= 0  <=>  ow >= ceil(-offset / s)
  int a = offset >= 0 ? 0 : (-offset + s - 1) / s;
  // ow*s + offset <= size - 1  <=>  ow <= floor((size - 1 - offset) / s)
  int top = size - 1 - offset;
  int b = top < 0 ? 0 : top / s + 1;
  *lo = std::min(a, out);
  *hi = std::max(*lo, std::min(b, out));
}

// col (C*kh*kw x OH*OW) from one image x (C x H x W).
void Im2Col(const ConvGeometry& g, const float* __restrict x, float* __restrict col) {
  const int oh_n = g.out_height, ow_n = g.out_width;
  const int64_t positions = g.OutPositions();
  for (int c = 0; c < g.channels; ++c) {
    for (int i = 0; i < g.kernel_h; ++i) {
      for (int j = 0; j < g.kernel_w; ++j) {
        float* dst = col + ((int64_t{c} * g.kernel_h + i) * g.kernel_w + j) * positions;
        int lo, hi;
        ValidRange(ow_n, g.stride_w, j - g.pad_w, g.width, &lo, &hi);
        for (int oh = 0; oh < oh_n; ++oh) {
          float* __restrict d = dst + int64_t{oh} * ow_n;
          const int ih = oh * g.stride_h + i - g.pad_h;
          if (ih < 0 || ih >= g.height) {
            std::fill(d, d + ow_n, 0.0f);
            continue;
          }
          const float* __restrict src = x + (int64_t{c} * g.height + ih) * g.width + (j - g.pad_w);
          std::fill(d, d + lo, 0.0f);
          if (g.stride_w == 1) {
            // A plain loop: the runs are short (one output row), too short for a memmove call.
            for (int ow = lo; ow < hi; ++ow) d[ow] = src[ow];
          } else {
            for (int ow = lo; ow < hi; ++ow) d[ow] = src[int64_t{ow} * g.stride_w];
          }
          std::fill(d + hi, d + ow_n, 0.0f);
        }
      }
    }
  }
}

// dx (C x H x W, overwritten) from dcol, the adjoint of Im2Col.
void Col2Im(const ConvGeometry& g, const float* col, float* dx) {
  const int oh_n = g.out_height, ow_n = g.out_width;
  const int64_t positions = g.OutPositions();
  std::fill(dx, dx + g.InputSize(), 0.0f);
  for (int c = 0; c < g.channels; ++c) {
    for (int i = 0; i < g.kernel_h; ++i) {
      for (int j = 0; j < g.kernel_w; ++j) {
        const float* s = col + ((int64_t{c} * g.kernel_h + i) * g.kernel_w + j) * positions;
        int lo, hi;
        ValidRange(ow_n, g.stride_w, j - g.pad_w, g.width, &lo, &hi);
        for (int oh = 0; oh < oh_n; ++oh) {
          const int ih = oh * g.stride_h + i - g.pad_h;
          if (ih < 0 || ih >= g.height) continue;
          const float* sr = s + int64_t{oh} * ow_n;
          float* d = dx + (int64_t{c} * g.height + ih) * g.width + (j - g.pad_w);
          if (g.stride_w == 1) {
            for (int ow = lo; ow < hi; ++ow) d[ow] += sr[ow];
          } else {
            for (int ow = lo; ow < hi; ++ow) d[int64_t{ow} * g.stride_w] += sr[ow];
          }
        }
      }
    }
  }
}

bool IsPointwise(const ConvGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 &&
         g.pad_w == 0;
}

// Runs fn(part, begin, end) over `parts` contiguous ranges of [0, n), one range per thread.
int Parts(int64_t n, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(std::max(threads, 1), n)));
}

template <typename Fn>
void ForEachPart(int64_t n, int parts, Fn fn) {
  ParallelFor(parts, parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) fn(static_cast<int>(p), n * p / parts, n * (p + 1) / parts);
  });
}

}  // namespace

LayerPlan PlanConv(const LayerConfig& config, const Shape& input) {
  const ConvGeometry g = MakeConvGeometry(config, input);
  const int64_t k = SaturatingMul(SaturatingMul(g.channels, g.kernel_h), g.kernel_w);
  const int64_t weights = SaturatingMul(config.filters, k);
  LayerPlan plan;
  plan.output = ConvOutputShape(g, config.filters, false);
  plan.parameters =
      weights == INT64_MAX ? weights : weights + (config.use_bias ? config.filters : 0);
  return plan;
}

// ---- Conv ----

Conv::Conv(const LayerConfig& config, const Shape& input, uint64_t init_seed)
    : LayerOf(config, input), g_(MakeConvGeometry(config, input)) {
  output_shape_ = ConvOutputShape(g_, config.filters, false);
  const int64_t k = int64_t{g_.channels} * g_.kernel_h * g_.kernel_w;
  const int64_t receptive = int64_t{g_.kernel_h} * g_.kernel_w;
  // Fans as Keras and PyTorch count them for convolutions: C*k*k in, F*k*k out.
  Matrix w;
  InitializeWeights(config.init, k, config.filters * receptive, init_seed, &w);
  // InitializeWeights fills a fan_in x fan_out matrix; only its scale matters here, so keep the
  // first F*K values as the F x K kernel.
  Parameter weight{"weight", Matrix(config.filters, k), true, false};
  std::copy(w.data(), w.data() + weight.value.size(), weight.value.data());
  params_.push_back(std::move(weight));
  if (config.use_bias) params_.push_back(Parameter{"bias", Matrix::Zero(1, config.filters)});
}

void Conv::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  const int64_t n = x.rows(), filters = config_.filters;
  const int64_t k = int64_t{g_.channels} * g_.kernel_h * g_.kernel_w;
  const int64_t positions = g_.OutPositions();
  const bool pointwise = IsPointwise(g_);
  const Matrix& w = params_[0].value;
  const float* bias = params_.size() > 1 ? params_[1].value.data() : nullptr;
  y->resize(n, filters * positions);
  ForEachPart(n, Parts(n, ctx.threads), [&](int, int64_t r0, int64_t r1) {
    std::vector<float> col(pointwise ? 0 : k * positions);
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x.row(r).data();
      float* yr = y->row(r).data();
      if (!pointwise) Im2Col(g_, xr, col.data());
      Gemm(false, false, filters, positions, k, 1.0f, w.data(), k, pointwise ? xr : col.data(),
           positions, 0.0f, yr, positions);
      if (bias) {
        for (int64_t f = 0; f < filters; ++f) {
          float* yf = yr + f * positions;
          const float bf = bias[f];
          for (int64_t p = 0; p < positions; ++p) yf[p] += bf;
        }
      }
    }
  });
  if (cache) KeepInput(x, cache);
}

void Conv::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                    Matrix* dx) const {
  const Matrix& x = cache.input;
  const int64_t n = x.rows(), filters = config_.filters;
  const int64_t k = int64_t{g_.channels} * g_.kernel_h * g_.kernel_w;
  const int64_t positions = g_.OutPositions();
  const bool pointwise = IsPointwise(g_);
  const bool has_bias = params_.size() > 1;
  const Matrix& w = params_[0].value;
  if (dx) dx->resize(n, x.cols());
  const int parts = Parts(n, cache.threads);
  // Per thread dW^T (K x F): accumulating col (K x P) * dY^T (P x F) packs the small dY, not the
  // large col, into the GEMM's panels.
  std::vector<Matrix> dwt(parts, Matrix::Zero(k, filters));
  std::vector<Matrix> db(parts, Matrix::Zero(1, filters));
  ForEachPart(n, parts, [&](int part, int64_t r0, int64_t r1) {
    std::vector<float> col(pointwise ? 0 : k * positions);
    std::vector<float> dcol(dx && !pointwise ? k * positions : 0);
    float* dwp = dwt[part].data();
    float* dbp = db[part].data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x.row(r).data();
      const float* gr = dy.row(r).data();
      if (!pointwise) Im2Col(g_, xr, col.data());
      const float* cr = pointwise ? xr : col.data();
      // dW^T += col (K x P) * dY^T (P x F)
      Gemm(false, true, k, filters, positions, 1.0f, cr, positions, gr, positions, 1.0f, dwp,
           filters);
      if (has_bias) {
        // Eigen's vectorised sum: a fixed order of partial sums, unlike one serial chain.
        for (int64_t f = 0; f < filters; ++f)
          dbp[f] += Eigen::Map<const RowVector>(gr + f * positions, positions).sum();
      }
      if (dx) {
        // dcol = W^T (K x F) * dY (F x P), then scattered back onto the image.
        float* out = pointwise ? dx->row(r).data() : dcol.data();
        Gemm(true, false, k, positions, filters, 1.0f, w.data(), k, gr, positions, 0.0f, out,
             positions);
        if (!pointwise) Col2Im(g_, dcol.data(), dx->row(r).data());
      }
    }
  });
  for (int p = 1; p < parts; ++p) dwt[0] += dwt[p];
  grads[0] = dwt[0].transpose();
  if (has_bias) {
    grads[1] = std::move(db[0]);
    for (int p = 1; p < parts; ++p) grads[1] += db[p];
  }
}

}  // namespace dropnet::engine