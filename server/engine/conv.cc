#include "server/engine/conv.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <sstream>

#include "server/engine/parallel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DROPNET_GEMM_AVX512 1
#endif

namespace dropnet::engine {
namespace {

[[noreturn]] void Fail(const std::string& field, const std::string& what) {
  throw InvalidArgument(field + " " + what);
}

std::string Str(int v) { return std::to_string(v); }

// Builds the geometry of a conv or pooling layer, validating the configuration.
ConvGeometry MakeGeometry(const LayerConfig& c, const Shape& input) {
  const std::string& t = c.type;
  const bool conv = IsConvType(t);
  const bool global = t == "global_avg_pool";
  int rank = 0;  // 0: either
  if (t == "conv1d" || t == "max_pool1d" || t == "avg_pool1d") rank = 2;
  if (t == "conv2d" || t == "max_pool2d" || t == "avg_pool2d") rank = 3;
  const int dims = static_cast<int>(input.dims.size());
  if ((rank != 0 && dims != rank) || (rank == 0 && dims != 2 && dims != 3)) {
    Fail(t, "expects input of shape " +
                std::string(rank == 2 ? "[channels, length]"
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
    Fail(t + ".padding", "must be at most half the pool size " + Str(k) + ", got " +
                             Str(c.padding));
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

Shape OutputShape(const ConvGeometry& g, int channels, bool global) {
  if (global) return Shape{{channels}};
  if (g.one_d) return Shape{{channels, g.out_width}};
  return Shape{{channels, g.out_height, g.out_width}};
}

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
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
         g.pad_h == 0 && g.pad_w == 0;
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

bool IsConvType(const std::string& t) { return t == "conv1d" || t == "conv2d"; }

bool IsConvOrPoolType(const std::string& t) {
  return IsConvType(t) || t == "max_pool" || t == "avg_pool" || t == "max_pool1d" ||
         t == "max_pool2d" || t == "avg_pool1d" || t == "avg_pool2d" || t == "global_avg_pool";
}

Shape ConvOrPoolOutputShape(const LayerConfig& config, const Shape& input) {
  const ConvGeometry g = MakeGeometry(config, input);
  const bool conv = IsConvType(config.type);
  return OutputShape(g, conv ? config.filters : g.channels, config.type == "global_avg_pool");
}

int64_t ConvOrPoolParameterCount(const LayerConfig& config, const Shape& input) {
  if (!IsConvType(config.type)) return 0;
  const ConvGeometry g = MakeGeometry(config, input);
  const int64_t k = SaturatingMul(SaturatingMul(g.channels, g.kernel_h), g.kernel_w);
  const int64_t weights = SaturatingMul(config.filters, k);
  return weights == INT64_MAX ? weights : weights + (config.use_bias ? config.filters : 0);
}

#ifdef DROPNET_GEMM_AVX512
namespace {

// A register-blocked GEMM for AVX-512, compiled for that target only and chosen at run time, so
// the binary stays portable: B is packed in panels of kKc x 32, and a kMr x 32 block of C is kept
// in 2 * kMr zmm accumulators while A is broadcast element by element (any strides, so op(A) needs
// no copy).
constexpr int kMr = 8, kNr = 32, kKc = 256;

// The lane mask of a 16-float vector whose first `valid` lanes (clamped to 0..16) are in use.
constexpr __mmask16 LaneMask(int64_t valid) {
  return valid >= 16 ? 0xFFFF : valid <= 0 ? 0 : static_cast<__mmask16>((1u << valid) - 1);
}

// kHalf: the panel's last 16 columns are padding (n_valid <= 16), and are not computed.
template <int MR, bool kHalf>
__attribute__((target("avx512f,fma"))) void MicroKernel(int64_t kc, const float* a, int64_t a_rs,
                                                        int64_t a_cs, const float* panel, float* c,
                                                        int64_t ldc, int n_valid, bool accumulate,
                                                        float alpha) {
  __m512 acc0[MR], acc1[MR];
  for (int m = 0; m < MR; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kNr);
    const __m512 b1 = kHalf ? b0 : _mm512_loadu_ps(panel + k * kNr + 16);
    const float* ak = a + k * a_cs;
    for (int m = 0; m < MR; ++m) {
      const __m512 av = _mm512_set1_ps(ak[m * a_rs]);
      acc0[m] = _mm512_fmadd_ps(av, b0, acc0[m]);
      if (!kHalf) acc1[m] = _mm512_fmadd_ps(av, b1, acc1[m]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
  const __mmask16 k0 = LaneMask(n_valid), k1 = kHalf ? 0 : LaneMask(n_valid - 16);
  for (int m = 0; m < MR; ++m) {
    float* cm = c + m * ldc;
    __m512 r0 = _mm512_mul_ps(acc0[m], va), r1 = _mm512_mul_ps(acc1[m], va);
    if (accumulate) {
      r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(k0, cm));
      if (!kHalf) r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(k1, cm + 16));
    }
    _mm512_mask_storeu_ps(cm, k0, r0);
    if (!kHalf) _mm512_mask_storeu_ps(cm + 16, k1, r1);
  }
}

// Copies rows of B (rows s0.. of k_index when given, else rows s0..) into a kc x kNr panel, the
// columns n0..n0+nv; the columns past nv are zero. Two masked vector moves a row: a library copy
// of 128 bytes would cost more in the call than in the move.
__attribute__((target("avx512f"))) void PackPanel(const float* b, int64_t ldb,
                                                  const int32_t* k_index, int64_t s0, int64_t kc,
                                                  int64_t n0, int nv, float* p) {
  const __mmask16 m0 = LaneMask(nv), m1 = LaneMask(nv - 16);
  for (int64_t kk = 0; kk < kc; ++kk) {
    const int64_t row = k_index ? int64_t{k_index[s0 + kk]} : s0 + kk;
    const float* bk = b + row * ldb + n0;
    _mm512_storeu_ps(p + kk * kNr, _mm512_maskz_loadu_ps(m0, bk));
    _mm512_storeu_ps(p + kk * kNr + 16, _mm512_maskz_loadu_ps(m1, bk + 16));
  }
}

using KernelFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, float*, int64_t,
                          int, bool, float);
constexpr KernelFn kFullKernels[kMr + 1] = {
    nullptr,                  MicroKernel<1, false>, MicroKernel<2, false>,
    MicroKernel<3, false>,    MicroKernel<4, false>, MicroKernel<5, false>,
    MicroKernel<6, false>,    MicroKernel<7, false>, MicroKernel<8, false>};
constexpr KernelFn kHalfKernels[kMr + 1] = {
    nullptr,                 MicroKernel<1, true>, MicroKernel<2, true>,
    MicroKernel<3, true>,    MicroKernel<4, true>, MicroKernel<5, true>,
    MicroKernel<6, true>,    MicroKernel<7, true>, MicroKernel<8, true>};

// The kernel for mr rows of a panel with nv valid columns: a panel of at most 16 (a narrow
// product, such as a 10-class head, or the last panel) computes half the accumulators.
KernelFn Kernel(int mr, int nv) { return nv <= 16 ? kHalfKernels[mr] : kFullKernels[mr]; }

bool HaveAvx512() {
  static const bool have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return have;
}

// Up to kSmallM rows of C from B in place, without packing: for a product of one or a few rows
// (eval at batch 1) packing B would copy all of it for a single use. Each element is summed in
// the same order as by MicroKernel (k in chunks of kKc, each chunk added to C), so a row's result
// does not depend on which path computed it.
constexpr int kSmallM = 4;

template <int MR>
__attribute__((target("avx512f,fma"))) void SmallMRows(int64_t n, const int64_t* bounds,
                                                       int blocks, const int32_t* k_index,
                                                       float alpha, const float* a, int64_t a_rs,
                                                       int64_t a_cs, const float* b, int64_t ldb,
                                                       float* c, int64_t ldc, bool accumulate) {
  constexpr int kCols = 64;
  const __m512 va = _mm512_set1_ps(alpha);
  for (int64_t n0 = 0; n0 < n; n0 += kCols) {
    const int64_t nv = std::min<int64_t>(kCols, n - n0);
    __mmask16 mask[4];
    for (int j = 0; j < 4; ++j) mask[j] = LaneMask(nv - 16 * j);
    for (int blk = 0; blk < blocks; ++blk) {
      __m512 acc[MR][4];
      for (int m = 0; m < MR; ++m)
        for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
      for (int64_t kk = bounds[blk]; kk < bounds[blk + 1]; ++kk) {
        const float* bk = b + (k_index ? int64_t{k_index[kk]} : kk) * ldb + n0;
        __m512 bv[4];
        for (int j = 0; j < 4; ++j) bv[j] = _mm512_maskz_loadu_ps(mask[j], bk + 16 * j);
        for (int m = 0; m < MR; ++m) {
          const __m512 av = _mm512_set1_ps(a[m * a_rs + kk * a_cs]);
          for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_fmadd_ps(av, bv[j], acc[m][j]);
        }
      }
      const bool add = accumulate || blk > 0;
      for (int m = 0; m < MR; ++m) {
        float* cm = c + m * ldc + n0;
        for (int j = 0; j < 4; ++j) {
          if (!mask[j]) continue;
          __m512 r = _mm512_mul_ps(acc[m][j], va);
          if (add) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[j], cm + 16 * j));
          _mm512_mask_storeu_ps(cm + 16 * j, mask[j], r);
        }
      }
    }
  }
}

using SmallFn = void (*)(int64_t, const int64_t*, int, const int32_t*, float, const float*,
                         int64_t, int64_t, const float*, int64_t, float*, int64_t, bool);
constexpr SmallFn kSmallKernels[kSmallM + 1] = {nullptr, SmallMRows<1>, SmallMRows<2>,
                                                SmallMRows<3>, SmallMRows<4>};

void GemmAvx512(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                int64_t ldc) {
  if (beta != 0.0f && beta != 1.0f) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= beta;
    beta = 1.0f;
  }
  if (k <= 0) {
    if (beta == 0.0f)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  const int64_t a_rs = trans_a ? 1 : lda, a_cs = trans_a ? lda : 1;
  if (m <= kSmallM && !trans_b) {
    thread_local std::vector<int64_t> bounds;
    bounds.clear();
    for (int64_t k0 = 0; k0 < k; k0 += kKc) bounds.push_back(k0);
    bounds.push_back(k);
    kSmallKernels[m](n, bounds.data(), static_cast<int>(bounds.size()) - 1, nullptr, alpha, a,
                     a_rs, a_cs, b, ldb, c, ldc, beta == 1.0f);
    return;
  }
  thread_local std::vector<float> panel;
  panel.resize(int64_t{kKc} * kNr);
  for (int64_t n0 = 0; n0 < n; n0 += kNr) {
    const int nv = static_cast<int>(std::min<int64_t>(kNr, n - n0));
    for (int64_t k0 = 0; k0 < k; k0 += kKc) {
      const int64_t kc = std::min<int64_t>(kKc, k - k0);
      float* p = panel.data();
      if (trans_b) {
        if (nv < kNr) std::fill(p, p + kc * kNr, 0.0f);
        for (int j = 0; j < nv; ++j) {
          const float* bj = b + (n0 + j) * ldb + k0;
          for (int64_t kk = 0; kk < kc; ++kk) p[kk * kNr + j] = bj[kk];
        }
      } else {
        PackPanel(b, ldb, nullptr, k0, kc, n0, nv, p);
      }
      const bool accumulate = k0 > 0 || beta == 1.0f;
      for (int64_t m0 = 0; m0 < m; m0 += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, m - m0));
        Kernel(mr, nv)(kc, a + m0 * a_rs + k0 * a_cs, a_rs, a_cs, p, c + m0 * ldc + n0, ldc, nv,
                       accumulate, alpha);
      }
    }
  }
}

}  // namespace
#endif  // DROPNET_GEMM_AVX512

bool FastGemmAvailable() {
#ifdef DROPNET_GEMM_AVX512
  return HaveAvx512();
#else
  return false;
#endif
}

void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
#ifdef DROPNET_GEMM_AVX512
  if (HaveAvx512()) {
    GemmAvx512(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
#endif
  using Stride = Eigen::OuterStride<>;
  using ConstMap = Eigen::Map<const Matrix, 0, Stride>;
  Eigen::Map<Matrix, 0, Stride> cm(c, m, n, Stride(ldc));
  if (beta == 0.0f) cm.setZero();
  else if (beta != 1.0f) cm *= beta;
  if (k <= 0) return;
  ConstMap am(a, trans_a ? k : m, trans_a ? m : k, Stride(lda));
  ConstMap bm(b, trans_b ? n : k, trans_b ? k : n, Stride(ldb));
  if (trans_a && trans_b) cm.noalias() += alpha * (am.transpose() * bm.transpose());
  else if (trans_a) cm.noalias() += alpha * (am.transpose() * bm);
  else if (trans_b) cm.noalias() += alpha * (am * bm.transpose());
  else cm.noalias() += alpha * (am * bm);
}

void GemmSelectedK(int64_t m, int64_t n, const float* a, int64_t lda, const int32_t* k_index,
                   int64_t kn, const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
#ifdef DROPNET_GEMM_AVX512
  if (HaveAvx512()) {
    // The terms of Gemm over the full k that are not skipped, in the same order and the same
    // kKc-wide partial sums: skipped terms are zero products, so the result is bit-identical.
    std::vector<int64_t> bounds{0};  // compact ranges of each original kKc block
    for (int64_t i = 1; i <= kn; ++i) {
      if (i == kn || k_index[i] / kKc != k_index[i - 1] / kKc) bounds.push_back(i);
    }
    if (kn == 0) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
      return;
    }
    if (m <= kSmallM) {
      // The unpacked kernel reads the selected rows of B in place.
      kSmallKernels[m](n, bounds.data(), static_cast<int>(bounds.size()) - 1, k_index, 1.0f, a,
                       lda, 1, b, ldb, c, ldc, false);
      return;
    }
    thread_local std::vector<float> panel;
    panel.resize(int64_t{kKc} * kNr);
    for (int64_t n0 = 0; n0 < n; n0 += kNr) {
      const int nv = static_cast<int>(std::min<int64_t>(kNr, n - n0));
      for (size_t blk = 0; blk + 1 < bounds.size(); ++blk) {
        const int64_t s0 = bounds[blk], kc = bounds[blk + 1] - s0;
        float* p = panel.data();
        PackPanel(b, ldb, k_index, s0, kc, n0, nv, p);
        for (int64_t m0 = 0; m0 < m; m0 += kMr) {
          const int mr = static_cast<int>(std::min<int64_t>(kMr, m - m0));
          Kernel(mr, nv)(kc, a + m0 * lda + s0, lda, 1, p, c + m0 * ldc + n0, ldc, nv, blk > 0,
                         1.0f);
        }
      }
    }
    return;
  }
#endif
  Matrix rows(kn, n);
  for (int64_t i = 0; i < kn; ++i)
    rows.row(i) = Eigen::Map<const RowVector>(b + int64_t{k_index[i]} * ldb, n);
  Gemm(false, false, m, n, kn, 1.0f, a, lda, rows.data(), n, 0.0f, c, ldc);
}

#ifdef DROPNET_GEMM_AVX512
namespace {

// GatherColumns 16 columns at a time: each block's selected columns compressed in a register.
__attribute__((target("avx512f,popcnt"))) void GatherColumnsAvx512(const float* a, int64_t rows,
                                                                   int64_t cols,
                                                                   const int32_t* k_index,
                                                                   int64_t kn, float* out) {
  const int64_t blocks = (cols + 15) / 16;
  thread_local std::vector<__mmask16> selected;
  selected.assign(blocks, 0);
  // k_index ascends: each block's bits gather in a register.
  unsigned bits = 0;
  int64_t block = kn > 0 ? k_index[0] / 16 : 0;
  for (int64_t i = 0; i < kn; ++i) {
    if (k_index[i] / 16 != block) {
      selected[block] = static_cast<__mmask16>(bits);
      bits = 0;
      block = k_index[i] / 16;
    }
    bits |= 1u << (k_index[i] % 16);
  }
  if (kn > 0) selected[block] = static_cast<__mmask16>(bits);
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a + r * cols;
    float* o = out + r * kn;
    for (int64_t q = 0; q < blocks; ++q) {
      const __mmask16 m = selected[q];
      if (!m) continue;
      const __m512 v = _mm512_maskz_loadu_ps(LaneMask(cols - 16 * q), ar + 16 * q);
      const int count = __builtin_popcount(m);
      _mm512_mask_storeu_ps(o, LaneMask(count), _mm512_maskz_compress_ps(m, v));
      o += count;
    }
  }
}

}  // namespace
#endif  // DROPNET_GEMM_AVX512

void GatherColumns(const float* a, int64_t rows, int64_t cols, const int32_t* k_index, int64_t kn,
                   float* out) {
#ifdef DROPNET_GEMM_AVX512
  // A row or a few gather faster one by one than the masks take to build.
  if (HaveAvx512() && rows >= 4) {
    GatherColumnsAvx512(a, rows, cols, k_index, kn, out);
    return;
  }
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a + r * cols;
    float* o = out + r * kn;
    for (int64_t i = 0; i < kn; ++i) o[i] = ar[k_index[i]];
  }
}

// ---- Conv ----

Conv::Conv(const LayerConfig& config, const Shape& input, uint64_t init_seed)
    : Layer(config, input), g_(MakeGeometry(config, input)) {
  output_shape_ = OutputShape(g_, config.filters, false);
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

// ---- Pool ----

Pool::Pool(const LayerConfig& config, const Shape& input)
    : Layer(config, input), g_(MakeGeometry(config, input)) {
  max_ = config.type.rfind("max_pool", 0) == 0;
  output_shape_ = OutputShape(g_, g_.channels, config.type == "global_avg_pool");
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
      for (int c = 0; c < g_.channels; ++c) {
        const float* xc = xr + int64_t{c} * g_.height * g_.width;
        for (int oh = 0; oh < g_.out_height; ++oh) {
          const int h0 = oh * g_.stride_h - g_.pad_h;
          const int hs = std::max(h0, 0), he = std::min(h0 + g_.kernel_h, g_.height);
          for (int ow = 0; ow < g_.out_width; ++ow) {
            const int w0 = ow * g_.stride_w - g_.pad_w;
            const int ws = std::max(w0, 0), we = std::min(w0 + g_.kernel_w, g_.width);
            const int64_t o = c * out_positions + int64_t{oh} * g_.out_width + ow;
            if (max_) {
              // PyTorch's rule: the first maximum, and NaN wins.
              float best = -std::numeric_limits<float>::infinity();
              int64_t best_i = int64_t{c} * g_.height * g_.width + int64_t{hs} * g_.width + ws;
              for (int h = hs; h < he; ++h) {
                const float* xh = xc + int64_t{h} * g_.width;
                for (int w = ws; w < we; ++w) {
                  const float v = xh[w];
                  if (v > best || v != v) {
                    best = v;
                    best_i = int64_t{c} * g_.height * g_.width + int64_t{h} * g_.width + w;
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
          }
        }
      }
    }
  });
}

void Pool::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                    Matrix* dx) const {
  if (!dx) return;
  const int64_t n = dy.rows();
  const int64_t out_positions = g_.OutPositions();
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
      for (int c = 0; c < g_.channels; ++c) {
        float* dc = dr + int64_t{c} * g_.height * g_.width;
        for (int oh = 0; oh < g_.out_height; ++oh) {
          const int h0 = oh * g_.stride_h - g_.pad_h;
          const int hs = std::max(h0, 0), he = std::min(h0 + g_.kernel_h, g_.height);
          for (int ow = 0; ow < g_.out_width; ++ow) {
            const int w0 = ow * g_.stride_w - g_.pad_w;
            const int ws = std::max(w0, 0), we = std::min(w0 + g_.kernel_w, g_.width);
            const float v = gr[c * out_positions + int64_t{oh} * g_.out_width + ow] * inv_area;
            for (int h = hs; h < he; ++h)
              for (int w = ws; w < we; ++w) dc[int64_t{h} * g_.width + w] += v;
          }
        }
      }
    }
  });
}

}  // namespace dropnet::engine
