// Tests for the deterministic layers of layers.h: numerical gradient checks of every layer
// (Dense, the activations, Softmax, Flatten, BatchNorm), BatchNorm's running statistics, and the
// statistics of the Dense initialisation schemes.
#include "server/engine/layers.h"

#include <cmath>
#include <functional>
#include <memory>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/engine/layer.h"
#include "tests/engine/gradient_check.h"

namespace dropnet::engine {
namespace {

using test_support::AwayFromZero;
using test_support::CheckLayerGradients;
using test_support::GradCheckOptions;
using test_support::GradCheckResult;
using test_support::UniformMatrix;

Context TrainContext() {
  Context ctx;
  ctx.mode = Mode::kTrain;
  ctx.rng = RandomStream{1234, 0};
  return ctx;
}

LayerConfig Config(const std::string& type) {
  LayerConfig c;
  c.type = type;
  return c;
}

void ExpectGradientsMatch(const GradCheckResult& r, int64_t expected_checked) {
  EXPECT_EQ(r.checked, expected_checked);
  EXPECT_EQ(r.mismatches, 0) << r.report;
}

// ---- The checker itself ----

// A layer whose Backward is deliberately wrong (2*dy for y = x): the checker must notice.
class WrongGradientLayer : public LayerOf<WrongGradientLayer> {
 public:
  explicit WrongGradientLayer(const Shape& s) : LayerOf(Config("wrong"), s) {}
  void Forward(const Matrix& x, const Context&, LayerCache*, Matrix* y) const override { *y = x; }
  void Backward(const Matrix& dy, const LayerCache&, std::span<Matrix>, Matrix* dx) const override {
    *dx = 2.0f * dy;
  }
};

TEST(GradientCheckTest, DetectsAWrongGradient) {
  WrongGradientLayer layer(Shape{{4}});
  const GradCheckResult r =
      CheckLayerGradients(&layer, UniformMatrix(3, 4, -1, 1, 1), TrainContext(), {}, 2);
  EXPECT_EQ(r.checked, 12);
  // Every element with |w| large enough to exceed the absolute floor is flagged.
  EXPECT_GT(r.mismatches, 6);
}

// ---- Dense ----

TEST(DenseTest, ForwardIsAffine) {
  LayerConfig c = Config("dense");
  c.units = 3;
  auto layer = MakeLayer(c, Shape{{4}}, 7);
  layer->params()[1].value = UniformMatrix(1, 3, -1, 1, 8);
  const Matrix x = UniformMatrix(5, 4, -1, 1, 9);
  Matrix y;
  layer->Forward(x, Context{}, nullptr, &y);
  ASSERT_EQ(y.rows(), 5);
  ASSERT_EQ(y.cols(), 3);
  const Matrix& w = layer->params()[0].value;
  const Matrix& b = layer->params()[1].value;
  for (int r = 0; r < 5; ++r) {
    for (int j = 0; j < 3; ++j) {
      double expected = b(0, j);
      for (int i = 0; i < 4; ++i) expected += static_cast<double>(x(r, i)) * w(i, j);
      EXPECT_NEAR(y(r, j), expected, 1e-5);
    }
  }
  EXPECT_EQ(layer->output_shape(), Shape{{3}});
}

TEST(DenseTest, GradientsMatchCentralDifferences) {
  LayerConfig c = Config("dense");
  c.units = 3;
  auto layer = MakeLayer(c, Shape{{5}}, 11);
  layer->params()[1].value = UniformMatrix(1, 3, -0.5, 0.5, 12);  // a non-zero bias
  const GradCheckResult r =
      CheckLayerGradients(layer.get(), UniformMatrix(4, 5, -2, 2, 13), TrainContext(), {}, 14);
  ExpectGradientsMatch(r, 4 * 5 + 5 * 3 + 3);
}

TEST(DenseTest, GradientsWithoutBiasMatchCentralDifferences) {
  LayerConfig c = Config("dense");
  c.units = 4;
  c.use_bias = false;
  auto layer = MakeLayer(c, Shape{{3}}, 21);
  ASSERT_EQ(layer->params().size(), 1u);
  const GradCheckResult r =
      CheckLayerGradients(layer.get(), UniformMatrix(6, 3, -2, 2, 22), TrainContext(), {}, 23);
  ExpectGradientsMatch(r, 6 * 3 + 3 * 4);
}

TEST(DenseTest, GradientsMatchWithSeveralThreads) {
  LayerConfig c = Config("dense");
  c.units = 7;
  auto layer = MakeLayer(c, Shape{{9}}, 31);
  Context ctx = TrainContext();
  ctx.threads = 4;
  const GradCheckResult r =
      CheckLayerGradients(layer.get(), UniformMatrix(16, 9, -1, 1, 32), ctx, {}, 33);
  ExpectGradientsMatch(r, 16 * 9 + 9 * 7 + 7);
}

// ---- Activations ----

struct ActivationCase {
  std::string type;
  bool has_kink;  // keep inputs away from 0
};

void PrintTo(const ActivationCase& c, std::ostream* os) { *os << c.type; }

class ActivationGradientTest : public ::testing::TestWithParam<ActivationCase> {};

TEST_P(ActivationGradientTest, MatchesCentralDifferences) {
  const ActivationCase& tc = GetParam();
  LayerConfig c = Config(tc.type);
  c.negative_slope = 0.2;
  auto layer = MakeLayer(c, Shape{{6}}, 0);
  const Matrix x = tc.has_kink ? AwayFromZero(5, 6, 0.1, 2.5, 41) : UniformMatrix(5, 6, -3, 3, 41);
  const GradCheckResult r = CheckLayerGradients(layer.get(), x, TrainContext(), {}, 42);
  ExpectGradientsMatch(r, 30);
}

INSTANTIATE_TEST_SUITE_P(
    AllActivations, ActivationGradientTest,
    ::testing::Values(ActivationCase{"relu", true}, ActivationCase{"leaky_relu", true},
                      ActivationCase{"tanh", false}, ActivationCase{"sigmoid", false},
                      ActivationCase{"selu", true}, ActivationCase{"gelu", false}),
    [](const auto& info) { return info.param.type; });

// Values of the activations against their definitions, computed in double.
TEST(ActivationTest, ForwardMatchesDefinitions) {
  const Matrix x = UniformMatrix(4, 8, -4, 4, 51);
  const double slope = 0.2;
  const double selu_scale = 1.0507009873554804934, selu_alpha = 1.6732632423543772848;
  struct Case {
    std::string type;
    std::function<double(double)> f;
  };
  const std::vector<Case> cases = {
      {"relu", [](double v) { return v > 0 ? v : 0.0; }},
      {"leaky_relu", [&](double v) { return v > 0 ? v : slope * v; }},
      {"tanh", [](double v) { return std::tanh(v); }},
      {"sigmoid", [](double v) { return 1.0 / (1.0 + std::exp(-v)); }},
      {"selu", [&](double v) { return selu_scale * (v > 0 ? v : selu_alpha * std::expm1(v)); }},
      {"gelu", [](double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }},
  };
  for (const Case& tc : cases) {
    LayerConfig c = Config(tc.type);
    c.negative_slope = slope;
    auto layer = MakeLayer(c, Shape{{8}}, 0);
    Matrix y;
    layer->Forward(x, Context{}, nullptr, &y);
    for (int64_t i = 0; i < x.size(); ++i) {
      const double expected = tc.f(x.data()[i]);
      EXPECT_NEAR(y.data()[i], expected, 1e-5 * (1 + std::abs(expected)))
          << tc.type << " at " << x.data()[i];
    }
  }
}

TEST(ActivationTest, SigmoidAndTanhStayFiniteForLargeInputs) {
  Matrix x(1, 4);
  x << -200.0f, -90.0f, 90.0f, 200.0f;
  for (const char* type : {"sigmoid", "tanh", "gelu", "selu"}) {
    auto layer = MakeLayer(Config(type), Shape{{4}}, 0);
    LayerCache cache;
    Matrix y, dx;
    layer->Forward(x, TrainContext(), &cache, &y);
    layer->Backward(Matrix::Ones(1, 4), cache, {}, &dx);
    EXPECT_TRUE(y.allFinite()) << type;
    EXPECT_TRUE(dx.allFinite()) << type;
  }
}

// ---- Softmax ----

TEST(SoftmaxTest, GradientsMatchCentralDifferences) {
  auto layer = MakeLayer(Config("softmax"), Shape{{5}}, 0);
  const GradCheckResult r =
      CheckLayerGradients(layer.get(), UniformMatrix(4, 5, -2, 2, 61), TrainContext(), {}, 62);
  ExpectGradientsMatch(r, 20);
}

TEST(SoftmaxTest, RowsArePositiveAndSumToOneEvenForHugeLogits) {
  Matrix x(3, 4);
  x << 1, 2, 3, 4,               //
      1e4f, -1e4f, 0, 1e4f - 1,  //
      -1e4f, -1e4f, -1e4f, -1e4f;
  Matrix y;
  SoftmaxRows(x, &y);
  ASSERT_TRUE(y.allFinite());
  for (int r = 0; r < 3; ++r) EXPECT_NEAR(y.row(r).sum(), 1.0, 1e-6);
  EXPECT_NEAR(y(0, 3),
              std::exp(4.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + std::exp(4.0)),
              1e-6);
  EXPECT_NEAR(y(1, 0), 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(y(2, 1), 0.25, 1e-7);
}

// ---- Flatten ----

TEST(FlattenTest, KeepsDataAndPassesGradientsThrough) {
  auto layer = MakeLayer(Config("flatten"), Shape{{2, 3, 2}}, 0);
  EXPECT_EQ(layer->output_shape(), Shape{{12}});
  const Matrix x = UniformMatrix(3, 12, -1, 1, 71);
  Matrix y;
  layer->Forward(x, Context{}, nullptr, &y);
  EXPECT_EQ(y, x);
  const GradCheckResult r = CheckLayerGradients(layer.get(), x, TrainContext(), {}, 72);
  ExpectGradientsMatch(r, 36);
}

// ---- BatchNorm ----

// Rows whose features have different means and scales.
Matrix BatchNormInput(int64_t rows, int64_t cols, uint64_t seed) {
  Matrix x = UniformMatrix(rows, cols, -1, 1, seed);
  for (int64_t j = 0; j < cols; ++j) {
    x.col(j) = (x.col(j).array() * (0.5f + 0.4f * j) + (j - 2.0f)).matrix();
  }
  return x;
}

std::unique_ptr<Layer> MakeBatchNorm(const Shape& shape, double momentum = 0.1) {
  LayerConfig c = Config("batch_norm");
  c.momentum = momentum;
  auto layer = MakeLayer(c, shape, 0);
  const int64_t channels = layer->params()[0].value.cols();
  layer->params()[0].value = UniformMatrix(1, channels, 0.5, 1.5, 81);   // gamma
  layer->params()[1].value = UniformMatrix(1, channels, -0.5, 0.5, 82);  // beta
  return layer;
}

TEST(BatchNormTest, TrainGradientsMatchCentralDifferences) {
  auto layer = MakeBatchNorm(Shape{{5}});
  const GradCheckResult r =
      CheckLayerGradients(layer.get(), BatchNormInput(8, 5, 83), TrainContext(), {}, 84);
  ExpectGradientsMatch(r, 8 * 5 + 5 + 5);
}

TEST(BatchNormTest, ChannelTrainGradientsMatchCentralDifferences) {
  // {C=2, H=2, W=3}: statistics per channel over rows and the 6 positions.
  auto layer = MakeBatchNorm(Shape{{2, 2, 3}});
  ASSERT_EQ(layer->params()[0].value.cols(), 2);
  const GradCheckResult r =
      CheckLayerGradients(layer.get(), BatchNormInput(4, 12, 85), TrainContext(), {}, 86);
  ExpectGradientsMatch(r, 4 * 12 + 2 + 2);
}

TEST(BatchNormTest, TrainNormalisesWithBatchStatistics) {
  auto layer = MakeLayer(Config("batch_norm"), Shape{{5}}, 0);  // gamma 1, beta 0
  const Matrix x = BatchNormInput(16, 5, 87);
  LayerCache cache;
  Matrix y;
  layer->Forward(x, TrainContext(), &cache, &y);
  for (int j = 0; j < 5; ++j) {
    const double mean = x.col(j).cast<double>().mean();
    const double var = (x.col(j).cast<double>().array() - mean).square().mean();  // biased
    for (int r = 0; r < 16; ++r) {
      EXPECT_NEAR(y(r, j), (x(r, j) - mean) / std::sqrt(var + 1e-5), 1e-4);
    }
  }
}

TEST(BatchNormTest, EvalAndMonteCarloUseRunningStatistics) {
  auto layer = MakeBatchNorm(Shape{{4}});
  layer->buffers()[0].value = UniformMatrix(1, 4, -1, 1, 91);   // running mean
  layer->buffers()[1].value = UniformMatrix(1, 4, 0.5, 3, 92);  // running var
  const Matrix& gamma = layer->params()[0].value;
  const Matrix& beta = layer->params()[1].value;
  const Matrix& rm = layer->buffers()[0].value;
  const Matrix& rv = layer->buffers()[1].value;
  const Matrix x = BatchNormInput(6, 4, 93);
  for (Mode mode : {Mode::kEval, Mode::kMonteCarlo}) {
    Context ctx;
    ctx.mode = mode;
    ctx.rng = RandomStream{5, 6};
    Matrix y;
    layer->Forward(x, ctx, nullptr, &y);
    for (int r = 0; r < 6; ++r) {
      for (int j = 0; j < 4; ++j) {
        const double expected =
            gamma(0, j) * (x(r, j) - rm(0, j)) / std::sqrt(rv(0, j) + 1e-5) + beta(0, j);
        EXPECT_NEAR(y(r, j), expected, 1e-5) << ModeName(mode);
      }
    }
    // A row's output does not depend on the rest of the batch.
    Matrix alone;
    layer->Forward(x.row(2), ctx, nullptr, &alone);
    EXPECT_TRUE(alone.isApprox(y.row(2), 1e-6f)) << ModeName(mode);
  }
  // Train mode, by contrast, uses the batch: the same row normalises differently.
  Matrix y_train, y_eval;
  LayerCache cache;
  layer->Forward(x, TrainContext(), &cache, &y_train);
  layer->Forward(x, Context{}, nullptr, &y_eval);
  EXPECT_GT((y_train - y_eval).cwiseAbs().maxCoeff(), 0.1f);
}

// running = (1 - momentum) * running + momentum * batch, with the unbiased batch variance.
TEST(BatchNormTest, ApplyTrainStatisticsMovesRunningStatisticsByMomentum) {
  const double momentum = 0.3;
  auto layer = MakeBatchNorm(Shape{{5}}, momentum);
  layer->buffers()[0].value.setConstant(0.5f);
  layer->buffers()[1].value.setConstant(2.0f);
  std::vector<double> mean(5, 0.5), var(5, 2.0);
  for (uint64_t step = 0; step < 3; ++step) {
    const Matrix x = BatchNormInput(8, 5, 100 + step);
    LayerCache cache;
    Matrix y;
    layer->Forward(x, TrainContext(), &cache, &y);
    // Forward alone does not touch the buffers: the layer is const while it computes.
    EXPECT_NEAR(layer->buffers()[0].value(0, 0), mean[0], 1e-6);
    layer->ApplyTrainStatistics(cache);
    for (int j = 0; j < 5; ++j) {
      const double m = x.col(j).cast<double>().mean();
      const double unbiased = (x.col(j).cast<double>().array() - m).square().sum() / (8 - 1);
      mean[j] = (1 - momentum) * mean[j] + momentum * m;
      var[j] = (1 - momentum) * var[j] + momentum * unbiased;
      EXPECT_NEAR(layer->buffers()[0].value(0, j), mean[j], 1e-5) << "step " << step;
      EXPECT_NEAR(layer->buffers()[1].value(0, j), var[j], 1e-5 * var[j]) << "step " << step;
    }
  }
}

TEST(BatchNormTest, ChannelStatisticsCountRowsTimesPositions) {
  const double momentum = 1.0;  // the running statistics become the batch statistics
  auto layer = MakeBatchNorm(Shape{{2, 3}}, momentum);
  const Matrix x = BatchNormInput(3, 6, 111);
  LayerCache cache;
  Matrix y;
  layer->Forward(x, TrainContext(), &cache, &y);
  layer->ApplyTrainStatistics(cache);
  for (int c = 0; c < 2; ++c) {
    std::vector<double> v;
    for (int r = 0; r < 3; ++r)
      for (int s = 0; s < 3; ++s) v.push_back(x(r, c * 3 + s));
    double m = 0;
    for (double e : v) m += e;
    m /= v.size();
    double ss = 0;
    for (double e : v) ss += (e - m) * (e - m);
    EXPECT_NEAR(layer->buffers()[0].value(0, c), m, 1e-5);
    EXPECT_NEAR(layer->buffers()[1].value(0, c), ss / (v.size() - 1), 1e-5);
  }
}

TEST(BatchNormTest, RejectsBadOptionsAndTinyBatches) {
  LayerConfig c = Config("batch_norm");
  c.momentum = 0.0;
  EXPECT_THROW(MakeLayer(c, Shape{{3}}, 0), InvalidArgument);
  c.momentum = 1.5;
  EXPECT_THROW(MakeLayer(c, Shape{{3}}, 0), InvalidArgument);
  c.momentum = 0.1;
  c.epsilon = 0.0;
  EXPECT_THROW(MakeLayer(c, Shape{{3}}, 0), InvalidArgument);
  auto layer = MakeLayer(Config("batch_norm"), Shape{{3}}, 0);
  LayerCache cache;
  Matrix y;
  EXPECT_THROW(layer->Forward(Matrix::Ones(1, 3), TrainContext(), &cache, &y), InvalidArgument);
}

// ---- Dense initialisation ----

struct InitCase {
  std::string scheme;
  bool uniform;
  double variance;  // for fan_in = 300, fan_out = 100
};

void PrintTo(const InitCase& c, std::ostream* os) { *os << c.scheme; }

class InitTest : public ::testing::TestWithParam<InitCase> {};

constexpr int64_t kFanIn = 300, kFanOut = 100;

TEST_P(InitTest, HasThePromisedStandardDeviation) {
  const InitCase& tc = GetParam();
  Matrix w;
  InitializeWeights(tc.scheme, kFanIn, kFanOut, 2024, &w);
  ASSERT_EQ(w.rows(), kFanIn);
  ASSERT_EQ(w.cols(), kFanOut);
  const double n = static_cast<double>(w.size());
  const double sigma2 = tc.variance;
  double mean = 0;
  for (int64_t i = 0; i < w.size(); ++i) mean += w.data()[i];
  mean /= n;
  double m2 = 0, m4 = 0;
  for (int64_t i = 0; i < w.size(); ++i) {
    const double d = w.data()[i] - mean;
    m2 += d * d;
    m4 += d * d * d * d;
  }
  const double var = m2 / n, kurtosis = (m4 / n) / (var * var);
  EXPECT_NEAR(mean, 0.0, 5.0 * std::sqrt(sigma2 / n));
  // Var[sample variance] = (mu4 - sigma^4) / n: 2 sigma^4 / n for a normal, 0.8 sigma^4 / n for
  // a uniform (mu4 = 1.8 sigma^4).
  const double var_of_var = (tc.uniform ? 0.8 : 2.0) * sigma2 * sigma2 / n;
  EXPECT_NEAR(var, sigma2, 5.0 * std::sqrt(var_of_var))
      << "stddev " << std::sqrt(var) << ", promised " << std::sqrt(sigma2);
  // The shape: kurtosis 3 for a normal, 1.8 for a uniform (standard error <= sqrt(24/n)).
  EXPECT_NEAR(kurtosis, tc.uniform ? 1.8 : 3.0, 5.0 * std::sqrt(24.0 / n));
  if (tc.uniform) {
    const double limit = std::sqrt(3.0 * sigma2);
    EXPECT_LE(w.cwiseAbs().maxCoeff(), limit * (1 + 1e-6));
    EXPECT_GE(w.cwiseAbs().maxCoeff(), 0.99 * limit);  // P(fail) = 0.99^30000
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllSchemes, InitTest,
    ::testing::Values(InitCase{"he_normal", false, 2.0 / kFanIn},
                      InitCase{"he_uniform", true, 2.0 / kFanIn},
                      InitCase{"glorot_normal", false, 2.0 / (kFanIn + kFanOut)},
                      InitCase{"glorot_uniform", true, 2.0 / (kFanIn + kFanOut)},
                      InitCase{"lecun_normal", false, 1.0 / kFanIn},
                      InitCase{"lecun_uniform", true, 1.0 / kFanIn}),
    [](const auto& info) { return info.param.scheme; });

TEST(DenseInitTest, DefaultIsGlorotUniform) {
  Matrix a, b;
  InitializeWeights("", 20, 10, 5, &a);
  InitializeWeights("glorot_uniform", 20, 10, 5, &b);
  EXPECT_EQ(a, b);
}

TEST(DenseInitTest, UnknownSchemeThrowsInvalidArgument) {
  Matrix w;
  try {
    InitializeWeights("xavier_magic", 3, 2, 1, &w);
    FAIL() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("xavier_magic"), std::string::npos) << e.what();
  }
  LayerConfig c = Config("dense");
  c.units = 2;
  c.init = "he_normall";
  try {
    MakeLayer(c, Shape{{3}}, 1);
    FAIL() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("he_normall"), std::string::npos) << e.what();
  }
}

TEST(DenseInitTest, SameSeedGivesIdenticalWeights) {
  for (const char* scheme : {"he_normal", "glorot_uniform", "lecun_normal"}) {
    Matrix a, b, c;
    InitializeWeights(scheme, 30, 20, 99, &a);
    InitializeWeights(scheme, 30, 20, 99, &b);
    InitializeWeights(scheme, 30, 20, 100, &c);
    EXPECT_EQ(a, b) << scheme;
    EXPECT_NE(a, c) << scheme;
  }
  LayerConfig config = Config("dense");
  config.units = 6;
  config.init = "he_uniform";
  auto l1 = MakeLayer(config, Shape{{4}}, 17);
  auto l2 = MakeLayer(config, Shape{{4}}, 17);
  EXPECT_EQ(l1->params()[0].value, l2->params()[0].value);
  // The layer's weights are the scheme's, and its bias starts at zero.
  Matrix expected;
  InitializeWeights("he_uniform", 4, 6, 17, &expected);
  EXPECT_EQ(l1->params()[0].value, expected);
  EXPECT_EQ(l1->params()[1].value, Matrix::Zero(1, 6));
  EXPECT_TRUE(l1->params()[0].decay);
  EXPECT_FALSE(l1->params()[1].decay);
}

TEST(MakeLayerTest, RejectsUnknownTypesAndBadUnits) {
  EXPECT_THROW(MakeLayer(Config("convolution"), Shape{{3}}, 0), InvalidArgument);
  LayerConfig c = Config("dense");
  c.units = 0;
  EXPECT_THROW(MakeLayer(c, Shape{{3}}, 0), InvalidArgument);
  c.units = 2;
  EXPECT_THROW(MakeLayer(c, Shape{{2, 3}}, 0), InvalidArgument);  // needs a flatten first
}

}  // namespace
}  // namespace dropnet::engine
