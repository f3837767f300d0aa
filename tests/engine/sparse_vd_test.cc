// Tests for sparse variational dropout (sparse_vd.h): the local reparameterisation's mean and
// variance (x theta + b and x^2 sigma^2) within sampling bounds, gradients with the noise frozen,
// the KL approximation's value (the paper's constants) and gradient, pruning at log alpha > 3 in
// kEval and kMonteCarlo, the reported sparsity, the three modes, Monte-Carlo prediction and a
// training run in which the KL term prunes most weights of an over-sized layer.
#include "server/engine/sparse_vd.h"

#include <cmath>

#include <gtest/gtest.h>

#include "server/engine/mc.h"
#include "server/engine/network.h"
#include "server/engine/trainer.h"
#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

LayerConfig SparseVd(int units, double log_sigma2 = -10) {
  LayerConfig c;
  c.type = "sparse_vd";
  c.units = units;
  c.log_sigma2_init = log_sigma2;
  return c;
}

std::vector<Matrix> ZeroGrads(const Layer& l) {
  std::vector<Matrix> g;
  for (const auto& p : l.params()) g.push_back(Matrix::Zero(p.value.rows(), p.value.cols()));
  return g;
}

TEST(SparseVdTest, LocalReparameterisationMomentsWithinSamplingBounds) {
  auto layer = MakeLayer(SparseVd(3, -2.0), Shape{{4}}, 1);
  layer->params()[1].value = UniformMatrix(4, 3, -3, 0, 2);  // log sigma^2
  layer->params()[2].value = UniformMatrix(1, 3, -1, 1, 3);
  const int64_t n = 20000;
  const Matrix row = UniformMatrix(1, 4, -1, 1, 4);
  const Matrix x = row.replicate(n, 1);
  Matrix y;
  LayerCache cache;
  layer->Forward(x, MakeContext(Mode::kTrain, 7), &cache, &y);
  const Eigen::RowVectorXd mean_expected =
      (row * layer->params()[0].value + layer->params()[2].value).cast<double>();
  const Eigen::RowVectorXd var_expected =
      (row.cwiseProduct(row) * layer->params()[1].value.array().exp().matrix()).cast<double>();
  const Eigen::RowVectorXd mean = y.cast<double>().colwise().mean();
  for (int j = 0; j < 3; ++j) {
    const double var = (y.col(j).cast<double>().array() - mean(j)).square().sum() / (n - 1);
    // Mean: 6 standard errors. Variance: sd of the sample variance is var sqrt(2/(n-1)).
    EXPECT_NEAR(mean(j), mean_expected(j), 6 * std::sqrt(var_expected(j) / n)) << j;
    EXPECT_NEAR(var, var_expected(j), 6 * var_expected(j) * std::sqrt(2.0 / (n - 1))) << j;
  }
}

TEST(SparseVdTest, GradientsWithFrozenNoise) {
  auto layer = MakeLayer(SparseVd(4, -3.0), Shape{{5}}, 2);
  layer->params()[1].value = UniformMatrix(5, 4, -4, -1, 5);
  layer->params()[2].value = UniformMatrix(1, 4, -1, 1, 6);
  const Matrix x = UniformMatrix(6, 5, -1, 1, 3);
  const GradCheckOptions opt{.eps = 1e-3, .rtol = 2e-2, .atol = 2e-3};
  ExpectGradientsOnOneAndTwoThreads(layer.get(), x, MakeContext(Mode::kTrain, 3, 1), opt, 8, 70);
}

TEST(SparseVdTest, KlApproximationValueAndGradient) {
  auto layer = MakeLayer(SparseVd(3), Shape{{4}}, 2);
  auto* vd = dynamic_cast<SparseVdDense*>(layer.get());
  ASSERT_NE(vd, nullptr);
  layer->params()[0].value = UniformMatrix(4, 3, -1, 1, 1);
  layer->params()[1].value = UniformMatrix(4, 3, -6, 2, 2);
  const int64_t n = 10;
  // Hand-computed: -KL ~= k1 sigmoid(k2 + k3 la) - 0.5 log1p(1/alpha) - k1.
  const Matrix la = vd->LogAlpha();
  double expected = 0;
  for (int64_t i = 0; i < la.size(); ++i) {
    const double a = la.data()[i];
    expected += -(0.63576 / (1 + std::exp(-(1.87320 + 1.48695 * a))) -
                  0.5 * std::log1p(std::exp(-a)) - 0.63576);
  }
  auto g = ZeroGrads(*layer);
  EXPECT_NEAR(layer->Regularize(n, g), expected / n, 1e-6);
  // The KL decreases in alpha, and tends to 0 for large alpha.
  layer->params()[1].value.setConstant(8);
  auto g0 = ZeroGrads(*layer);
  const double small = layer->Regularize(n, g0);
  EXPECT_LT(small, expected / n);
  EXPECT_GE(small, 0.0);
  // Gradient against central differences of the value.
  layer->params()[1].value = UniformMatrix(4, 3, -6, 2, 2);
  auto grads = ZeroGrads(*layer);
  layer->Regularize(n, grads);
  auto f = [&] {
    auto scratch = ZeroGrads(*layer);
    return layer->Regularize(n, scratch);
  };
  GradCheckOptions opt;
  opt.eps = 1e-3;
  opt.atol = 1e-4;
  GradCheckResult r;
  for (int k = 0; k < 2; ++k)
    CompareWithCentralDifferences(f, &layer->params()[k].value, grads[k], opt,
                                  layer->params()[k].name, &r);
  EXPECT_EQ(r.mismatches, 0) << r.report;
  // kl_weight scales it.
  LayerConfig c = SparseVd(3);
  c.kl_weight = 0;
  auto off = MakeLayer(c, Shape{{4}}, 2);
  auto g2 = ZeroGrads(*off);
  EXPECT_EQ(off->Regularize(n, g2), 0.0);
}

TEST(SparseVdTest, PrunesLargeAlphaInEvalAndMonteCarlo) {
  auto layer = MakeLayer(SparseVd(6), Shape{{5}}, 4);
  auto* vd = dynamic_cast<SparseVdDense*>(layer.get());
  Matrix& theta = layer->params()[0].value;
  Matrix& ls2 = layer->params()[1].value;
  theta = UniformMatrix(5, 6, 0.5, 1.0, 1);
  ls2.setConstant(-8);
  // Prune 9 of the 30 weights: log alpha = 5 - log(theta^2) > 3.
  Matrix expected_keep = Matrix::Ones(5, 6);
  for (int i = 0; i < 9; ++i) {
    ls2(i % 5, i / 5 + i % 2) = 5;
    expected_keep(i % 5, i / 5 + i % 2) = 0;
  }
  const double pruned = 1.0 - expected_keep.sum() / 30.0;
  EXPECT_EQ(vd->KeepMask(), expected_keep);
  EXPECT_NEAR(vd->Sparsity(), pruned, 1e-12);
  const Matrix x = UniformMatrix(4, 5, -1, 1, 2);
  Matrix y;
  layer->Forward(x, MakeContext(Mode::kEval, 1), nullptr, &y);
  const Matrix expected =
      x * theta.cwiseProduct(expected_keep) + layer->params()[2].value.replicate(4, 1);
  EXPECT_LE((y - expected).cwiseAbs().maxCoeff(), 1e-5);
  // MC: zero-mean noise of the unpruned weights only (sigma^2 = e^-8 is tiny).
  Matrix ym;
  layer->Forward(x, MakeContext(Mode::kMonteCarlo, 1), nullptr, &ym);
  EXPECT_LE((ym - expected).cwiseAbs().maxCoeff(), 0.1);
  EXPECT_NE(ym, y);
  // Train uses every weight, pruned or not.
  Matrix yt;
  LayerCache cache;
  layer->Forward(x, MakeContext(Mode::kTrain, 1), &cache, &yt);
  EXPECT_GT((yt - expected).cwiseAbs().maxCoeff(), 0.05);
  ASSERT_EQ(vd->LearnedRates().size(), 1u);
  EXPECT_GT(vd->LearnedRates()[0], 0.0);
  EXPECT_LT(vd->LearnedRates()[0], 1.0);
}

TEST(SparseVdTest, ModesSeedsAndValidation) {
  auto layer = MakeLayer(SparseVd(5, -4), Shape{{6}}, 1);
  layer->params()[0].value = test_support::AwayFromZero(6, 5, 0.3, 1.0, 4);
  ASSERT_EQ(layer->Sparsity(), 0.0);
  EXPECT_TRUE(layer->IsStochastic());
  const Matrix x = UniformMatrix(7, 6, -1, 1, 3);
  auto run = [&](Mode mode, uint64_t seed, int threads) {
    return RunLayer(*layer, x, MakeContext(mode, seed, 0, kWholeBatch, threads));
  };
  EXPECT_EQ(run(Mode::kEval, 1, 1), run(Mode::kEval, 2, 2));
  EXPECT_EQ(run(Mode::kTrain, 1, 1), run(Mode::kMonteCarlo, 1, 2)) << "nothing pruned yet";
  EXPECT_NE(run(Mode::kMonteCarlo, 1, 1), run(Mode::kMonteCarlo, 2, 1));
  EXPECT_THROW(MakeLayer(SparseVd(0), Shape{{6}}, 1), InvalidArgument);
  EXPECT_THROW(MakeLayer(SparseVd(3), Shape{{2, 3}}, 1), InvalidArgument);
  LayerConfig c = SparseVd(3);
  c.kl_weight = -1;
  EXPECT_THROW(MakeLayer(c, Shape{{6}}, 1), InvalidArgument);
}

TEST(SparseVdTest, TrainingPrunesAnOversizedLayerAndKeepsAccuracy) {
  // Two informative features among 20; class = sign(x0 + x1).
  Dataset d;
  d.task = Task::kClassification;
  d.num_classes = 2;
  d.input_shape = Shape{{20}};
  d.x = UniformMatrix(2000, 20, -1, 1, 5);
  d.y.resize(2000, 1);
  for (int64_t r = 0; r < 2000; ++r) d.y(r, 0) = d.x(r, 0) + d.x(r, 1) > 0 ? 1.0f : 0.0f;
  NetworkSpec spec;
  spec.input = Shape{{20}};
  spec.seed = 1;
  LayerConfig relu;
  relu.type = "relu";
  spec.layers = {SparseVd(32), relu, SparseVd(2)};
  Network net(spec);
  TrainOptions o;
  o.epochs = 60;
  o.batch_size = 100;
  o.optimizer.learning_rate = 1e-2;
  o.seed = 2;
  o.threads = 2;
  Train(&net, Task::kClassification, LossKind::kCrossEntropy, d, o);
  const double sparsity = net.layer(0).Sparsity();
  EXPECT_GT(sparsity, 0.5) << "first layer";
  EXPECT_LT(net.layer(1).Sparsity(), 0.0) << "relu does not prune";
  const Matrix p = PredictEval(net, Task::kClassification, LossKind::kCrossEntropy, d.x);
  int correct = 0;
  for (int64_t r = 0; r < p.rows(); ++r) correct += (p(r, 1) > p(r, 0)) == (d.y(r, 0) > 0.5f);
  EXPECT_GE(correct, 1850);
  McOptions mo;
  mo.samples = 8;
  mo.seed = 3;
  auto a =
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, d.x.topRows(20), mo);
  mo.threads = 2;
  mo.memory_budget_bytes = 1;
  auto b =
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, d.x.topRows(20), mo);
  EXPECT_LE((a.mean - b.mean).cwiseAbs().maxCoeff(), 1e-6);
}

}  // namespace
}  // namespace dropnet::engine
