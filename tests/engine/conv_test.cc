// Tests for convolution and pooling (conv.h, pooling.h): parity with PyTorch (forward, input and
// weight gradients within 1e-4 on the committed fixtures of fixtures/make_torch_fixtures.py),
// numerical gradient checks, output shapes and validation (PlanLayer agrees with the built
// layers), independence of the thread count, and BatchNorm over the channels of conv outputs.
#include "server/engine/conv.h"
#include "server/engine/pooling.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/engine/layers.h"
#include "server/engine/network.h"
#include "tests/engine/test_util.h"

#ifndef DROPNET_FIXTURE_DIR
#error "DROPNET_FIXTURE_DIR must point at tests/engine/fixtures"
#endif

namespace dropnet::engine {
namespace {

Context TrainContext(int threads = 1) {
  return MakeContext(Mode::kTrain, 1, 0, kWholeBatch, threads);
}

// One fixture file: `key values...` lines.
struct Fixture {
  std::map<std::string, std::vector<double>> values;
  std::string type;

  int Int(const std::string& key) const { return static_cast<int>(values.at(key).at(0)); }
  Matrix Rows(const std::string& key, int64_t rows) const {
    const auto& v = values.at(key);
    EXPECT_EQ(v.size() % rows, 0u) << key;
    Matrix m(rows, static_cast<int64_t>(v.size()) / rows);
    for (size_t i = 0; i < v.size(); ++i) m.data()[i] = static_cast<float>(v[i]);
    return m;
  }
};

Fixture LoadFixture(const std::string& name) {
  const std::string path = std::string(DROPNET_FIXTURE_DIR) + "/torch_" + name + ".txt";
  std::ifstream in(path);
  Fixture f;
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream s(line);
    std::string key;
    s >> key;
    if (key == "type") {
      s >> f.type;
      continue;
    }
    std::vector<double>& v = f.values[key];
    double d;
    while (s >> d) v.push_back(d);
  }
  return f;
}

void ExpectNear(const Matrix& got, const Matrix& want, double tol, const std::string& what) {
  ASSERT_EQ(got.rows(), want.rows()) << what;
  ASSERT_EQ(got.cols(), want.cols()) << what;
  double worst = 0;
  for (int64_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(got.data()[i]) - want.data()[i]));
  EXPECT_LE(worst, tol) << what << ": max abs difference " << worst;
}

class TorchParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TorchParityTest, ForwardAndGradientsMatchPyTorch) {
  const Fixture f = LoadFixture(GetParam());
  ASSERT_FALSE(f.type.empty());
  LayerConfig c;
  c.type = f.type;
  Shape input;
  for (double d : f.values.at("input")) input.dims.push_back(static_cast<int>(d));
  const bool conv = f.values.count("filters") > 0;
  if (conv) {
    c.filters = f.Int("filters");
    c.kernel_size = f.Int("kernel_size");
  } else {
    c.pool_size = f.Int("pool_size");
  }
  c.stride = f.Int("stride");
  c.padding = f.Int("padding");
  const int64_t batch = f.Int("batch");
  auto layer = MakeLayer(c, input, 7);
  if (conv) {
    layer->params()[0].value = f.Rows("weight", c.filters);
    layer->params()[1].value = f.Rows("bias", 1);
  }
  const Matrix x = f.Rows("x", batch);
  const Matrix dy = f.Rows("dy", batch);
  const Matrix y_want = f.Rows("y", batch);
  ASSERT_EQ(layer->output_shape().Size(), y_want.cols()) << layer->output_shape().ToString();
  for (int threads : {1, 2, 3}) {
    LayerCache cache;
    cache.threads = threads;
    Matrix y, dx;
    layer->Forward(x, TrainContext(threads), &cache, &y);
    ExpectNear(y, y_want, 1e-4, GetParam() + " y");
    std::vector<Matrix> grads(layer->params().size());
    layer->Backward(dy, cache, grads, &dx);
    ExpectNear(dx, f.Rows("dx", batch), 1e-4, GetParam() + " dx");
    if (conv) {
      ExpectNear(grads[0], f.Rows("dweight", c.filters), 1e-4, GetParam() + " dweight");
      ExpectNear(grads[1], f.Rows("dbias", 1), 1e-4, GetParam() + " dbias");
    }
    // Eval and Monte-Carlo forward passes are the same function (conv and pooling are
    // deterministic).
    for (Mode mode : {Mode::kEval, Mode::kMonteCarlo}) {
      Context ctx = TrainContext(threads);
      ctx.mode = mode;
      Matrix ye;
      layer->Forward(x, ctx, nullptr, &ye);
      EXPECT_TRUE(ye == y) << ModeName(mode);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TorchParityTest,
                         ::testing::Values("conv1d_k3", "conv1d_k5_s2_p2", "conv2d_k3",
                                           "conv2d_k3_s2_p1", "conv2d_k2_s3_p2", "conv2d_k1",
                                           "max_pool2d_k2", "max_pool2d_k3_s2_p1", "avg_pool2d_k2",
                                           "avg_pool2d_k3_s2_p1", "max_pool1d_k2",
                                           "avg_pool1d_k3_s2_p1", "global_avg_pool2d",
                                           "global_avg_pool1d"));

LayerConfig ConvConfig(const std::string& type, int filters, int k, int stride, int padding) {
  LayerConfig c;
  c.type = type;
  c.filters = filters;
  c.kernel_size = k;
  c.stride = stride;
  c.padding = padding;
  return c;
}

LayerConfig PoolConfig(const std::string& type, int k, int stride, int padding) {
  LayerConfig c;
  c.type = type;
  c.pool_size = k;
  c.stride = stride;
  c.padding = padding;
  return c;
}

TEST(ConvGradientTest, Conv2dMatchesCentralDifferences) {
  for (auto [k, s, p] : {std::tuple{3, 1, 0}, {3, 2, 1}, {2, 1, 1}, {1, 1, 0}}) {
    auto layer = MakeLayer(ConvConfig("conv2d", 3, k, s, p), Shape{{2, 5, 6}}, 11);
    layer->params()[1].value = UniformMatrix(1, 3, -0.5, 0.5, 3);
    auto r = CheckLayerGradients(layer.get(), UniformMatrix(3, 60, -1, 1, 5), TrainContext(2),
                                 GradCheckOptions{}, 9);
    EXPECT_EQ(r.mismatches, 0) << "k " << k << " s " << s << " p " << p << "\n" << r.report;
    EXPECT_GT(r.checked, 0);
  }
}

TEST(ConvGradientTest, Conv1dMatchesCentralDifferences) {
  auto layer = MakeLayer(ConvConfig("conv1d", 4, 3, 2, 1), Shape{{3, 9}}, 11);
  auto r = CheckLayerGradients(layer.get(), UniformMatrix(2, 27, -1, 1, 6), TrainContext(),
                               GradCheckOptions{}, 10);
  EXPECT_EQ(r.mismatches, 0) << r.report;
}

TEST(ConvGradientTest, PoolsMatchCentralDifferences) {
  // Distinct values 0.05 apart so that no finite difference moves the max.
  Matrix x(2, 2 * 6 * 5);
  SplitMix64 rng(3);
  std::vector<int> order(x.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng.Below(i + 1)]);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = 0.05f * static_cast<float>(order[i]) - 3.0f;
  GradCheckOptions opt;
  opt.eps = 5e-3;
  for (const char* type : {"max_pool2d", "avg_pool2d"}) {
    for (auto [k, s, p] : {std::tuple{2, 0, 0}, {3, 2, 1}, {3, 1, 1}}) {
      auto layer = MakeLayer(PoolConfig(type, k, s, p), Shape{{2, 6, 5}}, 0);
      auto r = CheckLayerGradients(layer.get(), x, TrainContext(), opt, 4);
      EXPECT_EQ(r.mismatches, 0) << type << " k " << k << "\n" << r.report;
    }
  }
  auto global = MakeLayer(PoolConfig("global_avg_pool", 0, 0, 0), Shape{{2, 6, 5}}, 0);
  auto r = CheckLayerGradients(global.get(), x, TrainContext(), opt, 4);
  EXPECT_EQ(r.mismatches, 0) << r.report;
}

TEST(ConvShapeTest, OutputShapesFollowTheConvolutionArithmetic) {
  auto c = MakeLayer(ConvConfig("conv2d", 32, 3, 1, 0), Shape{{1, 28, 28}}, 1);
  EXPECT_EQ(c->output_shape(), (Shape{{32, 26, 26}}));
  EXPECT_EQ(c->params()[0].value.rows(), 32);
  EXPECT_EQ(c->params()[0].value.cols(), 9);
  auto s = MakeLayer(ConvConfig("conv2d", 8, 3, 2, 1), Shape{{3, 28, 27}}, 1);
  EXPECT_EQ(s->output_shape(), (Shape{{8, 14, 14}}));
  auto c1 = MakeLayer(ConvConfig("conv1d", 5, 4, 3, 2), Shape{{2, 20}}, 1);
  EXPECT_EQ(c1->output_shape(), (Shape{{5, 7}}));  // (20 + 4 - 4) / 3 + 1
  auto mp = MakeLayer(PoolConfig("max_pool", 2, 0, 0), Shape{{64, 24, 24}}, 1);
  EXPECT_EQ(mp->output_shape(), (Shape{{64, 12, 12}}));
  auto ap = MakeLayer(PoolConfig("avg_pool", 3, 0, 0), Shape{{4, 10}}, 1);
  EXPECT_EQ(ap->output_shape(), (Shape{{4, 3}}));
  auto gp = MakeLayer(PoolConfig("global_avg_pool", 0, 0, 0), Shape{{6, 5, 5}}, 1);
  EXPECT_EQ(gp->output_shape(), (Shape{{6}}));
  // The spec-validation helpers agree with the layers, without building them.
  for (auto [cfg, in] : {std::pair{ConvConfig("conv2d", 8, 3, 2, 1), Shape{{3, 28, 27}}},
                         {ConvConfig("conv1d", 5, 4, 3, 2), Shape{{2, 20}}},
                         {PoolConfig("max_pool2d", 3, 2, 1), Shape{{2, 9, 9}}}}) {
    auto l = MakeLayer(cfg, in, 1);
    EXPECT_EQ(PlanLayer(cfg, in).output, l->output_shape());
    int64_t n = 0;
    for (const auto& p : l->params()) n += p.value.size();
    EXPECT_EQ(PlanLayer(cfg, in).parameters, n);
  }
}

TEST(ConvShapeTest, BadConfigurationsNameTheField) {
  auto expect_error = [](const LayerConfig& c, const Shape& in, const std::string& part) {
    try {
      MakeLayer(c, in, 1);
      ADD_FAILURE() << "no error for " << c.type << " " << in.ToString();
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error(ConvConfig("conv2d", 0, 3, 1, 0), Shape{{1, 8, 8}}, "filters");
  expect_error(ConvConfig("conv2d", 4, 0, 1, 0), Shape{{1, 8, 8}}, "kernel_size");
  expect_error(ConvConfig("conv2d", 4, 3, -1, 0), Shape{{1, 8, 8}}, "stride");
  expect_error(ConvConfig("conv2d", 4, 3, 1, -1), Shape{{1, 8, 8}}, "padding");
  expect_error(ConvConfig("conv2d", 4, 9, 1, 0), Shape{{1, 8, 8}}, "does not fit");
  expect_error(ConvConfig("conv2d", 4, 3, 1, 0), Shape{{64}}, "[channels, height, width]");
  expect_error(ConvConfig("conv1d", 4, 3, 1, 0), Shape{{1, 8, 8}}, "[channels, length]");
  expect_error(PoolConfig("max_pool2d", 2, 0, 2), Shape{{1, 8, 8}}, "padding");
  expect_error(PoolConfig("max_pool", 2, 0, 0), Shape{{8}}, "[channels, length] or");
}

TEST(ConvShapeTest, HugeGeometryIsAnErrorNotAnOverflow) {
  constexpr int kMax = std::numeric_limits<int>::max();
  // 2 * padding and the output side overflow an int.
  EXPECT_THROW(PlanLayer(ConvConfig("conv2d", 1, 3, 1, kMax), Shape{{1, 6, 6}}), InvalidArgument);
  EXPECT_THROW(PlanLayer(ConvConfig("conv1d", 1, 1, 1, kMax / 2 + 1), Shape{{1, 6}}),
               InvalidArgument);
  EXPECT_THROW(PlanLayer(PoolConfig("max_pool2d", kMax, 0, kMax / 2 + 1), Shape{{1, 6, 6}}),
               InvalidArgument);
  // A kernel as large as an int fits with padding; its parameter count saturates.
  const LayerConfig big = ConvConfig("conv2d", kMax, kMax, 1, kMax / 2);
  EXPECT_EQ(PlanLayer(big, Shape{{kMax, 1, 1}}).output, (Shape{{kMax, 1, 1}}));
  EXPECT_EQ(PlanLayer(big, Shape{{kMax, 1, 1}}).parameters, INT64_MAX);
  // A size past int64 saturates too, so that any limit refuses it.
  EXPECT_EQ((Shape{{kMax, kMax, kMax}}).Size(), INT64_MAX);
  EXPECT_EQ((Shape{{3, 4, 5}}).Size(), 60);
}

TEST(ConvTest, ResultsDoNotDependOnTheThreadCount) {
  auto layer = MakeLayer(ConvConfig("conv2d", 6, 3, 1, 1), Shape{{3, 9, 9}}, 5);
  const Matrix x = UniformMatrix(7, 243, -1, 1, 8);
  const Matrix dy = UniformMatrix(7, 6 * 81, -1, 1, 9);
  Matrix y1, dx1;
  LayerCache c1;
  c1.threads = 1;
  layer->Forward(x, TrainContext(1), &c1, &y1);
  std::vector<Matrix> g1(2), g4(2);
  layer->Backward(dy, c1, g1, &dx1);
  Matrix y4, dx4;
  LayerCache c4;
  c4.threads = 4;
  layer->Forward(x, TrainContext(4), &c4, &y4);
  layer->Backward(dy, c4, g4, &dx4);
  EXPECT_TRUE(y1 == y4);  // each image is computed by one thread with the same kernel
  EXPECT_TRUE(dx1 == dx4);
  // Weight gradients are reduced over per-thread partial sums: equal up to rounding.
  EXPECT_LE((g1[0] - g4[0]).cwiseAbs().maxCoeff(), 1e-4f);
  EXPECT_LE((g1[1] - g4[1]).cwiseAbs().maxCoeff(), 1e-4f);
}

TEST(ConvBatchNormTest, NormalisesEachChannelOfConvOutputs) {
  // BatchNorm for {C, H, W} normalises over (batch, H, W) per channel.
  auto conv = MakeLayer(ConvConfig("conv2d", 4, 3, 1, 1), Shape{{2, 6, 6}}, 3);
  LayerConfig bn_config;
  bn_config.type = "batch_norm";
  auto bn = MakeLayer(bn_config, conv->output_shape(), 0);
  ASSERT_EQ(bn->params()[0].value.cols(), 4);  // one gamma per channel
  Matrix x = UniformMatrix(8, 72, -1, 1, 4), h, y;
  conv->Forward(x, TrainContext(), nullptr, &h);
  h.array() += 3.0f;  // a non-zero mean
  LayerCache cache;
  bn->Forward(h, TrainContext(), &cache, &y);
  for (int c = 0; c < 4; ++c) {
    double sum = 0, sq = 0, hsum = 0;
    for (int64_t r = 0; r < y.rows(); ++r) {
      for (int64_t j = 0; j < 36; ++j) {
        sum += y(r, c * 36 + j);
        sq += y(r, c * 36 + j) * y(r, c * 36 + j);
        hsum += h(r, c * 36 + j);
      }
    }
    const double m = 8.0 * 36;
    EXPECT_NEAR(sum / m, 0.0, 1e-5) << c;
    EXPECT_NEAR(sq / m, 1.0, 1e-3) << c;  // epsilon 1e-5 keeps it just under 1
    bn->ApplyTrainStatistics(cache);
    EXPECT_NEAR(bn->buffers()[0].value(0, c), 0.1 * hsum / m, 1e-5) << c;
    bn->buffers()[0].value.setZero();
  }
  auto r = CheckLayerGradients(bn.get(), h, TrainContext(), GradCheckOptions{}, 12);
  EXPECT_EQ(r.mismatches, 0) << r.report;
}

TEST(ConvNetworkTest, SmallCnnLearnsAndIsDeterministicInEveryMode) {
  NetworkSpec spec;
  spec.input = Shape{{1, 8, 8}};
  spec.seed = 3;
  LayerConfig relu, flat, dense;
  relu.type = "relu";
  flat.type = "flatten";
  dense.type = "dense";
  dense.units = 2;
  spec.layers = {ConvConfig("conv2d", 4, 3, 1, 1),
                 relu,
                 PoolConfig("max_pool2d", 2, 0, 0),
                 ConvConfig("conv2d", 4, 3, 1, 0),
                 relu,
                 PoolConfig("global_avg_pool", 0, 0, 0),
                 flat,
                 dense};
  Network net(spec);
  EXPECT_EQ(net.output_shape(), (Shape{{2}}));
  const Matrix x = UniformMatrix(5, 64, -1, 1, 2);
  Context ctx = TrainContext();
  ctx.mode = Mode::kEval;
  const Matrix a = net.Forward(x, ctx);
  ctx.mode = Mode::kMonteCarlo;
  EXPECT_TRUE(a == net.Forward(x, ctx));
  // A gradient step on the whole network decreases sum(y .* w) (the gradients are consistent).
  ForwardCache cache;
  ctx.mode = Mode::kTrain;
  const Matrix y = net.Forward(x, ctx, &cache);
  const Matrix w = UniformMatrix(5, 2, -1, 1, 3);
  Gradients grads;
  net.Backward(w, cache, &grads);
  double before = test_support::WeightedSum(y, w), gnorm = 0;
  auto params = net.Parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    gnorm += grads[i].squaredNorm();
    params[i]->value -= 1e-3f * grads[i];
  }
  ForwardCache c2;
  const double after = test_support::WeightedSum(net.Forward(x, ctx, &c2), w);
  EXPECT_GT(gnorm, 0);
  EXPECT_NEAR(before - after, 1e-3 * gnorm, 0.1 * 1e-3 * gnorm);
}

}  // namespace
}  // namespace dropnet::engine
