// Tests for spatial, Gaussian and alpha dropout (dropout_variants.h): the statistical invariants
// of DESIGN.md section 3 with bounds derived from each distribution at several rates (binomial
// kept fractions, one draw per (example, channel), E[y] = x, Gaussian mean and variance, alpha
// dropout keeping a standard-normal input at mean 0 and variance 1), eval identity, seed, thread
// and chunking reproducibility, gradients with the noise frozen, and Monte-Carlo prediction
// through networks that use each variant.
#include "server/engine/dropout_variants.h"

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/engine/mc.h"
#include "server/engine/network.h"
#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

// The variant under test draws its noise as the layer at index `layer` (3 unless a test says).
Context LayerContext(Mode mode, uint64_t seed, uint64_t stream = 0,
                     int64_t rows_per_stream = kWholeBatch, int threads = 1, uint32_t layer = 3) {
  return MakeContext(mode, seed, stream, rows_per_stream, threads, layer);
}
std::unique_ptr<Layer> Make(const std::string& type, double rate, const Shape& shape) {
  LayerConfig c;
  c.type = type;
  c.rate = rate;
  return MakeLayer(c, shape, 0);
}

Matrix StandardNormal(int64_t rows, int64_t cols, uint64_t seed) {
  Matrix m(rows, cols);
  for (int64_t r = 0; r < rows; ++r) CounterRng(seed, 99, 0, r).Normal(m.row(r).data(), cols);
  return m;
}

class VariantRateTest : public ::testing::TestWithParam<double> {};

// ---- SpatialDropout ----

TEST_P(VariantRateTest, SpatialDropoutDrawsOncePerExampleAndChannel) {
  const double p = GetParam();
  const int64_t rows = 500, channels = 40, h = 3, w = 4;
  auto layer = Make("spatial_dropout2d", p, Shape{{static_cast<int>(channels), h, w}});
  const Matrix x = UniformMatrix(rows, channels * h * w, 0.5, 1.5, 1);
  LayerCache cache;
  Matrix y;
  layer->Forward(x, LayerContext(Mode::kTrain, 7), &cache, &y);
  ASSERT_EQ(cache.mask.rows(), rows);
  ASSERT_EQ(cache.mask.cols(), channels);
  int64_t kept = 0, broken = 0;
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < channels; ++c) {
      const bool keep = y(r, c * h * w) != 0.0f;
      kept += keep;
      for (int64_t j = 0; j < h * w; ++j) {
        const float want = keep ? x(r, c * h * w + j) * scale : 0.0f;
        broken += std::abs(y(r, c * h * w + j) - want) > 1e-6f * std::abs(want);
      }
    }
  }
  EXPECT_EQ(broken, 0);  // the whole H x W plane shares the draw
  ExpectBinomial(kept, rows * channels, 1.0 - p, "kept channels");
}

TEST_P(VariantRateTest, SpatialDropout1dKeepsTheMean) {
  const double p = GetParam();
  const int64_t rows = 2000, channels = 50, length = 6;
  auto layer = Make("spatial_dropout1d", p, Shape{{static_cast<int>(channels), length}});
  const Matrix x = Matrix::Ones(rows, channels * length);
  Matrix y;
  layer->Forward(x, LayerContext(Mode::kMonteCarlo, 11), nullptr, &y);
  // Mean over n = rows*channels independent channel values 0 or 1/(1-p): E = 1,
  // sd = sqrt(p/(1-p)/n).
  const double n = static_cast<double>(rows * channels);
  const double mean = y.cast<double>().mean();
  EXPECT_NEAR(mean, 1.0, 5.0 * std::sqrt(p / (1.0 - p) / n));
}

// ---- GaussianDropout ----

TEST_P(VariantRateTest, GaussianDropoutNoiseHasMeanOneAndVarianceOverKeep) {
  const double p = GetParam();
  const int64_t rows = 400, cols = 500;
  auto layer = Make("gaussian_dropout", p, Shape{{static_cast<int>(cols)}});
  Matrix y;
  layer->Forward(Matrix::Ones(rows, cols), LayerContext(Mode::kTrain, 5), nullptr, &y);
  const double n = static_cast<double>(rows * cols);
  const double var = p / (1.0 - p);
  const Eigen::ArrayXd e = Eigen::Map<const Eigen::VectorXf>(y.data(), y.size()).cast<double>();
  const double mean = e.mean();
  const double sample_var = (e - mean).square().sum() / (n - 1);
  EXPECT_NEAR(mean, 1.0, 5.0 * std::sqrt(var / n));
  // The sample variance of n normals has sd sigma^2 sqrt(2/(n-1)).
  EXPECT_NEAR(sample_var, var, 5.0 * var * std::sqrt(2.0 / (n - 1)));
  // E[y] = x for a non-constant input too: y/x is the noise.
  const Matrix x = UniformMatrix(rows, cols, 0.5, 2.0, 3);
  Matrix y2;
  layer->Forward(x, LayerContext(Mode::kTrain, 5), nullptr, &y2);
  EXPECT_LE((y2.array() / x.array() - y.array()).abs().maxCoeff(), 1e-5f);
}

// ---- AlphaDropout ----

TEST_P(VariantRateTest, AlphaDropoutKeepsStandardNormalInputStandard) {
  const double p = GetParam();
  const int64_t rows = 500, cols = 400;
  auto layer = Make("alpha_dropout", p, Shape{{static_cast<int>(cols)}});
  const Matrix x = StandardNormal(rows, cols, 21);
  LayerCache cache;
  Matrix y;
  layer->Forward(x, LayerContext(Mode::kTrain, 13), &cache, &y);
  double a, b;
  AlphaDropout::Affine(p, &a, &b);
  const float dropped = static_cast<float>(a * kAlphaDropoutValue + b);
  int64_t kept = 0;
  for (int64_t i = 0; i < y.size(); ++i) {
    if (cache.mask.data()[i] != 0.0f) {
      ++kept;
      EXPECT_NEAR(y.data()[i], a * x.data()[i] + b, 1e-5);
    } else {
      EXPECT_EQ(y.data()[i], dropped);
    }
  }
  const double n = static_cast<double>(rows * cols);
  ExpectBinomial(kept, static_cast<int64_t>(n), 1.0 - p, "kept units");
  const Eigen::ArrayXd v = Eigen::Map<const Eigen::VectorXf>(y.data(), y.size()).cast<double>();
  const double mean = v.mean();
  const double var = (v - mean).square().sum() / (n - 1);
  const double m4 = (v - mean).pow(4).mean();
  // Bounds from the output's own distribution: sd(mean) = 1/sqrt(n) (variance 1), and
  // sd(sample variance) = sqrt((m4 - 1)/n).
  EXPECT_NEAR(mean, 0.0, 5.0 / std::sqrt(n));
  EXPECT_NEAR(var, 1.0, 5.0 * std::sqrt((m4 - 1.0) / n));
  // The affine constants themselves: exact mean 0 and variance 1 for N(0, 1) input.
  const double q = 1.0 - p, ap = kAlphaDropoutValue;
  EXPECT_NEAR(a * (q * 0.0 + (1 - q) * ap) + b, 0.0, 1e-12);
  EXPECT_NEAR(a * a * (q + (1 - q) * ap * ap - std::pow((1 - q) * ap, 2)), 1.0, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Rates, VariantRateTest, ::testing::Values(0.05, 0.2, 0.5, 0.8));

// ---- Shared behaviour ----

const char* const kTypes[] = {"spatial_dropout2d", "gaussian_dropout", "alpha_dropout"};

Shape ShapeFor(const std::string& type) {
  return type == "spatial_dropout2d" ? Shape{{4, 3, 5}} : Shape{{60}};
}

TEST(DropoutVariantsTest, EvalIsTheIdentityAndTheOtherModesDraw) {
  for (const char* type : kTypes) {
    auto layer = Make(type, 0.3, ShapeFor(type));
    const Matrix x = UniformMatrix(6, 60, -1, 1, 2);
    Matrix y;
    LayerCache cache;
    layer->Forward(x, LayerContext(Mode::kEval, 1), &cache, &y);
    EXPECT_TRUE(y == x) << type;
    Matrix dx;
    layer->Backward(x, cache, {}, &dx);
    EXPECT_TRUE(dx == x) << type;
    layer->Forward(x, LayerContext(Mode::kMonteCarlo, 1), nullptr, &y);
    EXPECT_FALSE(y == x) << type;
    layer->Forward(x, LayerContext(Mode::kTrain, 1), &cache, &y);
    EXPECT_FALSE(y == x) << type;
    EXPECT_TRUE(layer->IsStochastic()) << type;
    EXPECT_FALSE(Make(type, 0.0, ShapeFor(type))->IsStochastic()) << type;
  }
}

TEST(DropoutVariantsTest, SameAddressSameNoiseWhateverTheThreadsOrChunking) {
  for (const char* type : kTypes) {
    auto layer = Make(type, 0.4, ShapeFor(type));
    const int64_t b = 5, t = 4;  // T x B rows of a Monte-Carlo pass
    const Matrix x = UniformMatrix(t * b, 60, 0.5, 1.5, 3);
    Matrix all, again, other_seed;
    layer->Forward(x, LayerContext(Mode::kMonteCarlo, 9, 0, b, 1), nullptr, &all);
    layer->Forward(x, LayerContext(Mode::kMonteCarlo, 9, 0, b, 3), nullptr, &again);
    EXPECT_TRUE(all == again) << type;
    layer->Forward(x, LayerContext(Mode::kMonteCarlo, 10, 0, b, 1), nullptr, &other_seed);
    EXPECT_FALSE(all == other_seed) << type;
    // Samples 2..3 computed alone (a chunk starting at stream 2) draw what they drew above.
    Matrix chunk;
    layer->Forward(x.middleRows(2 * b, 2 * b), LayerContext(Mode::kMonteCarlo, 9, 2, b, 2), nullptr,
                   &chunk);
    EXPECT_TRUE(chunk == all.middleRows(2 * b, 2 * b)) << type;
    // A different layer index draws differently.
    Matrix other_layer;
    layer->Forward(x, LayerContext(Mode::kMonteCarlo, 9, 0, b, 1, 4), nullptr, &other_layer);
    EXPECT_FALSE(all == other_layer) << type;
  }
}

TEST(DropoutVariantsTest, GradientsMatchCentralDifferencesWithFrozenNoise) {
  for (const char* type : kTypes) {
    for (double p : {0.2, 0.6}) {
      auto layer = Make(type, p, ShapeFor(type));
      auto r = CheckLayerGradients(layer.get(), UniformMatrix(4, 60, -1, 1, 5),
                                   LayerContext(Mode::kTrain, 17), GradCheckOptions{}, 6);
      EXPECT_EQ(r.mismatches, 0) << type << " p " << p << "\n" << r.report;
      EXPECT_EQ(r.checked, 240);
    }
  }
}

TEST(DropoutVariantsTest, RejectsBadRatesAndShapes) {
  for (const char* type : kTypes) {
    for (double p : {-0.1, 1.0, std::nan("")}) {
      EXPECT_THROW(Make(type, p, ShapeFor(type)), InvalidArgument) << type << " " << p;
    }
  }
  EXPECT_THROW(Make("spatial_dropout2d", 0.1, Shape{{4, 10}}), InvalidArgument);
  EXPECT_THROW(Make("spatial_dropout1d", 0.1, Shape{{4, 2, 5}}), InvalidArgument);
  EXPECT_THROW(Make("spatial_dropout", 0.1, Shape{{40}}), InvalidArgument);
  EXPECT_NO_THROW(Make("spatial_dropout", 0.1, Shape{{4, 10}}));
}

// ---- In networks: training steps and Monte-Carlo prediction ----

LayerConfig L(const std::string& type, double rate = 0, int units = 0) {
  LayerConfig c;
  c.type = type;
  c.rate = rate;
  c.units = units;
  return c;
}

NetworkSpec SpecWith(const std::string& type) {
  NetworkSpec spec;
  spec.seed = 4;
  if (type == "spatial_dropout1d" || type == "spatial_dropout2d") {
    const bool two_d = type == "spatial_dropout2d";
    spec.input = two_d ? Shape{{2, 6, 6}} : Shape{{2, 12}};
    LayerConfig conv = L(two_d ? "conv2d" : "conv1d");
    conv.filters = 6;
    conv.kernel_size = 3;
    spec.layers = {conv, L("relu"), L(type, 0.3), L("flatten"), L("dense", 0, 3)};
  } else {
    spec.input = Shape{{10}};
    LayerConfig d = L("dense", 0, 16);
    d.init = "lecun_normal";
    spec.layers = {d, L("selu"), L(type, 0.3), L("dense", 0, 3)};
  }
  return spec;
}

TEST(DropoutVariantsNetworkTest, EveryVariantTrainsAndPredictsInEveryMode) {
  for (const char* type :
       {"spatial_dropout1d", "spatial_dropout2d", "gaussian_dropout", "alpha_dropout"}) {
    Network net(SpecWith(type));
    EXPECT_EQ(net.FirstStochasticLayer(), 2) << type;
    const Matrix x = UniformMatrix(8, net.input_shape().Size(), -1, 1, 1);
    // kTrain: forward, backward, the masks are part of the step.
    Context ctx = LayerContext(Mode::kTrain, 3, 0, 8);
    ForwardCache cache;
    const Matrix y = net.Forward(x, ctx, &cache);
    Gradients grads;
    net.Backward(Matrix::Ones(8, 3), cache, &grads);
    double norm = 0;
    for (const auto& g : grads) norm += g.squaredNorm();
    EXPECT_GT(norm, 0) << type;
    EXPECT_TRUE(y.allFinite()) << type;
    // kEval is deterministic; kMonteCarlo is not, and is reproducible from its seed.
    ctx.mode = Mode::kEval;
    EXPECT_TRUE(net.Forward(x, ctx) == net.Forward(x, ctx)) << type;
    const Matrix e = net.Forward(x, ctx);
    ctx.mode = Mode::kMonteCarlo;
    EXPECT_FALSE(net.Forward(x, ctx) == e) << type;

    McOptions mo;
    mo.samples = 40;
    mo.seed = 12;
    mo.threads = 1;
    const McResult a =
        MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, mo);
    mo.threads = 3;
    mo.memory_budget_bytes = 4096;  // many small chunks
    const McResult b =
        MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, mo);
    EXPECT_LE((a.mean - b.mean).cwiseAbs().maxCoeff(), 1e-6f) << type;
    EXPECT_GT(a.stddev.maxCoeff(), 0.0f) << type;  // the samples differ
    EXPECT_GT(a.mutual_information.maxCoeff(), 0.0f) << type;
    for (int64_t r = 0; r < a.mean.rows(); ++r) EXPECT_NEAR(a.mean.row(r).sum(), 1.0, 1e-5);
    mo.seed = 13;
    const McResult c =
        MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, mo);
    EXPECT_FALSE(a.mean == c.mean) << type;
  }
}

}  // namespace
}  // namespace dropnet::engine
