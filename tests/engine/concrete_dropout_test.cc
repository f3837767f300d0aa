// Tests for concrete dropout (concrete_dropout.h): the relaxed mask drops with probability exactly
// p (s > 1/2 iff u > 1-p) within a binomial bound, E[y] ~= x, eval identity, gradients through the
// relaxed mask with its noise frozen (inputs, weights and the rate logit), the regulariser's value
// and gradient, the data-set-size derivation of its coefficients, per-unit rates, the three modes
// and Monte-Carlo prediction, and the paper's direction: less data, a higher learned rate.
#include "server/engine/concrete_dropout.h"

#include <cmath>
#include <string>

#include <gtest/gtest.h>

#include "server/engine/mc.h"
#include "server/engine/network.h"
#include "server/engine/trainer.h"
#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

LayerConfig Concrete(int units, double init_rate, bool per_unit = false) {
  LayerConfig c;
  c.type = "concrete_dropout";
  c.units = units;
  c.init_rate = init_rate;
  c.per_unit = per_unit;
  return c;
}

class ConcreteRateTest : public ::testing::TestWithParam<double> {};

TEST_P(ConcreteRateTest, RelaxedMaskDropsWithProbabilityPAndKeepsTheMean) {
  const double p = GetParam();
  auto layer = MakeLayer(Concrete(0, p), Shape{{400}}, 1);
  const Matrix x = Matrix::Ones(500, 400);
  for (Mode mode : {Mode::kTrain, Mode::kMonteCarlo}) {
    LayerCache cache;
    Matrix y;
    layer->Forward(x, MakeContext(mode, 3, 1), &cache, &y);
    // y = (1 - s) / (1 - p): "dropped" (s > 1/2) iff y < 1 / (2 (1 - p)), which has probability p.
    const float half = static_cast<float>(0.5 / (1 - p));
    ExpectBinomial((y.array() < half).count(), y.size(), p, "relaxed drops");
    // Most values sit near 0 or 1/(1-p) at temperature 0.1.
    const double near = ((y.array() < 0.05f * 2 * half) || (y.array() > 0.95f * 2 * half)).count();
    EXPECT_GT(near / y.size(), 0.7);
    // E[y] = x up to the relaxation: |mean - 1| small (per-element sd <= 1/(1-p)).
    EXPECT_NEAR(y.cast<double>().mean(), 1.0, 0.03);
  }
  Matrix ye;
  layer->Forward(x, MakeContext(Mode::kEval, 3), nullptr, &ye);
  EXPECT_EQ(ye, x);
  ASSERT_EQ(layer->LearnedRates().size(), 1u);
  EXPECT_NEAR(layer->LearnedRates()[0], p, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Rates, ConcreteRateTest, ::testing::Values(0.05, 0.2, 0.5, 0.7));

TEST(ConcreteDropoutTest, GradientsWithFrozenNoise) {
  for (bool per_unit : {false, true}) {
    for (int units : {0, 4}) {
      for (double temperature : {0.5, 0.1}) {
        LayerConfig c = Concrete(units, 0.3, per_unit);
        c.temperature = temperature;
        auto layer = MakeLayer(c, Shape{{5}}, 2);
        const Matrix x = UniformMatrix(6, 5, -1, 1, 3);
        const GradCheckOptions opt{
            .eps = temperature < 0.2 ? 2e-4 : 1e-3, .rtol = 3e-2, .atol = 3e-3};
        auto r = CheckLayerGradients(layer.get(), x, MakeContext(Mode::kTrain, 5, 2), opt, 9);
        EXPECT_EQ(r.mismatches, 0)
            << "per_unit " << per_unit << " units " << units << " t " << temperature << "\n"
            << r.report;
      }
    }
  }
}

TEST(ConcreteDropoutTest, RegulariserValueAndGradient) {
  for (bool per_unit : {false, true}) {
    LayerConfig c = Concrete(3, 0.25, per_unit);
    auto layer = MakeLayer(c, Shape{{4}}, 2);
    auto& params = layer->params();
    params[0].value = UniformMatrix(1, params[0].value.cols(), -2, 1, 4);
    const int64_t n = 50;
    auto* cd = dynamic_cast<ConcreteDropout*>(layer.get());
    ASSERT_NE(cd, nullptr);
    EXPECT_DOUBLE_EQ(cd->WeightRegularizer(n), 1e-8 / n);
    EXPECT_DOUBLE_EQ(cd->DropoutRegularizer(n), 2.0 / n);
    // Hand-computed value.
    const double wr = 1e-8 / n, dr = 2.0 / n;
    double expected = 0;
    const Matrix& w = params[1].value;
    for (int64_t j = 0; j < 4; ++j) {
      const double logit = params[0].value(0, per_unit ? j : 0);
      const double p = 1 / (1 + std::exp(-logit));
      const double wsq = w.row(j).cast<double>().squaredNorm();
      expected += wr * wsq / (1 - p);
      if (per_unit || j == 0)
        expected += dr * (per_unit ? 1 : 4) * (p * std::log(p) + (1 - p) * std::log(1 - p));
    }
    std::vector<Matrix> grads;
    for (const auto& p : params) grads.push_back(Matrix::Zero(p.value.rows(), p.value.cols()));
    const double value = layer->Regularize(n, grads);
    EXPECT_NEAR(value, expected, 1e-9 + 1e-6 * std::abs(expected));
    // Gradient against central differences of the value (large coefficients to see W's term).
    c.weight_regularizer = 0.3;
    c.dropout_regularizer = 0.2;
    auto big = MakeLayer(c, Shape{{4}}, 2);
    big->params()[0].value = params[0].value;
    std::vector<Matrix> g2;
    for (const auto& p : big->params()) g2.push_back(Matrix::Zero(p.value.rows(), p.value.cols()));
    big->Regularize(n, g2);
    GradCheckOptions opt;
    opt.eps = 1e-3;
    GradCheckResult r;
    auto f = [&] {
      std::vector<Matrix> scratch;
      for (const auto& p : big->params())
        scratch.push_back(Matrix::Zero(p.value.rows(), p.value.cols()));
      return big->Regularize(n, scratch);
    };
    for (size_t k = 0; k < 2; ++k)
      CompareWithCentralDifferences(f, &big->params()[k].value, g2[k], opt, big->params()[k].name,
                                    &r);
    EXPECT_EQ(r.mismatches, 0) << r.report;
  }
}

TEST(ConcreteDropoutTest, PerUnitRatesModesAndValidation) {
  auto layer = MakeLayer(Concrete(0, 0.2, true), Shape{{7}}, 1);
  EXPECT_EQ(layer->LearnedRates().size(), 7u);
  EXPECT_TRUE(layer->IsStochastic());
  const Matrix x = UniformMatrix(5, 7, -1, 1, 1);
  Matrix a, b, c, d;
  LayerCache cache;
  layer->Forward(x, MakeContext(Mode::kTrain, 1), &cache, &a);
  layer->Forward(x, MakeContext(Mode::kMonteCarlo, 1, 0, kWholeBatch, 2), nullptr, &b);
  layer->Forward(x, MakeContext(Mode::kMonteCarlo, 2), nullptr, &c);
  layer->Forward(x, MakeContext(Mode::kEval, 1), nullptr, &d);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(d, x);
  EXPECT_THROW(MakeLayer(Concrete(0, 0.0), Shape{{3}}, 1), InvalidArgument);
  EXPECT_THROW(MakeLayer(Concrete(0, 1.0), Shape{{3}}, 1), InvalidArgument);
  LayerConfig t = Concrete(2, 0.1);
  t.temperature = 0;
  EXPECT_THROW(MakeLayer(t, Shape{{3}}, 1), InvalidArgument);
  EXPECT_THROW(MakeLayer(Concrete(2, 0.1), Shape{{3, 2}}, 1), InvalidArgument);
  EXPECT_EQ(MakeLayer(Concrete(2, 0.1), Shape{{3}}, 1)->output_shape(), (Shape{{2}}));
}

// y = sum_j a_j x_j + noise on 8 features; a network of concrete-dropout dense layers.
Dataset Regression(int64_t n, uint64_t seed) {
  Dataset d;
  d.task = Task::kRegression;
  d.input_shape = Shape{{8}};
  d.x = UniformMatrix(n, 8, -1, 1, seed);
  const Matrix noise = UniformMatrix(n, 1, -0.5, 0.5, seed + 1);
  d.y.resize(n, 1);
  for (int64_t r = 0; r < n; ++r) {
    d.y(r, 0) = std::sin(2 * d.x(r, 0)) + d.x(r, 1) * d.x(r, 2) + 0.5f * d.x(r, 3) + noise(r, 0);
  }
  return d;
}

NetworkSpec ConcreteNet(uint64_t seed) {
  NetworkSpec spec;
  spec.input = Shape{{8}};
  spec.seed = seed;
  LayerConfig relu;
  relu.type = "relu";
  spec.layers = {Concrete(32, 0.1), relu, Concrete(32, 0.1), relu, Concrete(1, 0.1)};
  return spec;
}

TEST(ConcreteDropoutTest, TrainsAndLearnsHigherRatesWithLessData) {
  const Dataset full = Regression(4000, 1);
  double rates[2];
  int k = 0;
  for (int64_t n : {40, 4000}) {
    Dataset d = full;
    d.x = full.x.topRows(n);
    d.y = full.y.topRows(n);
    Network net(ConcreteNet(2));
    TrainOptions o;
    o.epochs = static_cast<int>(12000 / n) + 2;  // about the same number of steps
    o.batch_size = 32;
    o.optimizer.learning_rate = 3e-3;
    o.seed = 1;
    auto result = Train(&net, Task::kRegression, LossKind::kMse, d, o);
    ASSERT_FALSE(result.history.empty());
    // The reported loss includes the regulariser.
    Gradients g;
    ForwardCache cache;
    Context ctx = MakeContext(Mode::kTrain, 1);
    Matrix out = net.Forward(d.x.topRows(8), ctx, &cache);
    net.Backward(out, cache, &g);
    EXPECT_NE(net.Regularize(n, &g), 0.0);
    double sum = 0;
    int count = 0;
    for (int i = 0; i < net.size(); ++i)
      for (double r : net.layer(i).LearnedRates()) sum += r, ++count;
    rates[k++] = sum / count;
    // MC prediction over the learned rates is reproducible.
    McOptions mo;
    mo.samples = 10;
    mo.seed = 4;
    auto a = MonteCarloPredict(net, Task::kRegression, LossKind::kMse, full.x.topRows(5), mo);
    auto b = MonteCarloPredict(net, Task::kRegression, LossKind::kMse, full.x.topRows(5), mo);
    EXPECT_EQ(a.mean, b.mean);
    EXPECT_GT(a.stddev.maxCoeff(), 0.0f);
  }
  EXPECT_GT(rates[0], rates[1] + 0.05) << "40 rows: " << rates[0] << ", 4000 rows: " << rates[1];
}

}  // namespace
}  // namespace dropnet::engine
