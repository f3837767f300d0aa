// Tests for the LSTM and GRU layers (recurrent.h): forward parity with PyTorch on fixed weights
// (fixtures written by fixtures/make_rnn_fixtures.py), gradient checks through time with the
// variational and zoneout masks frozen, zoneout's eval expectation against a reference
// implementation, variational masks constant across time steps with binomial bounds on their
// kept fraction, zoneout's keep-previous probability, the three modes, Monte-Carlo prediction
// and reproducibility across seeds, chunkings and thread counts, and a small training run.
#include "server/engine/recurrent.h"

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "server/engine/mc.h"
#include "server/engine/network.h"
#include "server/engine/trainer.h"
#include "tests/engine/test_util.h"

#ifndef DROPNET_RNN_FIXTURES_DIR
#error "DROPNET_RNN_FIXTURES_DIR must name tests/engine/fixtures"
#endif

namespace dropnet::engine {
namespace {

LayerConfig RnnConfig(const std::string& type, int units, bool sequences = false) {
  LayerConfig c;
  c.type = type;
  c.units = units;
  c.return_sequences = sequences;
  return c;
}

// ---- PyTorch parity ----

std::map<std::string, Matrix> ReadFixture(const std::string& name) {
  std::ifstream in(std::string(DROPNET_RNN_FIXTURES_DIR) + "/" + name);
  EXPECT_TRUE(in.good()) << "cannot open fixture " << name;
  std::map<std::string, Matrix> out;
  std::string header, values;
  while (std::getline(in, header)) {
    if (header.empty() || header[0] == '#') continue;
    std::getline(in, values);
    std::istringstream h(header), v(values);
    std::string key;
    h >> key;
    std::vector<int64_t> dims;
    for (int64_t d; h >> d;) dims.push_back(d);
    int64_t rows = dims[0], cols = 1;
    for (size_t i = 1; i < dims.size(); ++i) cols *= dims[i];
    Matrix m(rows, cols);
    for (int64_t i = 0; i < m.size(); ++i) {
      double x;
      v >> x;
      m.data()[i] = static_cast<float>(x);
    }
    out[key] = m;
  }
  return out;
}

void CheckParity(const std::string& type) {
  auto fx = ReadFixture(type + "_parity.txt");
  ASSERT_EQ(fx.count("output"), 1u);
  const Matrix& w_ih = fx["weight_ih_l0"];
  const int64_t f = w_ih.cols(), h = fx["weight_hh_l0"].cols();
  const int64_t b = fx["input"].rows(), t = fx["input"].cols() / f;
  for (bool sequences : {true, false}) {
    auto layer = MakeLayer(RnnConfig(type, static_cast<int>(h), sequences),
                           Shape{{static_cast<int>(t), static_cast<int>(f)}}, 7);
    layer->params()[0].value = w_ih.transpose();
    layer->params()[1].value = fx["weight_hh_l0"].transpose();
    layer->params()[2].value = fx["bias_ih_l0"].transpose();
    layer->params()[3].value = fx["bias_hh_l0"].transpose();
    for (Mode mode : {Mode::kEval, Mode::kMonteCarlo, Mode::kTrain}) {
      LayerCache cache;
      Matrix y;
      layer->Forward(fx["input"], MakeContext(mode, 3), &cache, &y);
      const Matrix expected = sequences ? fx["output"] : Matrix(fx["output"].rightCols(h));
      ASSERT_EQ(y.rows(), expected.rows());
      ASSERT_EQ(y.cols(), expected.cols());
      EXPECT_LE((y - expected).cwiseAbs().maxCoeff(), 2e-5)
          << type << " sequences=" << sequences << " mode " << ModeName(mode);
    }
    (void)b;
  }
}

TEST(RecurrentTest, LstmMatchesPyTorch) { CheckParity("lstm"); }
TEST(RecurrentTest, GruMatchesPyTorch) { CheckParity("gru"); }

// ---- gradients through time ----

struct GradCase {
  std::string type;
  bool sequences;
  double rate, recurrent_rate, zoneout_cell, zoneout_hidden;
};

class RecurrentGradientTest : public ::testing::TestWithParam<GradCase> {};

TEST_P(RecurrentGradientTest, BpttMatchesCentralDifferencesWithFrozenMasks) {
  const GradCase& g = GetParam();
  LayerConfig c = RnnConfig(g.type, 5, g.sequences);
  c.rate = g.rate;
  c.recurrent_rate = g.recurrent_rate;
  c.zoneout_cell = g.zoneout_cell;
  c.zoneout_hidden = g.zoneout_hidden;
  auto layer = MakeLayer(c, Shape{{6, 3}}, 11);
  // Larger weights than the default make the recurrence matter.
  for (auto& p : layer->params()) p.value *= 2.0f;
  const Matrix x = UniformMatrix(4, 18, -1.5, 1.5, 5);
  const GradCheckOptions opt{.eps = 2e-3, .rtol = 2e-2, .atol = 2e-3};
  ExpectGradientsOnOneAndTwoThreads(layer.get(), x, MakeContext(Mode::kTrain, 99, 4), opt, 17, 100);
}

INSTANTIATE_TEST_SUITE_P(Cells, RecurrentGradientTest,
                         ::testing::Values(GradCase{"lstm", false, 0, 0, 0, 0},
                                           GradCase{"lstm", true, 0, 0, 0, 0},
                                           GradCase{"lstm", true, 0.3, 0.3, 0.3, 0.3},
                                           GradCase{"lstm", false, 0.2, 0.4, 0.5, 0.2},
                                           GradCase{"gru", false, 0, 0, 0, 0},
                                           GradCase{"gru", true, 0, 0, 0, 0},
                                           GradCase{"gru", true, 0.3, 0.3, 0, 0.3},
                                           GradCase{"gru", false, 0.2, 0.4, 0, 0.5}),
                         [](const auto& info) {
                           const GradCase& g = info.param;
                           std::string s = g.type + (g.sequences ? "_seq" : "_last");
                           if (g.rate > 0) s += "_dropout_zoneout_" + std::to_string(info.index);
                           return s;
                         });

// ---- zoneout expectation in eval ----

// A double-precision reference of one cell over a whole sequence, with the eval expectation of
// zoneout (d = z). Weights in the layer's layout (F x G*H, H x G*H).
Matrix ReferenceEval(const Layer& layer, const Matrix& x, bool lstm, int t, int f, int h, double zc,
                     double zh, bool sequences) {
  const Eigen::MatrixXd wi = layer.params()[0].value.cast<double>();
  const Eigen::MatrixXd wh = layer.params()[1].value.cast<double>();
  const Eigen::RowVectorXd bi = layer.params()[2].value.cast<double>().row(0);
  const Eigen::RowVectorXd bh = layer.params()[3].value.cast<double>().row(0);
  auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  Matrix out(x.rows(), sequences ? t * h : h);
  for (int64_t r = 0; r < x.rows(); ++r) {
    Eigen::RowVectorXd hs = Eigen::RowVectorXd::Zero(h), cs = Eigen::RowVectorXd::Zero(h);
    for (int s = 0; s < t; ++s) {
      const Eigen::RowVectorXd xs = x.row(r).segment(s * f, f).cast<double>();
      const Eigen::RowVectorXd ai = xs * wi + bi, ah = hs * wh + bh;
      Eigen::RowVectorXd hn(h), cn(h);
      for (int j = 0; j < h; ++j) {
        if (lstm) {
          const double i = sig(ai(j) + ah(j)), fg = sig(ai(h + j) + ah(h + j));
          const double g = std::tanh(ai(2 * h + j) + ah(2 * h + j));
          const double o = sig(ai(3 * h + j) + ah(3 * h + j));
          const double ct = fg * cs(j) + i * g;
          hn(j) = o * std::tanh(ct);
          cn(j) = zc * cs(j) + (1 - zc) * ct;
        } else {
          const double rg = sig(ai(j) + ah(j)), z = sig(ai(h + j) + ah(h + j));
          const double n = std::tanh(ai(2 * h + j) + rg * ah(2 * h + j));
          hn(j) = (1 - z) * n + z * hs(j);
        }
      }
      hs = zh * hs + (1 - zh) * hn;
      if (lstm) cs = cn;
      if (sequences) out.row(r).segment(s * h, h) = hs.cast<float>();
    }
    if (!sequences) out.row(r) = hs.cast<float>();
  }
  return out;
}

TEST(RecurrentTest, ZoneoutEvalIsTheExpectation) {
  for (const std::string type : {"lstm", "gru"}) {
    for (bool sequences : {false, true}) {
      const bool lstm = type == "lstm";
      LayerConfig c = RnnConfig(type, 6, sequences);
      c.zoneout_cell = lstm ? 0.3 : 0.0;
      c.zoneout_hidden = 0.6;
      c.rate = 0.4;  // variational dropout: identity in eval
      c.recurrent_rate = 0.2;
      auto layer = MakeLayer(c, Shape{{7, 4}}, 23);
      for (auto& p : layer->params()) p.value *= 2.0f;
      const Matrix x = UniformMatrix(5, 28, -1, 1, 8);
      Matrix y;
      layer->Forward(x, MakeContext(Mode::kEval, 1), nullptr, &y);
      const Matrix ref = ReferenceEval(*layer, x, lstm, 7, 4, 6, c.zoneout_cell, 0.6, sequences);
      EXPECT_LE((y - ref).cwiseAbs().maxCoeff(), 1e-5) << type << " sequences=" << sequences;
      // And it differs from the same cell without zoneout.
      const Matrix plain = ReferenceEval(*layer, x, lstm, 7, 4, 6, 0, 0, sequences);
      EXPECT_GT((y - plain).cwiseAbs().maxCoeff(), 1e-2);
    }
  }
}

// ---- masks: constant across time, kept fractions, zoneout probability ----

// A GRU whose update gate is shut (z ~ 0) and whose state does not feed back: h_t = n_t =
// tanh(2 x_t * m) elementwise, so the input mask m shows directly in every step's output.
std::unique_ptr<Layer> TransparentGru(int units, int steps, double rate) {
  LayerConfig c = RnnConfig("gru", units, true);
  c.rate = rate;
  auto layer = MakeLayer(c, Shape{{steps, units}}, 1);
  auto& p = layer->params();
  const int h = units;
  p[0].value.setZero();
  p[0].value.rightCols(h) = Matrix::Identity(h, h) * 2.0f;
  p[1].value.setZero();
  p[2].value.setZero();
  p[2].value.middleCols(h, h).setConstant(-40.0f);  // z = sigmoid(-40)
  p[3].value.setZero();
  return layer;
}

TEST(RecurrentTest, VariationalInputMaskIsConstantAcrossStepsWithBinomialKeptFraction) {
  const int h = 32, t = 6;
  const int64_t rows = 200;
  for (double p : {0.1, 0.3, 0.5, 0.8}) {
    auto layer = TransparentGru(h, t, p);
    const Matrix x = Matrix::Constant(rows, t * h, 1.0f);
    for (Mode mode : {Mode::kTrain, Mode::kMonteCarlo}) {
      LayerCache cache;
      Matrix y;
      layer->Forward(x, MakeContext(mode, 5, 2), &cache, &y);
      int64_t kept = 0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int j = 0; j < h; ++j) {
          const float first = y(r, j);
          kept += first != 0.0f;
          for (int s = 1; s < t; ++s)
            ASSERT_EQ(y(r, s * h + j), first) << "row " << r << " unit " << j;
          // Kept inputs are scaled by 1/(1-p).
          if (first != 0.0f) {
            EXPECT_NEAR(first, std::tanh(2.0 / (1.0 - p)), 1e-5);
          }
        }
      }
      ExpectBinomial(kept, rows * h, 1 - p, "kept inputs");
    }
    Matrix y_eval;
    layer->Forward(x, MakeContext(Mode::kEval, 5), nullptr, &y_eval);
    EXPECT_TRUE((y_eval.array() == std::tanh(2.0f)).all()) << "eval: no dropout";
  }
}

TEST(RecurrentTest, VariationalRecurrentMaskIsConstantAcrossSteps) {
  // GRU with r = 1, z = 0, no input: h_t = tanh(1 + m (h_{t-1} / (1-q))). A dropped unit stays at
  // tanh(1) at every step; a kept one moves on from it.
  const int h = 32, t = 5;
  const int64_t rows = 200;
  for (double q : {0.2, 0.5, 0.7}) {
    LayerConfig c = RnnConfig("gru", h, true);
    c.recurrent_rate = q;
    auto layer = MakeLayer(c, Shape{{t, 2}}, 1);
    auto& p = layer->params();
    p[0].value.setZero();
    p[1].value.setZero();
    p[1].value.rightCols(h) = Matrix::Identity(h, h);
    p[2].value.setZero();
    p[2].value.leftCols(h).setConstant(40.0f);        // r = 1
    p[2].value.middleCols(h, h).setConstant(-40.0f);  // z = 0
    p[2].value.rightCols(h).setConstant(1.0f);
    p[3].value.setZero();
    Matrix y;
    layer->Forward(Matrix::Zero(rows, t * 2), MakeContext(Mode::kMonteCarlo, 8, 1), nullptr, &y);
    const float base = std::tanh(1.0f);
    int64_t dropped = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int j = 0; j < h; ++j) {
        ASSERT_FLOAT_EQ(y(r, j), base);
        const bool d = y(r, h + j) == base;
        dropped += d;
        for (int s = 2; s < t; ++s) EXPECT_EQ(y(r, s * h + j) == base, d) << "row " << r;
      }
    }
    ExpectBinomial(dropped, rows * h, q, "dropped recurrent units");
  }
}

TEST(RecurrentTest, ZoneoutKeepsThePreviousStateWithProbabilityZ) {
  // h~_t = tanh(1) at every step, h_0 = 0: a unit is still 0 at step t only if all of steps
  // 1..t were zoned out, with probability z^t.
  const int h = 40, t = 3;
  const int64_t rows = 250;
  for (const std::string type : {"gru", "lstm"}) {
    for (double z : {0.2, 0.5, 0.7}) {
      LayerConfig c = RnnConfig(type, h, true);
      c.zoneout_hidden = z;
      auto layer = MakeLayer(c, Shape{{t, 1}}, 1);
      auto& p = layer->params();
      p[0].value.setZero();
      p[1].value.setZero();
      p[3].value.setZero();
      if (type == "gru") {
        p[2].value.setConstant(1.0f);
        p[2].value.middleCols(h, h).setConstant(-40.0f);
      } else {
        // i = 1, f = 0, g = tanh(1)... o = 1: h~ = tanh(tanh(1)) at every step.
        p[2].value.setConstant(40.0f);
        p[2].value.middleCols(h, h).setConstant(-40.0f);
        p[2].value.middleCols(2 * h, h).setConstant(1.0f);
      }
      Matrix y;
      layer->Forward(Matrix::Zero(rows, t), MakeContext(Mode::kMonteCarlo, 4), nullptr, &y);
      for (int s = 0; s < t; ++s) {
        const int64_t zeros = (y.middleCols(s * h, h).array() == 0.0f).count();
        ExpectBinomial(zeros, rows * h, std::pow(z, s + 1),
                       type + " units still zero at step " + std::to_string(s + 1));
      }
      // Eval: the expectation, h_t = (1 - z^t) h~.
      Matrix ye;
      layer->Forward(Matrix::Zero(1, t), MakeContext(Mode::kEval, 4), nullptr, &ye);
      const float target = type == "gru" ? std::tanh(1.0f) : std::tanh(std::tanh(1.0f));
      for (int s = 0; s < t; ++s)
        EXPECT_NEAR(ye(0, s * h), (1 - std::pow(z, s + 1)) * target, 1e-5);
    }
  }
}

// ---- modes and reproducibility ----

TEST(RecurrentTest, ModesSeedsAndThreads) {
  for (const std::string type : {"lstm", "gru"}) {
    LayerConfig c = RnnConfig(type, 8, true);
    c.rate = 0.3;
    c.recurrent_rate = 0.3;
    c.zoneout_hidden = 0.2;
    if (type == "lstm") c.zoneout_cell = 0.2;
    auto layer = MakeLayer(c, Shape{{5, 3}}, 3);
    EXPECT_TRUE(layer->IsStochastic());
    const Matrix x = UniformMatrix(9, 15, -1, 1, 2);
    auto run = [&](Mode mode, uint64_t seed, int threads) {
      return RunLayer(*layer, x, MakeContext(mode, seed, 0, kWholeBatch, threads));
    };
    EXPECT_EQ(run(Mode::kEval, 1, 1), run(Mode::kEval, 2, 2));
    EXPECT_EQ(run(Mode::kMonteCarlo, 1, 1), run(Mode::kMonteCarlo, 1, 2));
    EXPECT_EQ(run(Mode::kMonteCarlo, 1, 1), run(Mode::kTrain, 1, 1)) << "same address, same masks";
    EXPECT_NE(run(Mode::kMonteCarlo, 1, 1), run(Mode::kMonteCarlo, 2, 1));
    EXPECT_NE(run(Mode::kMonteCarlo, 1, 1), run(Mode::kEval, 1, 1));
    // A row's masks do not depend on the other rows of the batch.
    Matrix y_all = run(Mode::kMonteCarlo, 6, 1), y_top;
    layer->Forward(x.topRows(4), MakeContext(Mode::kMonteCarlo, 6), nullptr, &y_top);
    EXPECT_EQ(y_top, y_all.topRows(4));
    // Large batches run in row blocks without a cache: the same masks as one kTrain pass.
    const Matrix big = UniformMatrix(700, 15, -1, 1, 12);
    Matrix y_blocks, y_whole;
    LayerCache cache;
    layer->Forward(big, MakeContext(Mode::kMonteCarlo, 3, 0, kWholeBatch, 2), nullptr, &y_blocks);
    layer->Forward(big, MakeContext(Mode::kTrain, 3), &cache, &y_whole);
    EXPECT_LE((y_blocks - y_whole).cwiseAbs().maxCoeff(), 1e-5);
  }
  LayerConfig plain = RnnConfig("lstm", 4);
  EXPECT_FALSE(MakeLayer(plain, Shape{{3, 2}}, 1)->IsStochastic());
}

TEST(RecurrentTest, RejectsBadConfigurations) {
  EXPECT_THROW(MakeLayer(RnnConfig("lstm", 4), Shape{{12}}, 1), InvalidArgument);
  EXPECT_THROW(MakeLayer(RnnConfig("lstm", 0), Shape{{3, 4}}, 1), InvalidArgument);
  LayerConfig c = RnnConfig("gru", 4);
  c.zoneout_cell = 0.1;
  EXPECT_THROW(MakeLayer(c, Shape{{3, 4}}, 1), InvalidArgument);
  c = RnnConfig("lstm", 4);
  c.recurrent_rate = 1.0;
  EXPECT_THROW(MakeLayer(c, Shape{{3, 4}}, 1), InvalidArgument);
  c.recurrent_rate = 0;
  c.zoneout_hidden = -0.1;
  EXPECT_THROW(MakeLayer(c, Shape{{3, 4}}, 1), InvalidArgument);
  const auto out = MakeLayer(RnnConfig("lstm", 4, true), Shape{{3, 5}}, 1)->output_shape();
  EXPECT_EQ(out, (Shape{{3, 4}}));
}

// ---- networks: Monte Carlo and training ----

NetworkSpec SequenceClassifier(const std::string& type, double zoneout, double rate) {
  NetworkSpec spec;
  spec.input = Shape{{6, 2}};
  spec.seed = 3;
  LayerConfig r = RnnConfig(type, 16);
  r.zoneout_hidden = zoneout;
  if (type == "lstm") r.zoneout_cell = zoneout;
  r.rate = rate;
  r.recurrent_rate = rate;
  LayerConfig d;
  d.type = "dense";
  d.units = 2;
  LayerConfig s;
  s.type = "softmax";
  spec.layers = {r, d, s};
  return spec;
}

// Class 1 when the first feature summed over the sequence is positive.
Dataset SignTask(int64_t n, uint64_t seed) {
  Dataset d;
  d.task = Task::kClassification;
  d.num_classes = 2;
  d.input_shape = Shape{{6, 2}};
  d.x = UniformMatrix(n, 12, -1, 1, seed);
  d.y.resize(n, 1);
  for (int64_t r = 0; r < n; ++r) {
    double s = 0;
    for (int t = 0; t < 6; ++t) s += d.x(r, 2 * t);
    d.y(r, 0) = s > 0 ? 1.0f : 0.0f;
  }
  return d;
}

TEST(RecurrentTest, MonteCarloPredictIsReproducibleAndChunkingInvariant) {
  for (const std::string type : {"lstm", "gru"}) {
    Network net(SequenceClassifier(type, 0.3, 0.2));
    EXPECT_EQ(net.FirstStochasticLayer(), 0);
    const Matrix x = UniformMatrix(7, 12, -1, 1, 4);
    McOptions o;
    o.samples = 20;
    o.seed = 9;
    const McResult a = MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
    o.memory_budget_bytes = 1;  // one sample per chunk
    o.threads = 2;
    const McResult b = MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
    EXPECT_LE((a.mean - b.mean).cwiseAbs().maxCoeff(), 1e-6);
    EXPECT_GT(a.stddev.maxCoeff(), 0.0f) << "samples differ";
    EXPECT_TRUE((a.mutual_information.array() >= -1e-6f).all());
    o.seed = 10;
    const McResult c = MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
    EXPECT_GT((a.mean - c.mean).cwiseAbs().maxCoeff(), 0.0f);
    // Zoneout only: still stochastic, and the MC mean stays close to the eval expectation.
    Network zo(SequenceClassifier(type, 0.2, 0.0));
    o.samples = 400;
    const McResult m = MonteCarloPredict(zo, Task::kClassification, LossKind::kCrossEntropy, x, o);
    const Matrix ev = PredictEval(zo, Task::kClassification, LossKind::kCrossEntropy, x);
    EXPECT_LE((m.mean - ev).cwiseAbs().maxCoeff(), 0.05);
  }
}

TEST(RecurrentTest, TrainsOnASequenceTask) {
  const Dataset train = SignTask(2000, 1), test = SignTask(500, 2);
  for (const std::string type : {"lstm", "gru"}) {
    Network net(SequenceClassifier(type, 0.1, 0.1));
    TrainOptions o;
    o.epochs = 8;
    o.batch_size = 32;
    o.optimizer.type = OptimizerKind::kAdam;
    o.optimizer.learning_rate = 1e-2;
    o.seed = 1;
    o.threads = 2;
    Train(&net, Task::kClassification, LossKind::kCrossEntropy, train, o);
    const Matrix p = PredictEval(net, Task::kClassification, LossKind::kCrossEntropy, test.x);
    int correct = 0;
    for (int64_t r = 0; r < p.rows(); ++r) correct += (p(r, 1) > p(r, 0)) == (test.y(r, 0) > 0.5f);
    EXPECT_GE(correct, 450) << type;
  }
}

}  // namespace
}  // namespace dropnet::engine
