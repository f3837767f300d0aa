// Tests for DropConnect (dropconnect.h): weight masks within binomial bounds at several rates,
// per-example and batch-shared masks, stored weights never modified, E[y] = the mean-weight
// output, Wan et al.'s moment-matching inference against the Monte-Carlo moments, eval
// semantics, reproducibility across seeds, threads and chunking, gradients with frozen masks, and
// Monte-Carlo prediction through a network.
#include "server/engine/dropconnect.h"

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/engine/mc.h"
#include "server/engine/network.h"
#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

// The layer under test draws its masks as the layer at index 2.
Context LayerContext(Mode mode, uint64_t seed, uint64_t stream = 0,
                     int64_t rows_per_stream = kWholeBatch, int threads = 1) {
  return MakeContext(mode, seed, stream, rows_per_stream, threads, /*layer=*/2);
}
std::unique_ptr<DropConnectDense> Make(double rate, int in, int units, bool shared = false,
                                       const std::string& activation = "",
                                       bool moment_matching = false) {
  LayerConfig c;
  c.type = "drop_connect";
  c.rate = rate;
  c.units = units;
  c.drop_connect_shared = shared;
  c.activation = activation;
  c.moment_matching = moment_matching;
  auto layer = MakeLayer(c, Shape{{in}}, 5);
  auto* dc = dynamic_cast<DropConnectDense*>(layer.get());
  EXPECT_NE(dc, nullptr);
  layer.release();
  auto out = std::unique_ptr<DropConnectDense>(dc);
  out->params()[1].value = UniformMatrix(1, units, -0.5, 0.5, 8);
  return out;
}

class DropConnectRateTest : public ::testing::TestWithParam<double> {};

TEST_P(DropConnectRateTest, MaskKeepsOneMinusPWithinBinomialBound) {
  const double p = GetParam();
  auto layer = Make(p, 300, 200);
  EXPECT_NEAR(layer->EffectiveRate(), p, 1.0 / 65536);
  const double q = 1.0 - layer->EffectiveRate();
  int64_t kept = 0, n = 0;
  for (int64_t row = 0; row < 5; ++row) {
    const Matrix m = layer->MaskFor(LayerContext(Mode::kTrain, 3), row);
    const int64_t k = (m.array() != 0.0f).count();
    EXPECT_EQ((m.array() == static_cast<float>(1.0 / q)).count(), k);
    kept += k;
    n += m.size();
  }
  EXPECT_LE(std::abs(kept - n * q), 5.0 * std::sqrt(n * q * (1 - q))) << kept << " of " << n;
}

TEST_P(DropConnectRateTest, ExpectedOutputIsTheMeanWeightOutput) {
  const double p = GetParam();
  const int in = 30, units = 8;
  const int64_t samples = 4000;
  auto layer = Make(p, in, units);
  const Matrix x1 = UniformMatrix(1, in, -1, 1, 4);
  const Matrix x = x1.replicate(samples, 1);  // one example, a different mask per row
  Matrix y, mean_weights;
  layer->Forward(x, LayerContext(Mode::kMonteCarlo, 6), nullptr, &y);
  layer->Forward(x1, LayerContext(Mode::kEval, 6), nullptr, &mean_weights);
  const Matrix& w = layer->params()[0].value;
  const double pe = layer->EffectiveRate();
  for (int j = 0; j < units; ++j) {
    double var = 0;
    for (int i = 0; i < in; ++i) var += std::pow(x1(0, i) * w(i, j), 2);
    var *= pe / (1 - pe);
    const double mean = y.col(j).cast<double>().mean();
    EXPECT_NEAR(mean, mean_weights(0, j), 5.0 * std::sqrt(var / samples)) << "unit " << j;
    const double sample_var =
        (y.col(j).cast<double>().array() - mean).square().sum() / (samples - 1);
    EXPECT_NEAR(sample_var, var, 0.15 * var) << "unit " << j;  // ~7 sd of the sample variance
  }
}

INSTANTIATE_TEST_SUITE_P(Rates, DropConnectRateTest, ::testing::Values(0.1, 0.3, 0.5, 0.8));

TEST(DropConnectTest, PerExampleMasksAreTheStatedFunctionAndWeightsStayUntouched) {
  auto layer = Make(0.5, 12, 7);
  const Matrix w0 = layer->params()[0].value;
  const Matrix x = UniformMatrix(4, 12, -1, 1, 2);
  const Context ctx = LayerContext(Mode::kTrain, 9, 5, 4);
  LayerCache cache;
  cache.threads = 1;
  Matrix y;
  layer->Forward(x, ctx, &cache, &y);
  std::vector<Matrix> grads(2);
  Matrix dx;
  layer->Backward(Matrix::Ones(4, 7), cache, grads, &dx);
  EXPECT_TRUE(layer->params()[0].value == w0);  // never modified in place
  for (int64_t r = 0; r < 4; ++r) {
    const Matrix m = layer->MaskFor(ctx, r);
    const Matrix want = x.row(r) * w0.cwiseProduct(m) + layer->params()[1].value;
    EXPECT_LE((y.row(r) - want).cwiseAbs().maxCoeff(), 1e-5f) << r;
    if (r > 0) EXPECT_FALSE(m == layer->MaskFor(ctx, r - 1));  // each example its own mask
  }
}

TEST(DropConnectTest, SharedMasksAreOnePerStream) {
  auto layer = Make(0.5, 12, 7, /*shared=*/true);
  const Matrix x = UniformMatrix(6, 12, -1, 1, 2);
  const Context ctx = LayerContext(Mode::kMonteCarlo, 9, 0, 3);  // two streams of three rows
  Matrix y;
  layer->Forward(x, ctx, nullptr, &y);
  const Matrix m0 = layer->MaskFor(ctx, 0);
  EXPECT_TRUE(m0 == layer->MaskFor(ctx, 2));
  EXPECT_FALSE(m0 == layer->MaskFor(ctx, 3));
  for (int64_t r = 0; r < 6; ++r) {
    const Matrix m = layer->MaskFor(ctx, r);
    const Matrix want =
        x.row(r) * layer->params()[0].value.cwiseProduct(m) + layer->params()[1].value;
    EXPECT_LE((y.row(r) - want).cwiseAbs().maxCoeff(), 1e-5f) << r;
  }
}

TEST(DropConnectTest, EvalUsesTheMeanWeights) {
  for (const char* act : {"", "relu", "sigmoid", "tanh"}) {
    auto layer = Make(0.4, 10, 5, false, act);
    const Matrix x = UniformMatrix(3, 10, -1, 1, 3);
    Matrix y;
    layer->Forward(x, LayerContext(Mode::kEval, 1), nullptr, &y);
    Matrix z = x * layer->params()[0].value;
    z.rowwise() += layer->params()[1].value.row(0);
    const std::string a = act;
    Matrix want = a == "relu" ? Matrix(z.cwiseMax(0.0f))
                  : a == "sigmoid"
                      ? Matrix(z.unaryExpr([](float v) { return 1 / (1 + std::exp(-v)); }))
                  : a == "tanh" ? Matrix(z.array().tanh().matrix())
                                : z;
    EXPECT_LE((y - want).cwiseAbs().maxCoeff(), 1e-5f) << act;
  }
}

TEST(DropConnectTest, MomentMatchingMatchesTheMonteCarloAverage) {
  // With many inputs the pre-activation is close to Gaussian (Wan et al.'s approximation), so
  // E[relu(u)] from the moments matches the average over sampled masks.
  const int in = 400, units = 6;
  const int64_t samples = 8000;
  for (const char* act : {"", "relu", "sigmoid", "tanh"}) {
    auto layer = Make(0.5, in, units, false, act, /*moment_matching=*/true);
    const Matrix x1 = UniformMatrix(1, in, 0, 1, 7);
    Matrix mm, mc;
    layer->Forward(x1, LayerContext(Mode::kEval, 1), nullptr, &mm);
    layer->Forward(x1.replicate(samples, 1), LayerContext(Mode::kMonteCarlo, 2), nullptr, &mc);
    const Matrix mc_mean = mc.colwise().mean();
    // Tolerance: 5 sd of the MC mean, plus the approximation (probit for sigmoid/tanh, Gaussian
    // for the sum) at 0.01.
    for (int j = 0; j < units; ++j) {
      const double sd = std::sqrt((mc.col(j).array() - mc_mean(0, j)).square().mean() / samples);
      EXPECT_NEAR(mm(0, j), mc_mean(0, j), 5 * sd + 0.01) << act << " unit " << j;
    }
    if (std::string(act).empty()) {
      Matrix plain;
      auto off = Make(0.5, in, units, false, act, false);
      off->params() = layer->params();
      off->Forward(x1, LayerContext(Mode::kEval, 1), nullptr, &plain);
      EXPECT_LE((plain - mm).cwiseAbs().maxCoeff(), 1e-5f);  // linear: E[u] = mu exactly
    }
  }
}

TEST(DropConnectTest, GradientsMatchCentralDifferencesWithFrozenMasks) {
  for (bool shared : {false, true}) {
    for (const char* act : {"", "tanh", "sigmoid"}) {
      auto layer = Make(0.5, 9, 6, shared, act);
      auto r = CheckLayerGradients(layer.get(), UniformMatrix(5, 9, -1, 1, 4),
                                   LayerContext(Mode::kTrain, 21, 3, 2, 2), GradCheckOptions{}, 8);
      EXPECT_EQ(r.mismatches, 0) << "shared " << shared << " " << act << "\n" << r.report;
      EXPECT_EQ(r.checked, 5 * 9 + 9 * 6 + 6);
    }
  }
  // ReLU: inputs that keep the pre-activations away from the kink.
  auto layer = Make(0.3, 9, 6, false, "relu");
  layer->params()[1].value.setConstant(0.3f);
  auto r = CheckLayerGradients(layer.get(), UniformMatrix(5, 9, 0.2, 1, 4),
                               LayerContext(Mode::kTrain, 21), GradCheckOptions{}, 8);
  EXPECT_EQ(r.mismatches, 0) << r.report;
}

TEST(DropConnectTest, SameAddressSameOutputWhateverTheThreadsOrChunking) {
  for (bool shared : {false, true}) {
    auto layer = Make(0.5, 20, 9, shared, "relu");
    const int64_t b = 4;
    const Matrix x = UniformMatrix(3 * b, 20, -1, 1, 1);
    Matrix a1, a3, chunk, other;
    layer->Forward(x, LayerContext(Mode::kMonteCarlo, 4, 0, b, 1), nullptr, &a1);
    layer->Forward(x, LayerContext(Mode::kMonteCarlo, 4, 0, b, 3), nullptr, &a3);
    EXPECT_TRUE(a1 == a3) << shared;
    layer->Forward(x.middleRows(b, 2 * b), LayerContext(Mode::kMonteCarlo, 4, 1, b, 2), nullptr,
                   &chunk);
    EXPECT_LE((chunk - a1.middleRows(b, 2 * b)).cwiseAbs().maxCoeff(), 1e-6f) << shared;
    layer->Forward(x, LayerContext(Mode::kMonteCarlo, 5, 0, b, 1), nullptr, &other);
    EXPECT_FALSE(a1 == other) << shared;
    // Backward with 1 and 3 threads.
    std::vector<Matrix> g1(2), g3(2);
    Matrix dx1, dx3;
    for (int threads : {1, 3}) {
      LayerCache cache;
      cache.threads = threads;
      Matrix y;
      layer->Forward(x, LayerContext(Mode::kTrain, 4, 0, b, threads), &cache, &y);
      layer->Backward(Matrix::Ones(3 * b, 9), cache, threads == 1 ? g1 : g3,
                      threads == 1 ? &dx1 : &dx3);
    }
    EXPECT_LE((g1[0] - g3[0]).cwiseAbs().maxCoeff(), 1e-5f);
    EXPECT_LE((dx1 - dx3).cwiseAbs().maxCoeff(), 1e-6f);
  }
}

TEST(DropConnectTest, RejectsBadOptions) {
  LayerConfig c;
  c.type = "drop_connect";
  c.units = 4;
  c.rate = 1.0;
  EXPECT_THROW(MakeLayer(c, Shape{{3}}, 1), InvalidArgument);
  c.rate = 0.5;
  c.activation = "softplus";
  EXPECT_THROW(MakeLayer(c, Shape{{3}}, 1), InvalidArgument);
  c.activation = "relu";
  EXPECT_THROW(MakeLayer(c, Shape{{1, 3, 3}}, 1), InvalidArgument);  // needs a flatten
  c.units = 0;
  EXPECT_THROW(MakeLayer(c, Shape{{3}}, 1), InvalidArgument);
}

TEST(DropConnectNetworkTest, TrainsAndPredictsInEveryMode) {
  for (bool shared : {false, true}) {
    NetworkSpec spec;
    spec.input = Shape{{10}};
    spec.seed = 2;
    LayerConfig dc, out;
    dc.type = "drop_connect";
    dc.units = 16;
    dc.rate = 0.5;
    dc.activation = "relu";
    dc.drop_connect_shared = shared;
    out.type = "dense";
    out.units = 3;
    spec.layers = {dc, out};
    Network net(spec);
    EXPECT_EQ(net.FirstStochasticLayer(), 0);
    EXPECT_EQ(net.ParameterCount(), 10 * 16 + 16 + 16 * 3 + 3);
    const Matrix x = UniformMatrix(6, 10, -1, 1, 3);
    Context ctx = LayerContext(Mode::kTrain, 1, 0, 6);
    ForwardCache cache;
    net.Forward(x, ctx, &cache);
    Gradients grads;
    net.Backward(Matrix::Ones(6, 3), cache, &grads);
    EXPECT_GT(grads[0].squaredNorm(), 0);
    ctx.mode = Mode::kEval;
    EXPECT_TRUE(net.Forward(x, ctx) == net.Forward(x, ctx));

    McOptions mo;
    mo.samples = 30;
    mo.seed = 8;
    const McResult a =
        MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, mo);
    mo.threads = 2;
    mo.memory_budget_bytes = 2048;
    const McResult b =
        MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, mo);
    EXPECT_LE((a.mean - b.mean).cwiseAbs().maxCoeff(), 1e-5f) << shared;
    EXPECT_GT(a.stddev.maxCoeff(), 0.0f) << shared;
    EXPECT_GT(a.mutual_information.maxCoeff(), 0.0f) << shared;
  }
}

}  // namespace
}  // namespace dropnet::engine
