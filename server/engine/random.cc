#include "server/engine/random.h"

#include <cmath>

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

// The hi and lo 32 bits of m * c for each 32-bit lane. (A function of its own: clang does not
// give a lambda the target of the function it is written in.)
__attribute__((target("avx512f"))) inline void MulHiLo(__m512i m, __m512i c, __m512i* hi,
                                                       __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(m, c);
  const __m512i odd = _mm512_mul_epu32(m, _mm512_srli_epi64(c, 32));
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// Philox4x32-10 on 16 counters at once (blocks first .. first+15 of one generator), the same
// rounds as Random123's philox4x32: each lane's 64-bit products come from two vpmuludq.
__attribute__((target("avx512f"))) void PhiloxBlocks16(const uint32_t key[2],
                                                       const uint32_t ctr[3], uint32_t first,
                                                       uint32_t* out) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  __m512i c0 = _mm512_set1_epi32(static_cast<int>(ctr[0]));
  __m512i c1 = _mm512_set1_epi32(static_cast<int>(ctr[1]));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(ctr[2]));
  __m512i c3 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first)),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                  14, 15));
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    __m512i hi0, lo0, hi1, lo1;
    MulHiLo(m0, c0, &hi0, &lo0);
    MulHiLo(m1, c2, &hi1, &lo1);
    const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1),
                                        _mm512_set1_epi32(static_cast<int>(k0)));
    const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3),
                                        _mm512_set1_epi32(static_cast<int>(k1)));
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  alignas(64) uint32_t w[4][16];
  _mm512_store_si512(w[0], c0);
  _mm512_store_si512(w[1], c1);
  _mm512_store_si512(w[2], c2);
  _mm512_store_si512(w[3], c3);
  for (int b = 0; b < 16; ++b) {
    out[4 * b] = w[0][b];
    out[4 * b + 1] = w[1][b];
    out[4 * b + 2] = w[2][b];
    out[4 * b + 3] = w[3][b];
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
    for (; b + 16 <= full; b += 16) PhiloxBlocks16(key_, ctr_, static_cast<uint32_t>(b), out + 4 * b);
  }
#endif
  for (; b < full; ++b) Block(static_cast<uint32_t>(b), out + 4 * b);
  if (n % 4) {
    Block(static_cast<uint32_t>(full), w);
    for (int64_t i = 0; i < n % 4; ++i) out[4 * full + i] = w[i];
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

double SplitMix64::Normal() {
  double u1 = (static_cast<double>(Next() >> 11) + 1.0) * 0x1.0p-53;
  double u2 = Uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace dropnet::engine
