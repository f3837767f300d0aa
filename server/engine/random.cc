#include "server/engine/random.h"

#include <cmath>

#include <Random123/philox.h>

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

void CounterRng::Bits(uint32_t* out, int64_t n) const {
  uint32_t w[4];
  int64_t full = n / 4;
  for (int64_t b = 0; b < full; ++b) Block(static_cast<uint32_t>(b), out + 4 * b);
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
