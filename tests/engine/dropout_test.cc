// Tests for standard dropout (dropout.h): the kept fraction within a binomial bound at several
// rates, the scaling of kept values, E[y] = x (inverted) or (1-p) x (classic), eval and
// Monte-Carlo behaviour, rate validation, reproducibility of masks across seeds, batch sizes and
// thread counts, and gradients with the mask frozen.
#include "server/engine/dropout.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/engine/network.h"
#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

std::unique_ptr<Layer> MakeDropout(double rate, bool classic, const Shape& shape) {
  LayerConfig c;
  c.type = "dropout";
  c.rate = rate;
  c.classic_scaling = classic;
  return MakeLayer(c, shape, 0);
}

int64_t CountNonZero(const Matrix& m) { return (m.array() != 0.0f).count(); }

class DropoutRateTest : public ::testing::TestWithParam<double> {};

constexpr int64_t kRows = 400, kCols = 500;  // 200k elements

TEST_P(DropoutRateTest, MaskKeepsOneMinusPWithinBinomialBound) {
  const double p = GetParam();
  const Matrix mask = BernoulliMask(kRows, kCols, p, 3.0f,
                                    MakeContext(Mode::kTrain, 17, 4, kWholeBatch, 1, /*layer=*/2));
  const int64_t kept = CountNonZero(mask);
  ExpectBinomial(kept, kRows * kCols, 1.0 - p, "kept elements");
  // Every element is exactly 0 or the keep value.
  EXPECT_EQ((mask.array() == 3.0f).count(), kept);
  // Each row on its own, too (rows draw from different addresses): 5 sigma per row of 500.
  int64_t rows_out_of_bound = 0;
  for (int64_t r = 0; r < kRows; ++r) {
    const double k = static_cast<double>(CountNonZero(mask.row(r)));
    rows_out_of_bound += std::abs(k - kCols * (1 - p)) > 5.0 * std::sqrt(kCols * p * (1 - p));
  }
  EXPECT_EQ(rows_out_of_bound, 0);
}

TEST_P(DropoutRateTest, InvertedScalingKeepsValuesAtOneOverKeepProbability) {
  const double p = GetParam();
  auto layer = MakeDropout(p, false, Shape{{kCols}});
  const Matrix x = Matrix::Ones(kRows, kCols);
  LayerCache cache;
  Matrix y;
  layer->Forward(x, MakeContext(Mode::kTrain, 5, 1, kWholeBatch, 1, /*layer=*/3), &cache, &y);
  const float keep_value = static_cast<float>(1.0 / (1.0 - p));
  const int64_t kept = (y.array() == keep_value).count();
  EXPECT_EQ(kept + (y.array() == 0.0f).count(), y.size()) << "values other than 0 and 1/(1-p)";
  ExpectBinomial(kept, y.size(), 1.0 - p, "kept elements");
  // The cached mask is the one applied.
  EXPECT_EQ(cache.mask, y);
}

TEST_P(DropoutRateTest, ClassicScalingKeepsValuesUnchanged) {
  const double p = GetParam();
  auto layer = MakeDropout(p, true, Shape{{kCols}});
  const Matrix x = UniformMatrix(kRows, kCols, 0.5, 2.0, 8);  // never 0
  LayerCache cache;
  Matrix y;
  layer->Forward(x, MakeContext(Mode::kTrain, 6, 1, kWholeBatch, 1, /*layer=*/3), &cache, &y);
  const int64_t kept = (y.array() == x.array()).count();
  EXPECT_EQ(kept + (y.array() == 0.0f).count(), y.size()) << "values other than 0 and x";
  ExpectBinomial(kept, y.size(), 1.0 - p, "kept elements");
}

// Many draws of one constant row: y_t = m_t x / (1-p) has mean x and variance x^2 p / (1-p), so
// the mean over N draws is within 5 sqrt(x^2 p / ((1-p) N)) of x. Classic: mean (1-p) x, variance
// x^2 p (1-p).
TEST_P(DropoutRateTest, MeanOverDrawsMatchesExpectation) {
  const double p = GetParam();
  constexpr int64_t kDraws = 4000, kFeatures = 50;  // 200k elements
  const Matrix row = UniformMatrix(1, kFeatures, 0.2, 2.0, 9);
  const Matrix x = row.replicate(kDraws, 1);
  for (bool classic : {false, true}) {
    auto layer = MakeDropout(p, classic, Shape{{kFeatures}});
    // One row per stream: each draw is its own stream, as in Monte Carlo with a batch of 1.
    const Context ctx =
        MakeContext(Mode::kMonteCarlo, 2718, 0, /*rows_per_stream=*/1, 1, /*layer=*/1);
    Matrix y;
    layer->Forward(x, ctx, nullptr, &y);
    const Eigen::VectorXd mean = y.cast<double>().colwise().mean().transpose();
    double total = 0, total_expected = 0, total_var = 0;
    for (int64_t j = 0; j < kFeatures; ++j) {
      const double xj = row(0, j);
      const double expected = classic ? (1 - p) * xj : xj;
      const double var = classic ? xj * xj * p * (1 - p) : xj * xj * p / (1 - p);
      EXPECT_NEAR(mean[j], expected, 5.0 * std::sqrt(var / kDraws))
          << (classic ? "classic" : "inverted") << " feature " << j;
      total += mean[j];
      total_expected += expected;
      total_var += var / kDraws;
    }
    EXPECT_NEAR(total, total_expected, 5.0 * std::sqrt(total_var))
        << (classic ? "classic" : "inverted");
    // The classic train-time mean is what classic eval outputs.
    if (classic) {
      Matrix eval;
      layer->Forward(row, Context{}, nullptr, &eval);
      for (int64_t j = 0; j < kFeatures; ++j) {
        EXPECT_NEAR(eval(0, j), (1 - p) * row(0, j), 1e-6);
      }
    }
  }
}

TEST_P(DropoutRateTest, EvalIsIdentityOrKeepProbabilityScaling) {
  const double p = GetParam();
  const Matrix x = UniformMatrix(7, 9, -3, 3, 10);
  Matrix y;
  MakeDropout(p, false, Shape{{9}})
      ->Forward(x, MakeContext(Mode::kEval, 1, 2, kWholeBatch, 1, /*layer=*/3), nullptr, &y);
  EXPECT_EQ(y, x);
  MakeDropout(p, true, Shape{{9}})
      ->Forward(x, MakeContext(Mode::kEval, 1, 2, kWholeBatch, 1, /*layer=*/3), nullptr, &y);
  for (int64_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(y.data()[i], (1 - p) * x.data()[i], 1e-6 * (1 + std::abs(x.data()[i])));
  }
  // Eval ignores the random address entirely.
  Matrix y2;
  MakeDropout(p, true, Shape{{9}})
      ->Forward(x, MakeContext(Mode::kEval, 99, 98, kWholeBatch, 1, /*layer=*/97), nullptr, &y2);
  EXPECT_EQ(y, y2);
}

TEST_P(DropoutRateTest, MonteCarloModeIsStochastic) {
  const double p = GetParam();
  auto layer = MakeDropout(p, false, Shape{{100}});
  EXPECT_TRUE(layer->IsStochastic());
  const Matrix x = Matrix::Ones(20, 100);
  Matrix y0, y1, y_train;
  layer->Forward(x, MakeContext(Mode::kMonteCarlo, 3, 0, kWholeBatch, 1, /*layer=*/1), nullptr,
                 &y0);
  layer->Forward(x, MakeContext(Mode::kMonteCarlo, 3, 1, kWholeBatch, 1, /*layer=*/1), nullptr,
                 &y1);
  // Each draw drops something (P(no drop in 2000) <= 0.9^2000) and the two samples differ.
  EXPECT_LT(CountNonZero(y0), y0.size());
  EXPECT_NE(y0, y1);
  ExpectBinomial(CountNonZero(y0), y0.size(), 1 - p, "MC kept elements");
  // The mask is a function of the address, not of the mode: train at the same address agrees.
  LayerCache cache;
  layer->Forward(x, MakeContext(Mode::kTrain, 3, 0, kWholeBatch, 1, /*layer=*/1), &cache, &y_train);
  EXPECT_EQ(y0, y_train);
}

INSTANTIATE_TEST_SUITE_P(Rates, DropoutRateTest, ::testing::Values(0.1, 0.5, 0.9),
                         [](const auto& info) {
                           return "p" + std::to_string(static_cast<int>(info.param * 10));
                         });

TEST(DropoutTest, RateZeroIsIdentityEverywhere) {
  auto layer = MakeDropout(0.0, false, Shape{{5}});
  EXPECT_FALSE(layer->IsStochastic());
  const Matrix x = UniformMatrix(4, 5, -1, 1, 11);
  for (Mode mode : {Mode::kTrain, Mode::kEval, Mode::kMonteCarlo}) {
    LayerCache cache;
    Matrix y, dx;
    layer->Forward(x, MakeContext(mode, 1), &cache, &y);
    EXPECT_EQ(y, x) << ModeName(mode);
    layer->Backward(x, cache, {}, &dx);
    EXPECT_EQ(dx, x) << ModeName(mode);
  }
}

TEST(DropoutTest, RatesOutsideUnitIntervalThrowNamingTheValue) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double rate : {-0.1, 1.0, 1.5, nan}) {
    std::ostringstream value;
    value << rate;
    try {
      CheckDropRate("dropout.rate", rate);
      ADD_FAILURE() << "CheckDropRate accepted " << rate;
    } catch (const InvalidArgument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("dropout.rate"), std::string::npos) << msg;
      EXPECT_NE(msg.find(value.str()), std::string::npos) << msg;
    }
    try {
      MakeDropout(rate, false, Shape{{3}});
      ADD_FAILURE() << "MakeLayer accepted dropout rate " << rate;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(value.str()), std::string::npos) << e.what();
    }
    // Through a network, the message also names the layer.
    NetworkSpec spec;
    spec.input = Shape{{3}};
    LayerConfig dense;
    dense.type = "dense";
    dense.units = 4;
    LayerConfig drop;
    drop.type = "dropout";
    drop.rate = rate;
    spec.layers = {dense, drop};
    try {
      Network net(spec);
      ADD_FAILURE() << "Network accepted dropout rate " << rate;
    } catch (const InvalidArgument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("layers[1]"), std::string::npos) << msg;
      EXPECT_NE(msg.find(value.str()), std::string::npos) << msg;
    }
  }
  EXPECT_NO_THROW(CheckDropRate("dropout.rate", 0.0));
  EXPECT_NO_THROW(CheckDropRate("dropout.rate", 0.999));
}

// Masks of independent draws disagree on a fraction 2 p (1 - p) of the elements.
void ExpectIndependentMasks(const Matrix& a, const Matrix& b, double p, const std::string& what) {
  const int64_t differing = (a.array() != b.array()).count();
  ExpectBinomial(differing, a.size(), 2 * p * (1 - p), what);
}

TEST(DropoutTest, SameAddressSameMaskOtherAddressOtherMask) {
  const double p = 0.5;
  const int64_t rows = 100, cols = 200;
  auto mask = [&](uint64_t seed, uint64_t stream, uint32_t layer) {
    return BernoulliMask(rows, cols, p, 1.0f,
                         MakeContext(Mode::kTrain, seed, stream, kWholeBatch, 1, layer));
  };
  const Matrix base = mask(7, 3, 2);
  EXPECT_EQ(base, mask(7, 3, 2));
  ExpectIndependentMasks(base, mask(8, 3, 2), p, "other seed");
  ExpectIndependentMasks(base, mask(7, 4, 2), p, "other stream");
  ExpectIndependentMasks(base, mask(7, 3, 1), p, "other layer");

  // Through the layer and a network: layer i draws at layer index i, so two identical dropout
  // layers in one network drop different units.
  NetworkSpec spec;
  spec.input = Shape{{cols}};
  LayerConfig drop;
  drop.type = "dropout";
  drop.rate = p;
  spec.layers = {drop, drop};
  Network net(spec);
  ForwardCache c1, c2;
  const Matrix x = Matrix::Ones(rows, cols);
  const Context ctx = MakeContext(Mode::kTrain, 7, 3);
  const Matrix y1 = net.Forward(x, ctx, &c1);
  const Matrix y2 = net.Forward(x, ctx, &c2);
  EXPECT_EQ(y1, y2);
  EXPECT_EQ(c1.layers[0].mask, c2.layers[0].mask);
  EXPECT_EQ(c1.layers[1].mask, c2.layers[1].mask);
  ExpectIndependentMasks(c1.layers[0].mask, c1.layers[1].mask, p, "layers 0 and 1");
  // Layer 1's mask is what BernoulliMask draws at layer index 1.
  Context layer1 = ctx;
  layer1.layer = 1;
  EXPECT_EQ(c1.layers[1].mask, BernoulliMask(rows, cols, p, 2.0f, layer1));
}

TEST(DropoutTest, RowMaskDoesNotDependOnBatchSizeOrThreads) {
  const double p = 0.3;
  const int64_t cols = 37;  // not a multiple of 4: exercises the partial Philox block
  const Matrix reference = BernoulliMask(
      400, cols, p, 1.0f, MakeContext(Mode::kTrain, 1, 9, kWholeBatch, 1, /*layer=*/4));
  for (int threads : {1, 2, 8}) {
    const Matrix big = BernoulliMask(
        400, cols, p, 1.0f, MakeContext(Mode::kTrain, 1, 9, kWholeBatch, threads, /*layer=*/4));
    const Matrix small = BernoulliMask(
        4, cols, p, 1.0f, MakeContext(Mode::kTrain, 1, 9, kWholeBatch, threads, /*layer=*/4));
    EXPECT_EQ(big, reference) << threads << " threads";
    EXPECT_EQ(small, reference.topRows(4)) << threads << " threads";
  }
  // The same through the layer's forward pass.
  auto layer = MakeDropout(p, false, Shape{{cols}});
  const Matrix x = UniformMatrix(400, cols, 0.5, 1.5, 12);
  Matrix y_ref;
  layer->Forward(x, MakeContext(Mode::kMonteCarlo, 1, 9, kWholeBatch, 1, /*layer=*/4), nullptr,
                 &y_ref);
  for (int threads : {1, 2, 8}) {
    Matrix y_small;
    layer->Forward(x.topRows(4),
                   MakeContext(Mode::kMonteCarlo, 1, 9, kWholeBatch, threads, /*layer=*/4), nullptr,
                   &y_small);
    EXPECT_EQ(y_small, y_ref.topRows(4)) << threads << " threads";
  }
  // Monte Carlo chunking: samples t of a batch of B rows. The chunk of samples 3.. run with
  // stream_base + 3 draws what rows 3B.. of the whole pass draw.
  const int64_t batch = 4;
  const Matrix whole = BernoulliMask(10 * batch, cols, p, 1.0f,
                                     MakeContext(Mode::kMonteCarlo, 1, 0, batch, 1, /*layer=*/4));
  const Matrix chunk = BernoulliMask(5 * batch, cols, p, 1.0f,
                                     MakeContext(Mode::kMonteCarlo, 1, 3, batch, 2, /*layer=*/4));
  EXPECT_EQ(chunk, whole.middleRows(3 * batch, 5 * batch));
}

// Backward reuses the forward's mask: dx = dy .* mask, exactly.
TEST(DropoutTest, BackwardMultipliesByTheCachedMask) {
  for (bool classic : {false, true}) {
    auto layer = MakeDropout(0.4, classic, Shape{{30}});
    const Matrix x = UniformMatrix(8, 30, -2, 2, 13);
    const Matrix dy = UniformMatrix(8, 30, -1, 1, 14);
    LayerCache cache;
    Matrix y, dx;
    layer->Forward(x, MakeContext(Mode::kTrain, 21, 5), &cache, &y);
    ASSERT_EQ(cache.mask.rows(), 8);
    ASSERT_EQ(cache.mask.cols(), 30);
    layer->Backward(dy, cache, {}, &dx);
    EXPECT_EQ(dx, dy.cwiseProduct(cache.mask));
    EXPECT_EQ(y, x.cwiseProduct(cache.mask));
    const float keep = classic ? 1.0f : static_cast<float>(1.0 / 0.6);
    EXPECT_EQ((cache.mask.array() == keep).count() + (cache.mask.array() == 0.0f).count(),
              cache.mask.size());
    EXPECT_GT((cache.mask.array() == 0.0f).count(), 0);
    // With the mask frozen (same context), the layer is linear in x: central differences agree.
    GradCheckResult r = test_support::CheckLayerGradients(
        layer.get(), x, MakeContext(Mode::kTrain, 21, 5), GradCheckOptions{}, 15);
    EXPECT_EQ(r.checked, 8 * 30);
    EXPECT_EQ(r.mismatches, 0) << r.report;
  }
}

// A whole network with two dropout layers: the mask is frozen by re-running forward with the same
// Context (the same RandomStream), so the objective is a deterministic function of x and the
// parameters, and Network::Backward must match its central differences.
TEST(DropoutTest, NetworkGradientsWithFrozenMasksMatchCentralDifferences) {
  NetworkSpec spec;
  spec.input = Shape{{6}};
  spec.seed = 4;
  auto dense = [](int units) {
    LayerConfig c;
    c.type = "dense";
    c.units = units;
    return c;
  };
  LayerConfig tanh_layer;
  tanh_layer.type = "tanh";
  LayerConfig drop;
  drop.type = "dropout";
  drop.rate = 0.5;
  LayerConfig classic = drop;
  classic.rate = 0.3;
  classic.classic_scaling = true;
  spec.layers = {dense(8), tanh_layer, drop, dense(5), classic, dense(3)};
  Network net(spec);
  // Non-zero biases so that their gradients are exercised on a generic point.
  for (Parameter* p : net.Parameters()) {
    if (p->name == "bias") p->value = UniformMatrix(1, p->value.cols(), -0.3, 0.3, 16);
  }
  Matrix x = UniformMatrix(5, 6, -1.5, 1.5, 17);
  const Context ctx = MakeContext(Mode::kTrain, 31, 12, /*rows_per_stream=*/5);

  ForwardCache cache;
  const Matrix y = net.Forward(x, ctx, &cache);
  ASSERT_GT((cache.layers[2].mask.array() == 0.0f).count(), 0) << "dropout dropped nothing";
  ASSERT_GT((cache.layers[4].mask.array() == 0.0f).count(), 0) << "dropout dropped nothing";
  const Matrix w = UniformMatrix(y.rows(), y.cols(), -1, 1, 18);
  Gradients grads;
  Matrix dx;
  net.Backward(w, cache, &grads, -1, &dx);

  auto objective = [&]() {
    ForwardCache scratch;
    return WeightedSum(net.Forward(x, ctx, &scratch), w);
  };
  // Forward is deterministic at a fixed address.
  EXPECT_EQ(objective(), objective());

  GradCheckResult r;
  const GradCheckOptions opt;
  CompareWithCentralDifferences(objective, &x, dx, opt, "dx", &r);
  std::vector<Parameter*> params = net.Parameters();
  ASSERT_EQ(grads.size(), params.size());
  for (size_t k = 0; k < params.size(); ++k) {
    CompareWithCentralDifferences(objective, &params[k]->value, grads[k], opt,
                                  "param " + std::to_string(k) + " " + params[k]->name, &r);
  }
  EXPECT_EQ(r.checked, x.size() + net.ParameterCount());
  EXPECT_EQ(r.mismatches, 0) << r.report;

  // A different stream (the next training step) gives a different objective: the masks moved.
  const Context next = MakeContext(Mode::kTrain, 31, 13, 5);
  ForwardCache scratch;
  EXPECT_NE(WeightedSum(net.Forward(x, next, &scratch), w), objective());
}

}  // namespace
}  // namespace dropnet::engine
