#include "server/engine/random.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <Random123/philox.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DROPNET_PHILOX_AVX512 1
// GCC 12 warns inside its own AVX-512 shift intrinsics (their "undefined" source operand).
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace dropnet::engine {

CounterRng::CounterRng(uint64_t seed, uint64_t stream, uint32_t layer, uint32_t row) {
  key_[0] = static_cast<uint32_t>(seed);
  key_[1] = static_cast<uint32_t>(seed >> 32);
  ctr_[0] = static_cast<uint32_t>(stream);
  ctr_[1] = static_cast<uint32_t>(stream >> 32) ^ (layer << 20);
  ctr_[2] = row;
}

void CounterRng::Block(uint32_t block, uint32_t out[4]) const {
  r123::Philox4x32 gen;
  r123::Philox4x32::ctr_type c = {{ctr_[0], ctr_[1], ctr_[2], block}};
  r123::Philox4x32::key_type k = {{key_[0], key_[1]}};
  auto r = gen(c, k);
  out[0] = r.v[0];
  out[1] = r.v[1];
  out[2] = r.v[2];
  out[3] = r.v[3];
}

#ifdef DROPNET_PHILOX_AVX512
namespace {

bool HavePhiloxAvx512() {
  static const bool have = __builtin_cpu_supports("avx512f");
  return have;
}

// Philox4x32-10 on 16 counters at once (blocks first .. first+15 of one generator), the same
// rounds as Random123's philox4x32. The words come out in element order: out[q] holds elements
// 16q .. 16q+15 (block b's word i is element 4b + i), transposed in registers.
__attribute__((target("avx512f"))) inline void PhiloxElements64(const uint32_t key[2],
                                                                const uint32_t ctr[3],
                                                                uint32_t first, __m512i out[4]) {
  // Two groups of eight blocks (first .. first+7 and first+8 .. first+15), one block per 64-bit
  // lane whose low 32 bits hold the word: vpmuludq gives each lane's full 64-bit product, whose
  // high half a vpshufd moves down. The high halves of the lanes are never read (vpmuludq takes
  // the low ones; xor works bit by bit), so they need no clearing.
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53u);
  const __m512i m1 = _mm512_set1_epi64(0xCD9E8D57u);
  __m512i a0 = _mm512_set1_epi32(static_cast<int>(ctr[0])), b0 = a0;
  __m512i a1 = _mm512_set1_epi32(static_cast<int>(ctr[1])), b1 = a1;
  __m512i a2 = _mm512_set1_epi32(static_cast<int>(ctr[2])), b2 = a2;
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  __m512i a3 = _mm512_add_epi64(_mm512_set1_epi64(first), lanes);
  __m512i b3 = _mm512_add_epi64(_mm512_set1_epi64(int64_t{first} + 8), lanes);
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const __m512i vk0 = _mm512_set1_epi32(static_cast<int>(k0));
    const __m512i vk1 = _mm512_set1_epi32(static_cast<int>(k1));
    const __m512i pa0 = _mm512_mul_epu32(m0, a0), pa2 = _mm512_mul_epu32(m1, a2);
    const __m512i pb0 = _mm512_mul_epu32(m0, b0), pb2 = _mm512_mul_epu32(m1, b2);
    // 0xB1 swaps the 32-bit halves of each lane; 0x96 is a ^ b ^ c.
    a0 = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(pa2, _MM_PERM_CDAB), a1, vk0, 0x96);
    a2 = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(pa0, _MM_PERM_CDAB), a3, vk1, 0x96);
    a1 = pa2;
    a3 = pa0;
    b0 = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(pb2, _MM_PERM_CDAB), b1, vk0, 0x96);
    b2 = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(pb0, _MM_PERM_CDAB), b3, vk1, 0x96);
    b1 = pb2;
    b3 = pb0;
  }
  // The low words of both groups, blocks first .. first+15 in lanes 0 .. 15.
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i c0 = _mm512_permutex2var_epi32(a0, even, b0);
  const __m512i c1 = _mm512_permutex2var_epi32(a1, even, b1);
  const __m512i c2 = _mm512_permutex2var_epi32(a2, even, b2);
  const __m512i c3 = _mm512_permutex2var_epi32(a3, even, b3);
  // Lane 4L + j of c_i is block 4L + j's word i. Within each 128-bit lane L, transpose 4 x 4:
  // u_j's lane L is then block 4L + j (its four words in order).
  const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
  const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  // Then the 4 x 4 of 128-bit lanes: out[q] = blocks 4q .. 4q+3 = lane q of u0, u1, u2, u3.
  const __m512i lo01 = _mm512_shuffle_i32x4(u0, u1, 0x44);
  const __m512i lo23 = _mm512_shuffle_i32x4(u2, u3, 0x44);
  const __m512i hi01 = _mm512_shuffle_i32x4(u0, u1, 0xEE);
  const __m512i hi23 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
  out[0] = _mm512_shuffle_i32x4(lo01, lo23, 0x88);
  out[1] = _mm512_shuffle_i32x4(lo01, lo23, 0xDD);
  out[2] = _mm512_shuffle_i32x4(hi01, hi23, 0x88);
  out[3] = _mm512_shuffle_i32x4(hi01, hi23, 0xDD);
}

__attribute__((target("avx512f"))) void PhiloxBlocks16(const uint32_t key[2], const uint32_t ctr[3],
                                                       uint32_t first, uint32_t* out) {
  __m512i w[4];
  PhiloxElements64(key, ctr, first, w);
  for (int q = 0; q < 4; ++q) _mm512_storeu_si512(out + 16 * q, w[q]);
}

// Keep for 64 elements from block `first` on (see CounterRng::Keep).
__attribute__((target("avx512f"))) void Keep64(const uint32_t key[2], const uint32_t ctr[3],
                                               uint32_t first, uint32_t threshold, float keep_value,
                                               const float* x, float* y, float* mask) {
  __m512i w[4];
  PhiloxElements64(key, ctr, first, w);
  const __m512i th = _mm512_set1_epi32(static_cast<int>(threshold));
  const __m512 keep = _mm512_set1_ps(keep_value);
  for (int q = 0; q < 4; ++q) {
    const __m512 m = _mm512_maskz_mov_ps(_mm512_cmpge_epu32_mask(w[q], th), keep);
    if (mask) _mm512_storeu_ps(mask + 16 * q, m);
    // A full product, as the scalar path: a dropped -3 gives -0 and a dropped NaN stays NaN.
    if (y) _mm512_storeu_ps(y + 16 * q, x ? _mm512_mul_ps(_mm512_loadu_ps(x + 16 * q), m) : m);
  }
}

}  // namespace
#endif  // DROPNET_PHILOX_AVX512

void CounterRng::Bits(uint32_t* out, int64_t n) const {
  uint32_t w[4];
  int64_t full = n / 4;
  int64_t b = 0;
#ifdef DROPNET_PHILOX_AVX512
  if (HavePhiloxAvx512()) {
    for (; b + 16 <= full; b += 16) {
      PhiloxBlocks16(key_, ctr_, static_cast<uint32_t>(b), out + 4 * b);
    }
  }
#endif
  for (; b < full; ++b) Block(static_cast<uint32_t>(b), out + 4 * b);
  if (n % 4) {
    Block(static_cast<uint32_t>(full), w);
    for (int64_t i = 0; i < n % 4; ++i) out[4 * full + i] = w[i];
  }
}

void CounterRng::Keep(uint32_t threshold, float keep_value, const float* x, float* y, float* mask,
                      int64_t n) const {
  int64_t j = 0;
#ifdef DROPNET_PHILOX_AVX512
  if (HavePhiloxAvx512()) {
    for (; j + 64 <= n; j += 64) {
      Keep64(key_, ctr_, static_cast<uint32_t>(j / 4), threshold, keep_value, x ? x + j : nullptr,
             y ? y + j : nullptr, mask ? mask + j : nullptr);
    }
  }
#endif
  uint32_t w[4];
  for (; j < n; j += 4) {
    Block(static_cast<uint32_t>(j / 4), w);
    for (int64_t i = j; i < std::min(n, j + 4); ++i) {
      // Branch-free (the comparison is a coin flip).
      const float m = static_cast<float>(w[i - j] >= threshold) * keep_value;
      if (mask) mask[i] = m;
      if (y) y[i] = x ? x[i] * m : m;
    }
  }
}

void CounterRng::Uniform(float* out, int64_t n) const {
  uint32_t w[4];
  for (int64_t i = 0; i < n; i += 4) {
    Block(static_cast<uint32_t>(i / 4), w);
    for (int64_t j = 0; j < 4 && i + j < n; ++j) {
      // 24 high bits: exactly representable, uniform on [0, 1).
      out[i + j] = static_cast<float>(w[j] >> 8) * 0x1.0p-24f;
    }
  }
}

void CounterRng::Normal(float* out, int64_t n) const {
  uint32_t w[4];
  constexpr double kTwoPi = 6.283185307179586;
  for (int64_t i = 0; i < n; i += 4) {
    Block(static_cast<uint32_t>(i / 4), w);
    for (int j = 0; j < 4; j += 2) {
      // u1 in (0, 1] so that log(u1) is finite.
      double u1 = (static_cast<double>(w[j]) + 1.0) * 0x1.0p-32;
      double u2 = static_cast<double>(w[j + 1]) * 0x1.0p-32;
      double r = std::sqrt(-2.0 * std::log(u1));
      if (i + j < n) out[i + j] = static_cast<float>(r * std::cos(kTwoPi * u2));
      if (i + j + 1 < n) out[i + j + 1] = static_cast<float>(r * std::sin(kTwoPi * u2));
    }
  }
}

uint32_t RowKey(const float* values, int64_t n) {
  uint64_t h = 0xCBF29CE484222325ULL ^ static_cast<uint64_t>(n);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof(bits));
    h = (h ^ bits) * 0x100000001B3ULL;  // FNV-1a over the words
  }
  return static_cast<uint32_t>(SplitMix64(h).Next() >> 32);  // mixed, so near rows spread out
}

double SplitMix64::Normal() {
  double u1 = (static_cast<double>(Next() >> 11) + 1.0) * 0x1.0p-53;
  double u2 = Uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace dropnet::engine
