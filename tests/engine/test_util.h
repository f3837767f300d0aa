// Test support: the set-up the engine tests share. Contexts for a forward pass, a layer's output
// in any mode, the binomial bound the dropout tests hold kept fractions to, network specs, seeded
// normal matrices, bitwise matrix equality and the check of an InvalidArgument's message. The
// helpers of gradient_check.h and layer_configs.h are named in dropnet::engine here too, so that a
// test file uses them as they are.
#ifndef DROPNET_TESTS_ENGINE_TEST_UTIL_H_
#define DROPNET_TESTS_ENGINE_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "server/engine/layer.h"
#include "server/engine/network.h"
#include "server/engine/random.h"
#include "server/engine/tensor.h"
#include "tests/engine/gradient_check.h"
#include "tests/engine/layer_configs.h"

namespace dropnet::engine {
namespace test_support {

// Rows per random stream large enough that a whole batch draws from one stream.
inline constexpr int64_t kWholeBatch = 1 << 30;

// A Context in `mode` drawing from RandomStream{seed, stream, rows_per_stream}, for the layer at
// index `layer`, on `threads` threads.
inline Context MakeContext(Mode mode, uint64_t seed = 0, uint64_t stream = 0,
                           int64_t rows_per_stream = kWholeBatch, int threads = 1,
                           uint32_t layer = 0) {
  Context ctx;
  ctx.mode = mode;
  ctx.rng = RandomStream{seed, stream, rows_per_stream};
  ctx.layer = layer;
  ctx.threads = threads;
  return ctx;
}

// The output of `layer` on `x` in ctx.mode (kTrain gets a throw-away cache).
inline Matrix RunLayer(const Layer& layer, const Matrix& x, const Context& ctx) {
  Matrix y;
  LayerCache cache;
  layer.Forward(x, ctx, ctx.mode == Mode::kTrain ? &cache : nullptr, &y);
  return y;
}

// |k - n q| <= 5 sqrt(n q (1 - q)) for k ~ Binomial(n, q).
inline void ExpectBinomial(int64_t k, int64_t n, double q, const std::string& what) {
  const double mean = static_cast<double>(n) * q;
  const double bound = 5.0 * std::sqrt(static_cast<double>(n) * q * (1.0 - q));
  EXPECT_LE(std::abs(static_cast<double>(k) - mean), bound)
      << what << ": " << k << " of " << n << ", expected " << mean << " +- " << bound;
}

inline NetworkSpec MakeSpec(std::vector<int> input, std::vector<LayerConfig> layers,
                            uint64_t seed = 1) {
  NetworkSpec spec;
  spec.input = Shape{std::move(input)};
  spec.layers = std::move(layers);
  spec.seed = seed;
  return spec;
}

// A spec for flat inputs of `inputs` features.
inline NetworkSpec MakeSpec(int inputs, std::vector<LayerConfig> layers, uint64_t seed = 1) {
  return MakeSpec(std::vector<int>{inputs}, std::move(layers), seed);
}

// A rows x cols matrix of independent N(0, scale^2) entries from a fixed seed.
inline Matrix RandomMatrix(int64_t rows, int64_t cols, uint64_t seed, double scale = 1.0) {
  SplitMix64 rng(seed);
  Matrix m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.Normal() * scale);
  return m;
}

inline bool BitEqual(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

inline bool BitEqual(const Eigen::VectorXf& a, const Eigen::VectorXf& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

// Runs `fn` and expects an InvalidArgument whose message contains every one of `parts`.
inline void ExpectInvalidArgumentContaining(const std::function<void()>& fn,
                                            const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    const std::string message = e.what();
    for (const auto& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    }
  }
}

}  // namespace test_support

using test_support::AwayFromZero;
using test_support::BitEqual;
using test_support::CheckLayerGradients;
using test_support::CompareWithCentralDifferences;
using test_support::DenseLayer;
using test_support::DropoutLayer;
using test_support::ExpectBinomial;
using test_support::ExpectGradientsOnOneAndTwoThreads;
using test_support::ExpectInvalidArgumentContaining;
using test_support::GradCheckOptions;
using test_support::GradCheckResult;
using test_support::kWholeBatch;
using test_support::MakeContext;
using test_support::MakeSpec;
using test_support::RandomMatrix;
using test_support::RunLayer;
using test_support::Simple;
using test_support::UniformMatrix;
using test_support::WeightedSum;

}  // namespace dropnet::engine

#endif  // DROPNET_TESTS_ENGINE_TEST_UTIL_H_
