// Tests for the counter-based generator of random.h: Philox4x32-10 known answers, determinism,
// the distribution of uniforms and normals, independence of streams, and the row -> stream map
// of RowRng that makes masks independent of batching and chunking.
#include "server/engine/random.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include <gtest/gtest.h>

namespace dropnet::engine {
namespace {

// Moments of a sample, accumulated in double.
struct Moments {
  double mean = 0;
  double var = 0;       // biased (1/n) central second moment
  double kurtosis = 0;  // m4 / m2^2
};

Moments ComputeMoments(const std::vector<float>& v) {
  Moments m;
  const double n = static_cast<double>(v.size());
  for (float x : v) m.mean += x;
  m.mean /= n;
  double m2 = 0, m4 = 0;
  for (float x : v) {
    const double d = x - m.mean;
    m2 += d * d;
    m4 += d * d * d * d;
  }
  m.var = m2 / n;
  m.kurtosis = (m4 / n) / (m.var * m.var);
  return m;
}

// Draws `rows` rows of `cols` elements from consecutive rows of one stream.
std::vector<float> DrawUniform(uint64_t seed, uint64_t stream, uint32_t layer, int rows, int cols) {
  std::vector<float> out(static_cast<size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r) {
    CounterRng(seed, stream, layer, static_cast<uint32_t>(r)).Uniform(out.data() + r * cols, cols);
  }
  return out;
}

std::vector<float> DrawNormal(uint64_t seed, uint64_t stream, uint32_t layer, int rows, int cols) {
  std::vector<float> out(static_cast<size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r) {
    CounterRng(seed, stream, layer, static_cast<uint32_t>(r)).Normal(out.data() + r * cols, cols);
  }
  return out;
}

std::vector<uint32_t> DrawBits(const CounterRng& rng, int64_t n) {
  std::vector<uint32_t> out(n);
  rng.Bits(out.data(), n);
  return out;
}

// Philox4x32-10 known-answer vectors from Random123's kat_vectors. CounterRng places
// (stream low, stream high ^ layer << 20, row, block) in the counter and the seed in the key.
TEST(CounterRngTest, MatchesPhiloxKnownAnswers) {
  uint32_t out[4];
  CounterRng(0, 0, 0, 0).Block(0, out);
  EXPECT_EQ(out[0], 0x6627e8d5u);
  EXPECT_EQ(out[1], 0xe169c58du);
  EXPECT_EQ(out[2], 0xbc57ac4cu);
  EXPECT_EQ(out[3], 0x9b00dbd8u);

  CounterRng(~0ULL, ~0ULL, 0, 0xffffffffu).Block(0xffffffffu, out);
  EXPECT_EQ(out[0], 0x408f276du);
  EXPECT_EQ(out[1], 0x41c83b0eu);
  EXPECT_EQ(out[2], 0xa20bc7c6u);
  EXPECT_EQ(out[3], 0x6d5451fdu);

  CounterRng(0x299f31d0a4093822ULL, 0x85a308d3243f6a88ULL, 0, 0x13198a2eu).Block(0x03707344u, out);
  EXPECT_EQ(out[0], 0xd16cfe09u);
  EXPECT_EQ(out[1], 0x94fdccebu);
  EXPECT_EQ(out[2], 0x5001e420u);
  EXPECT_EQ(out[3], 0x24126ea1u);
}

// Bits runs 16 blocks at a time (vectorised where the CPU allows) and the rest one by one: every
// length, and counters near the top of their range, give exactly the words of Block.
TEST(CounterRngTest, BitsMatchesBlockForEveryLength) {
  for (const CounterRng& rng : {CounterRng(5, 1, 2, 3), CounterRng(~0ULL, ~0ULL, 4095, ~0u),
                                CounterRng(0x299f31d0a4093822ULL, 77, 9, 0x13198a2eu)}) {
    for (int64_t n : {0, 1, 3, 4, 5, 63, 64, 65, 67, 127, 128, 129, 255, 256, 511, 512, 1000}) {
      const std::vector<uint32_t> bits = DrawBits(rng, n);
      for (int64_t i = 0; i < n; ++i) {
        uint32_t block[4];
        rng.Block(static_cast<uint32_t>(i / 4), block);
        ASSERT_EQ(bits[i], block[i % 4]) << "n " << n << " element " << i;
      }
    }
  }
}

// Keep draws 64 elements at a time (vectorised where the CPU allows) and the rest by blocks:
// every length gives m = keep_value exactly where the element's word is >= threshold, else 0,
// into the mask and into y = x * m (NaN and negative inputs included: a product, not a select).
TEST(CounterRngTest, KeepMatchesBlockForEveryLength) {
  const CounterRng rng(0x299f31d0a4093822ULL, 77, 9, 0x13198a2eu);
  for (const double p : {0.1, 0.5, 0.9}) {
    const auto threshold = static_cast<uint32_t>(std::ldexp(p, 32));
    const float keep = static_cast<float>(1.0 / (1.0 - p));
    for (int64_t n : {0, 1, 3, 5, 63, 64, 65, 130, 511, 512, 1000}) {
      std::vector<float> x(n), y(n, 7.0f), mask(n, 7.0f), y_only(n, 7.0f);
      for (int64_t i = 0; i < n; ++i) x[i] = i % 7 == 3 ? NAN : static_cast<float>(i % 5) - 2.5f;
      rng.Keep(threshold, keep, x.data(), y.data(), mask.data(), n);
      rng.Keep(threshold, keep, nullptr, y_only.data(), nullptr, n);
      int64_t kept = 0;
      for (int64_t i = 0; i < n; ++i) {
        uint32_t block[4];
        rng.Block(static_cast<uint32_t>(i / 4), block);
        const float m = block[i % 4] >= threshold ? keep : 0.0f;
        kept += m != 0.0f;
        ASSERT_EQ(mask[i], m) << "p " << p << " n " << n << " element " << i;
        ASSERT_EQ(y_only[i], m) << "p " << p << " n " << n << " element " << i;
        const float want = x[i] * m;
        if (std::isnan(want)) {
          ASSERT_TRUE(std::isnan(y[i])) << "element " << i;
        } else {
          ASSERT_EQ(std::bit_cast<uint32_t>(y[i]), std::bit_cast<uint32_t>(want))
              << "element " << i;
        }
      }
      if (n == 1000) {
        // Binomial(1000, 1 - p): within 5 standard deviations of its mean.
        const double sd = std::sqrt(1000 * p * (1 - p));
        EXPECT_NEAR(kept, 1000 * (1 - p), 5 * sd) << "p " << p;
      }
    }
  }
}

TEST(CounterRngTest, SameAddressGivesSameNumbers) {
  const CounterRng a(42, 7, 3, 11), b(42, 7, 3, 11);
  EXPECT_EQ(DrawBits(a, 37), DrawBits(b, 37));
  std::vector<float> ua(37), ub(37), na(37), nb(37);
  a.Uniform(ua.data(), 37);
  b.Uniform(ub.data(), 37);
  a.Normal(na.data(), 37);
  b.Normal(nb.data(), 37);
  EXPECT_EQ(ua, ub);
  EXPECT_EQ(na, nb);
  // Calling again on the same object gives the same numbers: the generator has no state.
  std::vector<float> again(37);
  a.Uniform(again.data(), 37);
  EXPECT_EQ(again, ua);
}

TEST(CounterRngTest, ElementsAreAddressedByIndex) {
  const CounterRng rng(5, 1, 2, 3);
  // Bits for element i come from word i % 4 of block i / 4.
  const std::vector<uint32_t> bits = DrawBits(rng, 23);
  for (uint32_t b = 0; b < 6; ++b) {
    uint32_t block[4];
    rng.Block(b, block);
    for (int j = 0; j < 4 && 4 * b + j < 23; ++j) EXPECT_EQ(bits[4 * b + j], block[j]);
  }
  // A shorter fill is a prefix of a longer one (also for lengths that are not multiples of 4).
  for (int n : {1, 2, 3, 5, 9}) {
    std::vector<uint32_t> short_bits = DrawBits(rng, n);
    EXPECT_TRUE(std::equal(short_bits.begin(), short_bits.end(), bits.begin())) << n;
    std::vector<float> u_short(n), u_long(23), n_short(n), n_long(23);
    rng.Uniform(u_short.data(), n);
    rng.Uniform(u_long.data(), 23);
    rng.Normal(n_short.data(), n);
    rng.Normal(n_long.data(), 23);
    EXPECT_TRUE(std::equal(u_short.begin(), u_short.end(), u_long.begin())) << n;
    EXPECT_TRUE(std::equal(n_short.begin(), n_short.end(), n_long.begin())) << n;
  }
  // Uniforms are the 24 high bits of the words.
  std::vector<float> u(23);
  rng.Uniform(u.data(), 23);
  for (int i = 0; i < 23; ++i) EXPECT_EQ(u[i], static_cast<float>(bits[i] >> 8) * 0x1.0p-24f);
}

TEST(CounterRngTest, UniformIsInUnitIntervalWithRightMoments) {
  const std::vector<float> u = DrawUniform(2024, 3, 1, 400, 500);  // 200k draws
  const double n = static_cast<double>(u.size());
  for (float x : u) {
    ASSERT_GE(x, 0.0f);
    ASSERT_LT(x, 1.0f);
  }
  const Moments m = ComputeMoments(u);
  // U(0,1): mean 1/2, variance 1/12, Var[sample variance] ~ (mu4 - sigma^4)/n with mu4 = 1/80.
  EXPECT_NEAR(m.mean, 0.5, 5.0 * std::sqrt(1.0 / 12.0 / n));
  EXPECT_NEAR(m.var, 1.0 / 12.0, 5.0 * std::sqrt((1.0 / 80.0 - 1.0 / 144.0) / n));

  // 20 equal bins: chi-square with 19 degrees of freedom (mean 19, sd sqrt(38)).
  constexpr int kBins = 20;
  std::vector<double> counts(kBins, 0.0);
  for (float x : u) counts[std::min(kBins - 1, static_cast<int>(x * kBins))] += 1;
  double chi2 = 0;
  const double expected = n / kBins;
  for (double c : counts) chi2 += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi2, 19.0 + 5.0 * std::sqrt(38.0));
}

TEST(CounterRngTest, NormalHasMeanZeroVarianceOne) {
  const std::vector<float> z = DrawNormal(77, 0, 4, 400, 500);  // 200k draws
  const double n = static_cast<double>(z.size());
  for (float x : z) ASSERT_TRUE(std::isfinite(x));
  const Moments m = ComputeMoments(z);
  EXPECT_NEAR(m.mean, 0.0, 5.0 / std::sqrt(n));
  EXPECT_NEAR(m.var, 1.0, 5.0 * std::sqrt(2.0 / n));
  // Sample kurtosis of a normal: 3, with standard error ~ sqrt(24/n).
  EXPECT_NEAR(m.kurtosis, 3.0, 5.0 * std::sqrt(24.0 / n));
  // P(|Z| < 1) = 0.682689..., a binomial proportion.
  double inside = 0;
  for (float x : z) inside += std::abs(x) < 1.0f;
  const double p = 0.6826894921370859;
  EXPECT_NEAR(inside / n, p, 5.0 * std::sqrt(p * (1 - p) / n));

  // Box-Muller makes each pair from one (u1, u2): the two values must still be independent.
  // For independent standard normals, z0 z1 has variance 1 and z0^2 z1^2 - 1 variance 8.
  double cross = 0, cross_sq = 0;
  const double pairs = n / 2;
  for (size_t i = 0; i + 1 < z.size(); i += 2) {
    cross += static_cast<double>(z[i]) * z[i + 1];
    cross_sq += static_cast<double>(z[i]) * z[i] * z[i + 1] * z[i + 1];
  }
  EXPECT_NEAR(cross / pairs, 0.0, 5.0 / std::sqrt(pairs));
  EXPECT_NEAR(cross_sq / pairs, 1.0, 5.0 * std::sqrt(8.0 / pairs));
}

// Pearson correlation of two equally long samples.
double Correlation(const std::vector<float>& a, const std::vector<float>& b) {
  const Moments ma = ComputeMoments(a), mb = ComputeMoments(b);
  double cov = 0;
  for (size_t i = 0; i < a.size(); ++i) cov += (a[i] - ma.mean) * (b[i] - mb.mean);
  cov /= static_cast<double>(a.size());
  return cov / std::sqrt(ma.var * mb.var);
}

TEST(CounterRngTest, DifferentAddressesGiveDifferentStreams) {
  const std::vector<uint32_t> base = DrawBits(CounterRng(1, 2, 3, 4), 64);
  const std::vector<std::vector<uint32_t>> others = {
      DrawBits(CounterRng(9, 2, 3, 4), 64),               // seed
      DrawBits(CounterRng(1ULL << 32 | 1, 2, 3, 4), 64),  // high seed word
      DrawBits(CounterRng(1, 5, 3, 4), 64),               // stream
      DrawBits(CounterRng(1, 2 | 1ULL << 32, 3, 4), 64),  // high stream word
      DrawBits(CounterRng(1, 2, 0, 4), 64),               // layer
      DrawBits(CounterRng(1, 2, 3, 5), 64),               // row
  };
  for (size_t k = 0; k < others.size(); ++k) {
    // Two independent streams agree on a 32-bit word with probability 2^-32.
    int equal = 0;
    for (int i = 0; i < 64; ++i) equal += others[k][i] == base[i];
    EXPECT_EQ(equal, 0) << "address variant " << k;
  }

  // No two addresses on a grid of (stream, layer, row) share their first 64 bits.
  std::set<uint64_t> seen;
  for (uint64_t stream = 0; stream < 8; ++stream) {
    for (uint32_t layer = 0; layer < 8; ++layer) {
      for (uint32_t row = 0; row < 8; ++row) {
        uint32_t w[4];
        CounterRng(123, stream, layer, row).Block(0, w);
        seen.insert(static_cast<uint64_t>(w[0]) << 32 | w[1]);
      }
    }
  }
  EXPECT_EQ(seen.size(), 8u * 8u * 8u);

  // Neighbouring streams, layers and rows are uncorrelated: |r| within 5/sqrt(n).
  const int kRows = 200, kCols = 500;
  const double bound = 5.0 / std::sqrt(static_cast<double>(kRows * kCols));
  const std::vector<float> u = DrawUniform(11, 0, 0, kRows, kCols);
  EXPECT_LT(std::abs(Correlation(u, DrawUniform(11, 1, 0, kRows, kCols))), bound);
  EXPECT_LT(std::abs(Correlation(u, DrawUniform(11, 0, 1, kRows, kCols))), bound);
  EXPECT_LT(std::abs(Correlation(u, DrawUniform(12, 0, 0, kRows, kCols))), bound);
  // Row r + 1 against row r of the same stream.
  std::vector<float> shifted(u.begin() + kCols, u.end()), head(u.begin(), u.end() - kCols);
  EXPECT_LT(std::abs(Correlation(head, shifted)),
            5.0 / std::sqrt(static_cast<double>(head.size())));
}

// RowRng: row r of a pass belongs to stream stream_base + r / rows_per_stream and is row
// r % rows_per_stream within it.
TEST(RowRngTest, MapsRowsToStreamsAsDocumented) {
  const RandomStream s{99, 1000, 8};
  for (int64_t r : {0, 1, 7, 8, 9, 15, 16, 63, 64, 1001}) {
    const CounterRng expected(99, 1000 + static_cast<uint64_t>(r / 8), 5,
                              static_cast<uint32_t>(r % 8));
    EXPECT_EQ(DrawBits(RowRng(s, 5, r), 13), DrawBits(expected, 13)) << "row " << r;
  }
  // The default rows_per_stream keeps every row of a pass in stream_base.
  const RandomStream single{99, 1000};
  EXPECT_EQ(DrawBits(RowRng(single, 2, 12345), 8), DrawBits(CounterRng(99, 1000, 2, 12345), 8));
  // Different rows of one stream differ.
  EXPECT_NE(DrawBits(RowRng(s, 5, 0), 8), DrawBits(RowRng(s, 5, 1), 8));
  // Row b of stream t is not row b of stream t + 1.
  EXPECT_NE(DrawBits(RowRng(s, 5, 3), 8), DrawBits(RowRng(s, 5, 11), 8));
}

// Monte Carlo: T samples of a batch of B rows, chunked. A chunk starting at sample t0 run with
// stream_base + t0 draws, for its row r, what row t0 * B + r of the whole T x B pass draws.
TEST(RowRngTest, ChunkingMonteCarloSamplesDoesNotChangeDraws) {
  const int64_t kBatch = 5, kSamples = 12;
  const RandomStream whole{7, 300, kBatch};
  for (int64_t t0 : {0, 3, 4, 11}) {
    const RandomStream chunk{7, 300 + static_cast<uint64_t>(t0), kBatch};
    for (int64_t r = 0; r < (kSamples - t0) * kBatch; ++r) {
      ASSERT_EQ(DrawBits(RowRng(chunk, 1, r), 6), DrawBits(RowRng(whole, 1, t0 * kBatch + r), 6))
          << "chunk at sample " << t0 << ", row " << r;
    }
  }
}

TEST(SplitMix64Test, IsDeterministicAndWellDistributed) {
  SplitMix64 a(5), b(5), c(6);
  std::vector<uint64_t> sa, sb, sc;
  for (int i = 0; i < 16; ++i) {
    sa.push_back(a.Next());
    sb.push_back(b.Next());
    sc.push_back(c.Next());
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);

  SplitMix64 rng(31337);
  constexpr int kN = 100000;
  std::vector<float> u(kN), z(kN);
  std::vector<int> below(7, 0);
  for (int i = 0; i < kN; ++i) {
    const double x = rng.Uniform();
    ASSERT_GE(x, 0.0);
    ASSERT_LT(x, 1.0);
    u[i] = static_cast<float>(x);
    z[i] = static_cast<float>(rng.Normal());
    const uint64_t k = rng.Below(7);
    ASSERT_LT(k, 7u);
    ++below[k];
  }
  const Moments mu = ComputeMoments(u), mz = ComputeMoments(z);
  EXPECT_NEAR(mu.mean, 0.5, 5.0 * std::sqrt(1.0 / 12.0 / kN));
  EXPECT_NEAR(mz.mean, 0.0, 5.0 / std::sqrt(kN));
  EXPECT_NEAR(mz.var, 1.0, 5.0 * std::sqrt(2.0 / kN));
  for (int k = 0; k < 7; ++k) {
    EXPECT_NEAR(below[k], kN / 7.0, 5.0 * std::sqrt(kN * (1.0 / 7) * (6.0 / 7))) << k;
  }
}

}  // namespace
}  // namespace dropnet::engine
