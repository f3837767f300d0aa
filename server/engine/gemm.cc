#include "server/engine/gemm.h"

#include <algorithm>
#include <array>
#include <bit>
#include <utility>
#include <vector>

#include "server/engine/thread_pool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DROPNET_GEMM_AVX512 1
#endif

namespace dropnet::engine {
namespace {

// Products with fewer multiply-adds run on one thread: the hand-off would cost more than it saves.
constexpr int64_t kMinParallel = int64_t{1} << 16;

}  // namespace

#ifdef DROPNET_GEMM_AVX512
namespace {

// A register-blocked GEMM for AVX-512, compiled for that target only and chosen at run time, so
// the binary stays portable. B is packed in panels of kKc x kNr; a block of up to kMr x kNr of C
// is kept in 2 * kMr zmm accumulators (24 of the 32 at kMr = 12) while A is broadcast element by
// element in place (any strides, so op(A) needs no copy): per k, two loads of B and one broadcast
// per row for two multiply-adds per row. The loops run k block outermost, then panels of B, then
// blocks of rows, so one k block of A stays in L2 across all the panels, and the rows are cut
// into blocks as even as kMr allows (100 rows: 9 blocks of 11 or 12, not 8 of 12 and a slow one
// of 4). Packing A as well (a scalar copy into k-major micro-panels) measured slower: the copy
// cost more than reading one stream instead of kMr saved.
// Each element of C is the sum over the kKc blocks, in order, of that block's products summed in
// k order (one fused multiply-add a term), times alpha and added to C in one fused multiply-add
// (stored, for the first block when C is not accumulated): the row and column blocking change no
// bit, which SmallMRows and GemmSelectedK rely on. Every kernel writes these steps as explicit
// FMA intrinsics, so the rounding does not depend on where the compiler contracts a mul and add.
constexpr int kMr = 12, kNr = 32, kKc = 256;

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
    __m512 r0, r1;
    if (accumulate) {
      r0 = _mm512_fmadd_ps(acc0[m], va, _mm512_maskz_loadu_ps(k0, cm));
      r1 = kHalf ? r0 : _mm512_fmadd_ps(acc1[m], va, _mm512_maskz_loadu_ps(k1, cm + 16));
    } else {
      r0 = _mm512_mul_ps(acc0[m], va);
      r1 = kHalf ? r0 : _mm512_mul_ps(acc1[m], va);
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

// Transposes the 16 x 16 block r in registers: r[i] becomes what was column i.
__attribute__((target("avx512f"))) inline void Transpose16(__m512* r) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of rows interleaved
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[i + q]: in each 128-bit lane, column 4 * lane + q of rows i..i+3.
  for (int i = 0; i < 16; i += 4) {
    const __m512d t0 = _mm512_castps_pd(t[i]), t1 = _mm512_castps_pd(t[i + 1]);
    const __m512d t2 = _mm512_castps_pd(t[i + 2]), t3 = _mm512_castps_pd(t[i + 3]);
    u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
  for (int q = 0; q < 4; ++q) {  // the four lanes of columns q, q + 4, q + 8 and q + 12 gathered
    const __m512 lo_ab = _mm512_shuffle_f32x4(u[q], u[q + 4], 0x88);
    const __m512 hi_ab = _mm512_shuffle_f32x4(u[q], u[q + 4], 0xdd);
    const __m512 lo_cd = _mm512_shuffle_f32x4(u[q + 8], u[q + 12], 0x88);
    const __m512 hi_cd = _mm512_shuffle_f32x4(u[q + 8], u[q + 12], 0xdd);
    r[q] = _mm512_shuffle_f32x4(lo_ab, lo_cd, 0x88);
    r[q + 8] = _mm512_shuffle_f32x4(lo_ab, lo_cd, 0xdd);
    r[q + 4] = _mm512_shuffle_f32x4(hi_ab, hi_cd, 0x88);
    r[q + 12] = _mm512_shuffle_f32x4(hi_ab, hi_cd, 0xdd);
  }
}

// The panel of B for columns n0..n0+nv and k0..k0+kc of op(B) when B is stored transposed (the
// backward pass's dY * W^T): blocks of 16 x 16 read as rows of B and transposed in registers (a
// scalar copy, one element a store, was 4% of a training step); the columns past nv are zero.
__attribute__((target("avx512f"))) void PackPanelTransposed(const float* b, int64_t ldb, int64_t k0,
                                                            int64_t kc, int64_t n0, int nv,
                                                            float* p) {
  for (int g = 0; g < kNr / 16; ++g) {
    const int cols = std::clamp(nv - 16 * g, 0, 16);
    for (int64_t kk = 0; kk < kc; kk += 16) {
      const int64_t depth = std::min<int64_t>(16, kc - kk);
      const __mmask16 in_block = LaneMask(depth);
      __m512 r[16];
      for (int j = 0; j < 16; ++j)
        r[j] = j < cols ? _mm512_maskz_loadu_ps(in_block, b + (n0 + 16 * g + j) * ldb + k0 + kk)
                        : _mm512_setzero_ps();
      Transpose16(r);
      for (int64_t i = 0; i < depth; ++i) _mm512_storeu_ps(p + (kk + i) * kNr + 16 * g, r[i]);
    }
  }
}

using KernelFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, float*, int64_t,
                          int, bool, float);

template <bool kHalf, int... kRows>
constexpr std::array<KernelFn, kMr + 1> KernelTable(std::integer_sequence<int, kRows...> /*rows*/) {
  return {nullptr, MicroKernel<kRows + 1, kHalf>...};
}
constexpr auto kFullKernels = KernelTable<false>(std::make_integer_sequence<int, kMr>{});
constexpr auto kHalfKernels = KernelTable<true>(std::make_integer_sequence<int, kMr>{});

// The kernel for mr rows of a panel with nv valid columns: a panel of at most 16 (a narrow
// product, such as a 10-class head, or the last panel) computes half the accumulators.
KernelFn Kernel(int mr, int nv) { return nv <= 16 ? kHalfKernels[mr] : kFullKernels[mr]; }

// C (m x n) = alpha * op(A) * op(B) (+ C when accumulate), k in the blocks bounds[0..blocks] of
// op(A)'s columns (element (r, s) at a[r * a_rs + s * a_cs]); op(B)'s row for A's column s is
// k_index[s] when given, else s, and op(B) is B transposed when trans_b.
void BlockedProduct(int64_t m, int64_t n, const int64_t* bounds, int blocks, const int32_t* k_index,
                    float alpha, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                    int64_t ldb, bool trans_b, float* c, int64_t ldc, bool accumulate) {
  const int64_t row_blocks = (m + kMr - 1) / kMr;
  thread_local std::vector<float> panel;
  panel.resize(int64_t{kKc} * kNr);
  for (int blk = 0; blk < blocks; ++blk) {
    const int64_t k0 = bounds[blk], kc = bounds[blk + 1] - k0;
    const bool add = accumulate || blk > 0;
    for (int64_t n0 = 0; n0 < n; n0 += kNr) {
      const int nv = static_cast<int>(std::min<int64_t>(kNr, n - n0));
      if (trans_b)
        PackPanelTransposed(b, ldb, k0, kc, n0, nv, panel.data());
      else
        PackPanel(b, ldb, k_index, k0, kc, n0, nv, panel.data());
      for (int64_t i = 0; i < row_blocks; ++i) {  // blocks differ by one row at most
        const int64_t r0 = i * m / row_blocks, r1 = (i + 1) * m / row_blocks;
        const int mr = static_cast<int>(r1 - r0);
        Kernel(mr, nv)(kc, a + r0 * a_rs + k0 * a_cs, a_rs, a_cs, panel.data(), c + r0 * ldc + n0,
                       ldc, nv, add, alpha);
      }
    }
  }
}

bool HaveAvx512() {
  static const bool have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return have;
}

// Up to kSmallM rows of C from B in place, without packing: for a product of one or a few rows
// (eval at batch 1) packing B would copy all of it for a single use. Each element is summed in
// the same order as by MicroKernel (k in chunks of kKc, each chunk added to C), so a row's result
// does not depend on which path computed it.
constexpr int kSmallM = 4;

// One row of C, columns n0..n0+nv (16 * (NV - 1) < nv <= 16 * NV) of a strip: NV independent
// accumulators, one per 16 columns, so the multiply-adds of one k step do not wait on each other,
// and each row of B is read as one contiguous run of up to 1 KiB (a whole row of a thread's part
// of a 512-wide layer), which the hardware prefetchers follow better than 256-byte pieces.
template <int NV>
__attribute__((target("avx512f,fma"))) void OneRowStrip(const int64_t* bounds, int blocks,
                                                        const int32_t* k_index, float alpha,
                                                        const float* a, int64_t a_cs,
                                                        const float* b, int64_t ldb, float* c,
                                                        int64_t nv, bool accumulate) {
  const __mmask16 last = LaneMask(nv - 16 * (NV - 1));
  const __m512 va = _mm512_set1_ps(alpha);
  for (int blk = 0; blk < blocks; ++blk) {
    __m512 acc[NV];
    for (int j = 0; j < NV; ++j) acc[j] = _mm512_setzero_ps();
    const int64_t k_end = bounds[blk + 1];
    for (int64_t kk = bounds[blk]; kk < k_end; ++kk) {
      const float* bk = b + (k_index ? int64_t{k_index[kk]} : kk) * ldb;
      const __m512 av = _mm512_set1_ps(a[kk * a_cs]);
      for (int j = 0; j + 1 < NV; ++j)
        acc[j] = _mm512_fmadd_ps(av, _mm512_loadu_ps(bk + 16 * j), acc[j]);
      acc[NV - 1] =
          _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(last, bk + 16 * (NV - 1)), acc[NV - 1]);
    }
    const bool add = accumulate || blk > 0;
    for (int j = 0; j < NV; ++j) {
      const __mmask16 mask = j + 1 < NV ? __mmask16{0xFFFF} : last;
      const __m512 r = add ? _mm512_fmadd_ps(acc[j], va, _mm512_maskz_loadu_ps(mask, c + 16 * j))
                           : _mm512_mul_ps(acc[j], va);
      _mm512_mask_storeu_ps(c + 16 * j, mask, r);
    }
  }
}

using StripFn = void (*)(const int64_t*, int, const int32_t*, float, const float*, int64_t,
                         const float*, int64_t, float*, int64_t, bool);
constexpr int kOneRowVecs = 16;  // 256 columns a pass: 16 of the 32 zmm registers accumulate

template <int... kVecs>
constexpr std::array<StripFn, kOneRowVecs + 1> StripTable(
    std::integer_sequence<int, kVecs...> /*vecs*/) {
  return {nullptr, OneRowStrip<kVecs + 1>...};
}
constexpr auto kOneRowStrips = StripTable(std::make_integer_sequence<int, kOneRowVecs>{});

template <int MR>
__attribute__((target("avx512f,fma"))) void SmallMRows(int64_t n, const int64_t* bounds, int blocks,
                                                       const int32_t* k_index, float alpha,
                                                       const float* a, int64_t a_rs, int64_t a_cs,
                                                       const float* b, int64_t ldb, float* c,
                                                       int64_t ldc, bool accumulate) {
  if constexpr (MR == 1) {
    for (int64_t n0 = 0; n0 < n; n0 += 16 * kOneRowVecs) {
      const int64_t nv = std::min<int64_t>(16 * kOneRowVecs, n - n0);
      kOneRowStrips[(nv + 15) / 16](bounds, blocks, k_index, alpha, a, a_cs, b + n0, ldb, c + n0,
                                    nv, accumulate);
    }
    return;
  }
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
          const __m512 r =
              add ? _mm512_fmadd_ps(acc[m][j], va, _mm512_maskz_loadu_ps(mask[j], cm + 16 * j))
                  : _mm512_mul_ps(acc[m][j], va);
          _mm512_mask_storeu_ps(cm + 16 * j, mask[j], r);
        }
      }
    }
  }
}

using SmallFn = void (*)(int64_t, const int64_t*, int, const int32_t*, float, const float*, int64_t,
                         int64_t, const float*, int64_t, float*, int64_t, bool);
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
  thread_local std::vector<int64_t> bounds;
  bounds.clear();
  for (int64_t k0 = 0; k0 < k; k0 += kKc) bounds.push_back(k0);
  bounds.push_back(k);
  if (m <= kSmallM && !trans_b) {
    kSmallKernels[m](n, bounds.data(), static_cast<int>(bounds.size()) - 1, nullptr, alpha, a, a_rs,
                     a_cs, b, ldb, c, ldc, beta == 1.0f);
    return;
  }
  BlockedProduct(m, n, bounds.data(), static_cast<int>(bounds.size()) - 1, nullptr, alpha, a, a_rs,
                 a_cs, b, ldb, trans_b, c, ldc, beta == 1.0f);
}

// Lists the columns of a (rows x cols, row-major) that hold a value other than +0 or -0 in some
// row in index (room for cols), ascending, and returns their count: sixteen columns a step, their
// rows OR-ed (sign bit cleared) and the used ones compressed in a register, with no branch on
// the data (whether a pixel or a unit is zero follows no pattern a branch predicts).
__attribute__((target("avx512f,popcnt"))) int64_t UsedColumnsAvx512(const float* a, int64_t rows,
                                                                    int64_t cols, int32_t* index) {
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  __m512i ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t kn = 0;
  for (int64_t j = 0; j < cols; j += 16) {
    const __mmask16 valid = LaneMask(cols - j);
    __m512i bits = _mm512_setzero_si512();
    for (int64_t r = 0; r < rows; ++r)
      bits = _mm512_or_si512(bits, _mm512_maskz_loadu_epi32(valid, a + r * cols + j));
    const __mmask16 used = _mm512_test_epi32_mask(bits, magnitude);
    const int count = __builtin_popcount(used);
    _mm512_mask_storeu_epi32(index + kn, LaneMask(count), _mm512_maskz_compress_epi32(used, ids));
    kn += count;
    ids = _mm512_add_epi32(ids, _mm512_set1_epi32(16));
  }
  return kn;
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
  if (beta == 0.0f)
    cm.setZero();
  else if (beta != 1.0f)
    cm *= beta;
  if (k <= 0) return;
  ConstMap am(a, trans_a ? k : m, trans_a ? m : k, Stride(lda));
  ConstMap bm(b, trans_b ? n : k, trans_b ? k : n, Stride(ldb));
  if (trans_a && trans_b)
    cm.noalias() += alpha * (am.transpose() * bm.transpose());
  else if (trans_a)
    cm.noalias() += alpha * (am.transpose() * bm);
  else if (trans_b)
    cm.noalias() += alpha * (am * bm.transpose());
  else
    cm.noalias() += alpha * (am * bm);
}

void GemmSelectedK(int64_t m, int64_t n, const float* a, int64_t lda, const int32_t* k_index,
                   int64_t kn, const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
#ifdef DROPNET_GEMM_AVX512
  if (HaveAvx512()) {
    // The terms of Gemm over the full k that are not skipped, in the same order and the same
    // kKc-wide partial sums: skipped terms are zero products, so the result is bit-identical.
    // The compact ranges of each original kKc block that holds a selected term, found by a
    // binary search per block boundary (k_index ascends).
    std::vector<int64_t> bounds{0};
    for (int64_t i = 0; i < kn;) {
      const int32_t block_end = (k_index[i] / kKc + 1) * kKc;
      i = std::lower_bound(k_index + i, k_index + kn, block_end) - k_index;
      bounds.push_back(i);
    }
    if (kn == 0) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
      return;
    }
    if (m <= kSmallM) {
      // The unpacked kernel reads the selected rows of B in place.
      kSmallKernels[m](n, bounds.data(), static_cast<int>(bounds.size()) - 1, k_index, 1.0f, a, lda,
                       1, b, ldb, c, ldc, false);
      return;
    }
    BlockedProduct(m, n, bounds.data(), static_cast<int>(bounds.size()) - 1, k_index, 1.0f, a, lda,
                   1, b, ldb, false, c, ldc, false);
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

void MatMul(const Matrix& a, bool transpose_a, const Matrix& b, bool transpose_b, Matrix* c,
            int threads, bool accumulate) {
  const int64_t rows = transpose_a ? a.cols() : a.rows();
  const int64_t inner = transpose_a ? a.rows() : a.cols();
  const int64_t cols = transpose_b ? b.rows() : b.cols();
  const int64_t inner_b = transpose_b ? b.cols() : b.rows();
  if (inner != inner_b) throw InvalidArgument("MatMul: inner dimensions differ");
  if (!accumulate) c->resize(rows, cols);
  // Small products are not worth a hand-off.
  if (rows * cols * inner < kMinParallel) threads = 1;
  if (FastGemmAvailable()) {
    // The AVX-512 kernel: each element's sum runs in the same order whatever the row
    // or column range, so the thread count does not change the result.
    if (cols >= 64 * threads && (rows < 8 * threads || rows <= cols)) {
      // Few rows (eval at small batch), or a right factor at least as wide as the product is
      // tall: split the columns, in multiples of 64, so each thread packs and streams only its
      // own part of B (which, for small batches, then stays in that core's cache between calls).
      const int64_t blocks = (cols + 63) / 64;
      ParallelFor(blocks, threads, [&](int64_t b0, int64_t b1) {
        const int64_t c0 = b0 * 64, c1 = std::min(cols, b1 * 64);
        const float* bp = transpose_b ? b.data() + c0 * b.cols() : b.data() + c0;
        Gemm(transpose_a, transpose_b, rows, c1 - c0, inner, 1.0f, a.data(), a.cols(), bp, b.cols(),
             accumulate ? 1.0f : 0.0f, c->data() + c0, cols);
      });
      return;
    }
    ParallelFor(rows, threads, [&](int64_t r0, int64_t r1) {
      const float* a0 = transpose_a ? a.data() + r0 : a.data() + r0 * a.cols();
      Gemm(transpose_a, transpose_b, r1 - r0, cols, inner, 1.0f, a0, a.cols(), b.data(), b.cols(),
           accumulate ? 1.0f : 0.0f, c->data() + r0 * cols, cols);
    });
    return;
  }
  ParallelFor(rows, threads, [&](int64_t r0, int64_t r1) {
    auto out = c->middleRows(r0, r1 - r0);
    const int64_t nr = r1 - r0;
    auto run = [&](const auto& lhs) {
      if (transpose_b) {
        if (accumulate)
          out.noalias() += lhs * b.transpose();
        else
          out.noalias() = lhs * b.transpose();
      } else {
        if (accumulate)
          out.noalias() += lhs * b;
        else
          out.noalias() = lhs * b;
      }
    };
    if (transpose_a)
      run(a.middleCols(r0, nr).transpose());
    else
      run(a.middleRows(r0, nr));
  });
}

namespace {

// Lists in index the columns of a that hold a value other than +0 or -0 in some row; false (the
// list unfinished) when more than three quarters do, as skipping the rest is then not worth it.
// Needs FastGemmAvailable().
bool ListUsedColumns(const Matrix& a, std::vector<int32_t>* index) {
  const int64_t rows = a.rows(), inner = a.cols();
#ifdef DROPNET_GEMM_AVX512
  if (rows <= 8) {
    index->resize(inner);
    const int64_t kn = UsedColumnsAvx512(a.data(), rows, inner, index->data());
    index->resize(kn);
    return kn * 4 <= inner * 3;
  }
#endif
  // OR the bits of the rows (sign bit cleared), eight rows at a time, and stop as soon as fewer
  // than a quarter of the columns can still be all zero.
  thread_local std::vector<uint32_t> used;
  used.assign(inner, 0);
  uint32_t* u = used.data();
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int64_t r1 = std::min(rows, r0 + 8);
    for (int64_t r = r0; r < r1; ++r) {
      const float* ar = a.row(r).data();
      for (int64_t j = 0; j < inner; ++j) u[j] |= std::bit_cast<uint32_t>(ar[j]) & 0x7fffffffu;
    }
    int64_t used_count = 0;
    for (int64_t j = 0; j < inner; ++j) used_count += u[j] != 0;
    if (used_count * 4 > inner * 3) return false;
  }
  // Branch-free: whether a pixel or a unit is zero follows no pattern a branch predicts.
  index->resize(inner);
  int64_t kn = 0;
  for (int64_t j = 0; j < inner; ++j) {
    (*index)[kn] = static_cast<int32_t>(j);
    kn += u[j] != 0;
  }
  index->resize(kn);
  return true;
}

}  // namespace

void MatMulSkippingZeroColumns(const Matrix& a, const Matrix& b, Matrix* c, int threads) {
  const int64_t rows = a.rows(), inner = a.cols(), cols = b.cols();
  if (inner != b.rows()) throw InvalidArgument("MatMul: inner dimensions differ");
  // A column is used when any row holds a value other than +0 or -0 there.
  std::vector<int32_t> index;
  const bool worth_it = FastGemmAvailable() && ListUsedColumns(a, &index);
  if (!worth_it) {
    MatMul(a, false, b, false, c, threads);
    return;
  }
  const int64_t kn = static_cast<int64_t>(index.size());
  Matrix packed(rows, kn);
  GatherColumns(a.data(), rows, inner, index.data(), kn, packed.data());
  c->resize(rows, cols);
  if (rows * cols * kn < kMinParallel) threads = 1;
  if (cols >= 64 * threads && (rows < 8 * threads || rows <= cols)) {
    const int64_t blocks = (cols + 63) / 64;
    ParallelFor(blocks, threads, [&](int64_t b0, int64_t b1) {
      const int64_t c0 = b0 * 64, c1 = std::min(cols, b1 * 64);
      GemmSelectedK(rows, c1 - c0, packed.data(), kn, index.data(), kn, b.data() + c0, cols,
                    c->data() + c0, cols);
    });
    return;
  }
  ParallelFor(rows, threads, [&](int64_t r0, int64_t r1) {
    GemmSelectedK(r1 - r0, cols, packed.data() + r0 * kn, kn, index.data(), kn, b.data(), cols,
                  c->data() + r0 * cols, cols);
  });
}

}  // namespace dropnet::engine
