// Tests for the sequential Network: construction, modes, copies, thread independence of the
// random masks and a whole-network numerical gradient check.
#include "server/engine/network.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "server/engine/random.h"
#include "server/engine/trainer.h"
#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

// Dense(8)-ReLU-Dropout(p)-Dense(3) on 4 inputs.
NetworkSpec SmallSpec(double rate = 0.5, uint64_t seed = 1) {
  return MakeSpec({4}, {DenseLayer(8), Simple("relu"), DropoutLayer(rate), DenseLayer(3)}, seed);
}

// Runs a forward pass in any mode (kTrain gets a throw-away cache).
Matrix RunForward(const Network& net, const Matrix& x, const Context& ctx) {
  ForwardCache cache;
  return net.Forward(x, ctx, ctx.mode == Mode::kTrain ? &cache : nullptr);
}

TEST(NetworkTest, BuildsShapesAndCountsParameters) {
  Network net(SmallSpec());
  ASSERT_EQ(net.size(), 4);
  EXPECT_EQ(net.input_shape(), Shape{{4}});
  EXPECT_EQ(net.layer(0).input_shape(), Shape{{4}});
  EXPECT_EQ(net.layer(0).output_shape(), Shape{{8}});
  EXPECT_EQ(net.layer(1).output_shape(), Shape{{8}});
  EXPECT_EQ(net.layer(2).output_shape(), Shape{{8}});
  EXPECT_EQ(net.layer(3).input_shape(), Shape{{8}});
  EXPECT_EQ(net.output_shape(), Shape{{3}});
  EXPECT_EQ(net.ParameterCount(), 4 * 8 + 8 + 8 * 3 + 3);

  const auto params = net.Parameters();
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0]->name, "weight");
  EXPECT_EQ(params[0]->value.rows(), 4);
  EXPECT_EQ(params[0]->value.cols(), 8);
  EXPECT_TRUE(params[0]->decay);
  EXPECT_TRUE(params[0]->max_norm);
  EXPECT_EQ(params[1]->name, "bias");
  EXPECT_EQ(params[1]->value.rows(), 1);
  EXPECT_EQ(params[1]->value.cols(), 8);
  EXPECT_FALSE(params[1]->decay);
  EXPECT_FALSE(params[1]->max_norm);
  EXPECT_EQ(params[2]->value.rows(), 8);
  EXPECT_EQ(params[2]->value.cols(), 3);

  Matrix y = RunForward(net, RandomMatrix(5, 4, 2), MakeContext(Mode::kEval));
  EXPECT_EQ(y.rows(), 5);
  EXPECT_EQ(y.cols(), 3);
}

TEST(NetworkTest, FlattensImagesAndHonoursUseBias) {
  LayerConfig no_bias = DenseLayer(5);
  no_bias.use_bias = false;
  Network net(MakeSpec({2, 3, 4}, {Simple("flatten"), no_bias, Simple("batch_norm")}));
  EXPECT_EQ(net.layer(0).output_shape(), Shape{{24}});
  EXPECT_EQ(net.output_shape(), Shape{{5}});
  // 24*5 weights, no bias, BatchNorm gamma and beta (running statistics are buffers).
  EXPECT_EQ(net.ParameterCount(), 24 * 5 + 5 + 5);
  EXPECT_EQ(net.Buffers().size(), 2u);
}

TEST(NetworkTest, SameSeedSameInitialisationDifferentSeedDifferent) {
  Network a(SmallSpec(0.5, 7)), b(SmallSpec(0.5, 7)), c(SmallSpec(0.5, 8));
  EXPECT_TRUE(BitEqual(a.Parameters()[0]->value, b.Parameters()[0]->value));
  EXPECT_FALSE(BitEqual(a.Parameters()[0]->value, c.Parameters()[0]->value));
  // Layers get different initialisation streams.
  EXPECT_NE(a.Parameters()[0]->value(0, 0), a.Parameters()[2]->value(0, 0));
}

TEST(NetworkTest, ErrorsNameTheLayerIndexAndField) {
  ExpectInvalidArgumentContaining(
      [] {
        Network net(MakeSpec({4}, {DenseLayer(8), Simple("relu"), DenseLayer(0)}));
      },
      {"layers[2]", "dense.units", "0"});
  ExpectInvalidArgumentContaining(
      [] {
        Network net(MakeSpec({4}, {DenseLayer(8), Simple("conv9")}));
      },
      {"layers[1]", "conv9"});
  ExpectInvalidArgumentContaining(
      [] {
        Network net(MakeSpec({4}, {DenseLayer(8), DropoutLayer(1.0)}));
      },
      {"layers[1]", "dropout.rate"});
  ExpectInvalidArgumentContaining(
      [] {
        Network net(MakeSpec({4}, {DenseLayer(8), DropoutLayer(-0.1)}));
      },
      {"layers[1]", "dropout.rate"});
  ExpectInvalidArgumentContaining(
      [] {
        Network net(MakeSpec({1, 28, 28}, {DenseLayer(8)}));
      },
      {"layers[0]", "flatten"});
  ExpectInvalidArgumentContaining(
      [] {
        LayerConfig bad = DenseLayer(3);
        bad.init = "bogus";
        Network net(MakeSpec({4}, {Simple("relu"), Simple("tanh"), Simple("sigmoid"), bad}));
      },
      {"layers[3]", "dense.init", "bogus"});
  ExpectInvalidArgumentContaining(
      [] {
        LayerConfig bn = Simple("batch_norm");
        bn.momentum = 0.0;
        Network net(MakeSpec({4}, {bn}));
      },
      {"layers[0]", "batch_norm.momentum"});
  EXPECT_THROW(Network(MakeSpec({}, {DenseLayer(2)})), InvalidArgument);
  EXPECT_THROW(Network(MakeSpec({0, 3}, {Simple("flatten")})), InvalidArgument);
}

// PlanNetwork agrees with the networks it plans, for every type of the layer table, and rejects
// what the constructor rejects with the same error.
TEST(PlanNetworkTest, ShapesAndParameterCountsMatchTheBuiltNetwork) {
  auto with = [](LayerConfig c, const std::function<void(LayerConfig*)>& set) {
    set(&c);
    return c;
  };
  const std::vector<NetworkSpec> specs = {
      SmallSpec(),
      MakeSpec(
          {2, 9, 9},
          {with(Simple("conv2d"), [](LayerConfig* c) { c->filters = 4, c->kernel_size = 3; }),
           Simple("relu"), Simple("batch_norm"), Simple("max_pool2d"),
           with(Simple("spatial_dropout2d"), [](LayerConfig* c) { c->rate = 0.2; }),
           Simple("global_avg_pool"), Simple("gaussian_dropout"), Simple("alpha_dropout"),
           with(DenseLayer(5), [](LayerConfig* c) { c->use_bias = false; }),
           with(Simple("drop_connect"), [](LayerConfig* c) { c->units = 6, c->rate = 0.3; }),
           with(Simple("concrete_dropout"), [](LayerConfig* c) { c->per_unit = true; }),
           with(Simple("concrete_dropout"), [](LayerConfig* c) { c->units = 3; }),
           with(Simple("sparse_vd"), [](LayerConfig* c) { c->units = 2; }), Simple("softmax")}),
      MakeSpec({5, 3}, {with(Simple("lstm"),
                             [](LayerConfig* c) { c->units = 4, c->return_sequences = true; }),
                        with(Simple("gru"), [](LayerConfig* c) { c->units = 3; }), Simple("gelu")}),
      MakeSpec({3, 8},
               {with(Simple("conv1d"), [](LayerConfig* c) { c->filters = 2, c->kernel_size = 2; }),
                Simple("avg_pool"), Simple("flatten"), DenseLayer(2)}),
  };
  for (const NetworkSpec& spec : specs) {
    const Network net(spec);
    const NetworkPlan plan = PlanNetwork(spec);
    ASSERT_EQ(static_cast<int>(plan.layers.size()), net.size());
    for (int i = 0; i < net.size(); ++i) {
      int64_t n = 0;
      for (const auto& p : net.layer(i).params()) n += p.value.size();
      EXPECT_EQ(plan.layers[i].output, net.layer(i).output_shape())
          << i << " " << spec.layers[i].type;
      EXPECT_EQ(plan.layers[i].parameters, n) << i << " " << spec.layers[i].type;
    }
    EXPECT_EQ(plan.parameters, net.ParameterCount());
    EXPECT_EQ(plan.output, net.output_shape());
  }
}

TEST(PlanNetworkTest, ErrorsNameTheLayerAndFieldAndHooksRunInOrder) {
  const NetworkSpec bad = MakeSpec({4}, {DenseLayer(8), DropoutLayer(1.5), DenseLayer(0)});
  try {
    PlanNetwork(bad);
    ADD_FAILURE() << "no error";
  } catch (const LayerSpecError& e) {
    EXPECT_EQ(e.index(), 1);
    EXPECT_EQ(e.type(), "dropout");
    EXPECT_EQ(e.FieldMessage(), "rate must be in [0, 1), got 1.5");
    EXPECT_EQ(std::string(e.what()),
              "layers[1] (dropout): dropout.rate must be in [0, 1), got 1.5");
  }
  try {
    PlanNetwork(MakeSpec({4}, {DenseLayer(8), Simple("conv9")}));
    ADD_FAILURE() << "no error";
  } catch (const LayerSpecError& e) {
    EXPECT_EQ(e.FieldMessage(), "");
    EXPECT_NE(e.message().find("conv9"), std::string::npos) << e.message();
  }
  // The constructor fails with the same error.
  try {
    Network net(bad);
    ADD_FAILURE() << "no error";
  } catch (const LayerSpecError& e) {
    EXPECT_EQ(e.index(), 1);
  }
  std::vector<std::string> calls;
  PlanHooks hooks;
  hooks.before = [&](int i, const LayerConfig& c, const Shape& in) {
    calls.push_back("before " + std::to_string(i) + " " + in.ToString());
  };
  hooks.after = [&](int i, const LayerConfig& c, const LayerPlan& p) {
    calls.push_back("after " + std::to_string(i) + " " + std::to_string(p.parameters));
  };
  PlanNetwork(MakeSpec({4}, {DenseLayer(8), Simple("relu")}), hooks);
  EXPECT_EQ(calls,
            (std::vector<std::string>{"before 0 [4]", "after 0 40", "before 1 [8]", "after 1 0"}));
}

TEST(NetworkTest, ForwardRejectsBadInput) {
  Network net(SmallSpec());
  EXPECT_THROW(RunForward(net, RandomMatrix(3, 5, 1), MakeContext(Mode::kEval)), InvalidArgument);
  EXPECT_THROW(net.Forward(RandomMatrix(3, 4, 1), MakeContext(Mode::kTrain)), InvalidArgument);
  // A sub-range checks the width against the first layer it runs.
  EXPECT_THROW(net.Forward(RandomMatrix(3, 4, 1), MakeContext(Mode::kEval), nullptr, 3),
               InvalidArgument);
  EXPECT_NO_THROW(net.Forward(RandomMatrix(3, 8, 1), MakeContext(Mode::kEval), nullptr, 3));
}

TEST(NetworkTest, RangeEndingAtTheLastLayerAndEmptyRanges) {
  Network net(SmallSpec());
  const Matrix x = RandomMatrix(3, 4, 9);
  const Context eval = MakeContext(Mode::kEval);
  // An empty range at the very end returns its input unchanged (used by MC for networks
  // without stochastic layers).
  const Matrix out = net.Forward(x, eval);
  Matrix same = net.Forward(out, eval, nullptr, net.size(), -1);
  EXPECT_TRUE(BitEqual(same, out));
  Matrix none = net.Forward(x, eval, nullptr, 0, 0);
  EXPECT_TRUE(BitEqual(none, x));
  EXPECT_THROW(net.Forward(x, eval, nullptr, net.size(), -1), InvalidArgument);
}

TEST(NetworkTest, EvalIsDeterministicAndDropoutIsIdentity) {
  Network net(SmallSpec(0.5));
  const Matrix x = RandomMatrix(6, 4, 3);
  const Matrix a = RunForward(net, x, MakeContext(Mode::kEval, 1));
  const Matrix b = RunForward(net, x, MakeContext(Mode::kEval, 99, 12345));
  EXPECT_TRUE(BitEqual(a, b));
  // Eval equals the network with the dropout layer skipped.
  const Context eval = MakeContext(Mode::kEval);
  Matrix h = net.Forward(x, eval, nullptr, 0, 2);
  Matrix skipped = net.Forward(h, eval, nullptr, 3, 4);
  EXPECT_TRUE(BitEqual(a, skipped));
}

TEST(NetworkTest, TrainAndMonteCarloAreStochastic) {
  Network net(SmallSpec(0.5));
  const Matrix x = RandomMatrix(16, 4, 3);
  const Matrix eval = RunForward(net, x, MakeContext(Mode::kEval));
  for (Mode mode : {Mode::kTrain, Mode::kMonteCarlo}) {
    SCOPED_TRACE(ModeName(mode));
    const Matrix a = RunForward(net, x, MakeContext(mode, 5));
    EXPECT_TRUE(BitEqual(a, RunForward(net, x, MakeContext(mode, 5))));
    EXPECT_GT((a - RunForward(net, x, MakeContext(mode, 5, 1))).cwiseAbs().maxCoeff(), 1e-3);
    EXPECT_GT((a - RunForward(net, x, MakeContext(mode, 6))).cwiseAbs().maxCoeff(), 1e-3);
    EXPECT_GT((a - eval).cwiseAbs().maxCoeff(), 1e-3);
  }
  // Without BatchNorm, kTrain and kMonteCarlo draw the same masks at the same address.
  EXPECT_TRUE(BitEqual(RunForward(net, x, MakeContext(Mode::kTrain, 5, 3)),
                       RunForward(net, x, MakeContext(Mode::kMonteCarlo, 5, 3))));
}

TEST(NetworkTest, TrainRecordsAnInvertedDropoutMask) {
  const double p = 0.3;
  Network net(MakeSpec({64}, {DenseLayer(64), DropoutLayer(p)}));
  ForwardCache cache;
  const Matrix x = RandomMatrix(64, 64, 4);
  const Matrix y = net.Forward(x, MakeContext(Mode::kTrain, 11, 2, 64), &cache);
  ASSERT_EQ(cache.layers.size(), 2u);
  const Matrix& mask = cache.layers[1].mask;
  ASSERT_EQ(mask.rows(), 64);
  ASSERT_EQ(mask.cols(), 64);
  const float keep_value = static_cast<float>(1.0 / (1.0 - p));
  int64_t kept = 0;
  for (int64_t i = 0; i < mask.size(); ++i) {
    const float m = mask.data()[i];
    ASSERT_TRUE(m == 0.0f || m == keep_value) << m;
    kept += m != 0.0f;
  }
  // Binomial(4096, 0.7): 5 standard deviations.
  const double n = static_cast<double>(mask.size());
  EXPECT_NEAR(kept / n, 1 - p, 5 * std::sqrt(p * (1 - p) / n));
  const Matrix dense = net.Forward(x, MakeContext(Mode::kEval), nullptr, 0, 1);
  EXPECT_TRUE(BitEqual(y, Matrix(dense.cwiseProduct(mask))));
}

// The bug we avoid: flipping PyTorch's train() for MC dropout also makes BatchNorm use batch
// statistics. kMonteCarlo keeps BatchNorm on its running statistics while dropout draws.
TEST(NetworkTest, MonteCarloUsesBatchNormRunningStatistics) {
  LayerConfig bn = Simple("batch_norm");
  Network net(MakeSpec({3}, {DenseLayer(4), bn, DropoutLayer(0.5), DenseLayer(2)}));
  Layer& bn_layer = net.layer(1);
  bn_layer.params()[0].value << 1.5f, 0.5f, -1.0f, 2.0f;   // gamma
  bn_layer.params()[1].value << 0.1f, -0.2f, 0.3f, 0.0f;   // beta
  bn_layer.buffers()[0].value << 0.5f, -1.0f, 2.0f, 0.0f;  // running mean
  bn_layer.buffers()[1].value << 4.0f, 0.25f, 1.0f, 9.0f;  // running variance
  const Matrix x = RandomMatrix(32, 3, 5, 3.0);
  const Context mc = MakeContext(Mode::kMonteCarlo, 21, 4, 32);

  // Reference: Dense in eval, BatchNorm by hand from the running statistics, then the dropout
  // and last Dense layers called directly at their own layer indices.
  const Matrix z = net.Forward(x, MakeContext(Mode::kEval), nullptr, 0, 1);
  Matrix normalised(z.rows(), z.cols());
  for (int64_t r = 0; r < z.rows(); ++r) {
    for (int64_t c = 0; c < z.cols(); ++c) {
      const double mean = bn_layer.buffers()[0].value(0, c);
      const double var = bn_layer.buffers()[1].value(0, c);
      normalised(r, c) = static_cast<float>((z(r, c) - mean) / std::sqrt(var + 1e-5) *
                                                bn_layer.params()[0].value(0, c) +
                                            bn_layer.params()[1].value(0, c));
    }
  }
  Context at2 = mc, at3 = mc;
  at2.layer = 2;
  at3.layer = 3;
  Matrix dropped, expected;
  net.layer(2).Forward(normalised, at2, nullptr, &dropped);
  net.layer(3).Forward(dropped, at3, nullptr, &expected);
  EXPECT_GT((dropped - normalised).cwiseAbs().maxCoeff(), 0.1) << "dropout did not draw";

  const Matrix out = net.Forward(x, mc);
  ASSERT_EQ(out.rows(), 32);
  EXPECT_LT((out - expected).cwiseAbs().maxCoeff(), 1e-4);

  // Up to BatchNorm, kMonteCarlo is exactly kEval...
  const Matrix mc_bn = net.Forward(x, mc, nullptr, 0, 2);
  EXPECT_TRUE(BitEqual(mc_bn, net.Forward(x, MakeContext(Mode::kEval), nullptr, 0, 2)));
  EXPECT_LT((mc_bn - normalised).cwiseAbs().maxCoeff(), 1e-4);
  // ... whereas kTrain normalises with the batch: every column has mean beta and std |gamma|.
  ForwardCache cache;
  const Matrix train_bn = net.Forward(x, MakeContext(Mode::kTrain, 21, 4, 32), &cache, 0, 2);
  for (int64_t c = 0; c < 4; ++c) {
    const double mean = train_bn.col(c).cast<double>().mean();
    const double sd = std::sqrt((train_bn.col(c).cast<double>().array() - mean).square().mean());
    EXPECT_NEAR(mean, bn_layer.params()[1].value(0, c), 1e-4);
    EXPECT_NEAR(sd, std::abs(bn_layer.params()[0].value(0, c)), 1e-2);
  }
  EXPECT_GT((train_bn - mc_bn).cwiseAbs().maxCoeff(), 0.1);

  // Forward never touches the buffers; ApplyTrainStatistics folds in the batch statistics.
  EXPECT_EQ(bn_layer.buffers()[0].value(0, 0), 0.5f);
  EXPECT_EQ(bn_layer.buffers()[1].value(0, 1), 0.25f);
  net.ApplyTrainStatistics(cache);
  const double batch_mean0 = z.col(0).cast<double>().mean();
  EXPECT_NEAR(bn_layer.buffers()[0].value(0, 0), 0.9 * 0.5 + 0.1 * batch_mean0, 1e-4);
}

TEST(NetworkTest, FirstStochasticLayer) {
  EXPECT_EQ(Network(SmallSpec(0.5)).FirstStochasticLayer(), 2);
  EXPECT_EQ(Network(SmallSpec(0.0)).FirstStochasticLayer(), 4);  // rate 0 never draws
  EXPECT_EQ(Network(MakeSpec({4}, {DenseLayer(3), Simple("relu")})).FirstStochasticLayer(), 2);
  EXPECT_EQ(Network(MakeSpec({4}, {DropoutLayer(0.1), DenseLayer(3), DropoutLayer(0.2)}))
                .FirstStochasticLayer(),
            0);
  EXPECT_EQ(Network(MakeSpec({4}, {Simple("batch_norm"), DenseLayer(3), DropoutLayer(0.2)}))
                .FirstStochasticLayer(),
            2);
}

TEST(NetworkTest, CopyIsDeep) {
  auto original = std::make_unique<Network>(
      MakeSpec({4}, {DenseLayer(8), Simple("batch_norm"), DropoutLayer(0.5), DenseLayer(3)}));
  const Matrix x = RandomMatrix(5, 4, 8);
  const Context ctx = MakeContext(Mode::kMonteCarlo, 3, 1);
  const Matrix before = RunForward(*original, x, ctx);

  Network copy(*original);
  Network assigned(SmallSpec());
  assigned = *original;
  EXPECT_TRUE(BitEqual(RunForward(copy, x, ctx), before));
  EXPECT_TRUE(BitEqual(RunForward(assigned, x, ctx), before));
  EXPECT_EQ(assigned.size(), 4);
  EXPECT_EQ(assigned.spec().layers[1].type, "batch_norm");

  copy.Parameters()[0]->value(0, 0) += 1.0f;
  assigned.Buffers()[0]->value(0, 0) += 1.0f;
  EXPECT_NE(copy.Parameters()[0], original->Parameters()[0]);
  EXPECT_TRUE(BitEqual(RunForward(*original, x, ctx), before));
  EXPECT_FALSE(BitEqual(RunForward(copy, x, ctx), before));
  EXPECT_FALSE(BitEqual(RunForward(assigned, x, ctx), before));
  EXPECT_EQ(original->Buffers()[0]->value(0, 0), 0.0f);

  // The copy outlives its source.
  Network survivor(*original);
  original.reset();
  EXPECT_TRUE(BitEqual(RunForward(survivor, x, ctx), before));
}

TEST(NetworkTest, SameSeedSameMasksWhateverTheThreadCount) {
  // Wide enough that the matrix products split across threads.
  Network net(MakeSpec({64}, {DenseLayer(256), Simple("relu"), DropoutLayer(0.5), DenseLayer(64),
                              Simple("tanh"), DropoutLayer(0.2), DenseLayer(10)}));
  const Matrix x = RandomMatrix(96, 64, 12);
  ForwardCache base_cache;
  const Matrix base_train = net.Forward(x, MakeContext(Mode::kTrain, 77, 5, 96), &base_cache);
  const Matrix base_mc = RunForward(net, x, MakeContext(Mode::kMonteCarlo, 77, 5, 32));
  Gradients base_grads;
  net.Backward(Matrix::Ones(96, 10), base_cache, &base_grads);
  for (int threads : {2, 8}) {
    SCOPED_TRACE(threads);
    ForwardCache cache;
    const Matrix train = net.Forward(x, MakeContext(Mode::kTrain, 77, 5, 96, threads), &cache);
    EXPECT_TRUE(BitEqual(cache.layers[2].mask, base_cache.layers[2].mask));
    EXPECT_TRUE(BitEqual(cache.layers[5].mask, base_cache.layers[5].mask));
    EXPECT_TRUE(BitEqual(train, base_train));
    EXPECT_TRUE(
        BitEqual(RunForward(net, x, MakeContext(Mode::kMonteCarlo, 77, 5, 32, threads)), base_mc));
    Gradients grads;
    net.Backward(Matrix::Ones(96, 10), cache, &grads);
    ASSERT_EQ(grads.size(), base_grads.size());
    for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(BitEqual(grads[i], base_grads[i])) << i;
  }
  // Masks really are drawn: two streams differ.
  ForwardCache other;
  net.Forward(x, MakeContext(Mode::kTrain, 77, 6, 96), &other);
  EXPECT_FALSE(BitEqual(other.layers[2].mask, base_cache.layers[2].mask));
}

TEST(NetworkTest, BackwardMatchesNumericalGradient) {
  Network net(MakeSpec({5},
                       {DenseLayer(6), Simple("relu"), DropoutLayer(0.3), DenseLayer(4),
                        Simple("tanh"), DenseLayer(3)},
                       /*seed=*/42));
  const double eps = 3e-3;
  // Central differences are only valid away from ReLU's kink: pick the first input whose
  // first-layer pre-activations all stay further from 0 than any perturbation can move them.
  const Context eval = MakeContext(Mode::kEval);
  const float reach = static_cast<float>(
      eps * std::max({1.0f, net.Parameters()[0]->value.cwiseAbs().maxCoeff()}) * 4);
  Matrix x;
  for (uint64_t seed = 13;; ++seed) {
    ASSERT_LT(seed, 100u) << "no input with a clear ReLU margin";
    x = RandomMatrix(7, 5, seed);
    const float limit = reach * std::max(1.0f, x.cwiseAbs().maxCoeff());
    if (net.Forward(x, eval, nullptr, 0, 1).cwiseAbs().minCoeff() > limit) break;
  }
  const Matrix r = RandomMatrix(7, 3, 14);  // L = sum(out .* r), so dL/dout = r
  // The same RandomStream in every forward freezes the dropout mask.
  const Context ctx = MakeContext(Mode::kTrain, 2024, 3, 7);
  auto loss = [&](const Matrix& input) {
    ForwardCache c;
    const Matrix out = net.Forward(input, ctx, &c);
    return out.cast<double>().cwiseProduct(r.cast<double>()).sum();
  };

  ForwardCache cache;
  net.Forward(x, ctx, &cache);
  const Matrix& mask = cache.layers[2].mask;
  ASSERT_EQ(mask.size(), 7 * 6);
  EXPECT_GT((mask.array() == 0.0f).count(), 0) << "the mask should drop something";
  EXPECT_GT((mask.array() != 0.0f).count(), 0);
  Gradients grads;
  Matrix dx;
  net.Backward(r, cache, &grads, -1, &dx);

  // The central difference of the loss at `at` in *v: a weight, or an element of `at` itself.
  auto central_difference = [&](float* v, const Matrix& at) {
    const float saved = *v;
    *v = saved + static_cast<float>(eps);
    const double up = loss(at);
    *v = saved - static_cast<float>(eps);
    const double down = loss(at);
    *v = saved;
    return (up - down) / (2 * eps);
  };
  const auto params = net.Parameters();
  ASSERT_EQ(grads.size(), params.size());
  int checked = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    Matrix& w = params[i]->value;
    ASSERT_EQ(grads[i].rows(), w.rows());
    ASSERT_EQ(grads[i].cols(), w.cols());
    for (int64_t k = 0; k < w.size(); ++k) {
      const double numeric = central_difference(&w.data()[k], x);
      const double analytic = grads[i].data()[k];
      EXPECT_NEAR(analytic, numeric, 2e-3 + 1e-2 * std::abs(numeric))
          << "param " << i << " (" << params[i]->name << ") element " << k;
      ++checked;
    }
  }
  EXPECT_EQ(checked, net.ParameterCount());
  // Units dropped for a row get no gradient from it: some first-layer weight gradients vanish
  // only if whole columns of the mask are zero, so check the input gradient instead.
  ASSERT_EQ(dx.rows(), 7);
  ASSERT_EQ(dx.cols(), 5);
  Matrix xp = x;
  for (int64_t k = 0; k < x.size(); ++k) {
    EXPECT_NEAR(dx.data()[k], central_difference(&xp.data()[k], xp),
                2e-3 + 1e-2 * std::abs(dx.data()[k]))
        << "input element " << k;
  }
  EXPECT_GT(dx.cwiseAbs().maxCoeff(), 1e-2);
}

TEST(NetworkTest, ParameterGradientsAreTheSameWhetherOrNotTheInputsAreAsked) {
  // Without a request for the input's gradient, Backward stops at the first layer with
  // parameters (here after a flatten): the parameters' gradients are the same bits.
  Network net(
      MakeSpec({2, 3, 2},
               {Simple("flatten"), DenseLayer(6), Simple("relu"), DropoutLayer(0.5), DenseLayer(3)},
               /*seed=*/5));
  const Matrix x = RandomMatrix(9, 12, 3), r = RandomMatrix(9, 3, 4);
  ForwardCache cache;
  net.Forward(x, MakeContext(Mode::kTrain, 8, 0, 9), &cache);
  Gradients with_dx, without_dx;
  Matrix dx;
  net.Backward(r, cache, &with_dx, -1, &dx);
  net.Backward(r, cache, &without_dx);
  ASSERT_EQ(dx.rows(), 9);
  ASSERT_EQ(dx.cols(), 12);
  EXPECT_GT(dx.cwiseAbs().maxCoeff(), 0.0f);
  ASSERT_EQ(with_dx.size(), without_dx.size());
  for (size_t i = 0; i < with_dx.size(); ++i) {
    ASSERT_EQ(with_dx[i].size(), without_dx[i].size()) << "parameter " << i;
    EXPECT_GT(with_dx[i].cwiseAbs().maxCoeff(), 0.0f) << "parameter " << i;
    EXPECT_EQ(
        0, std::memcmp(with_dx[i].data(), without_dx[i].data(), with_dx[i].size() * sizeof(float)))
        << "parameter " << i;
  }
}

TEST(NetworkTest, BackwardOverAPrefixZeroesLaterParameters) {
  Network net(SmallSpec(0.5));
  const Matrix x = RandomMatrix(4, 4, 1);
  ForwardCache cache;
  const Context ctx = MakeContext(Mode::kTrain, 1, 0, 4);
  // The gradients' matrices are reused from a full backward pass, as a training loop does: the
  // later parameters' must still come back zero.
  Gradients grads;
  net.Forward(x, ctx, &cache);
  net.Backward(Matrix::Ones(4, 3), cache, &grads);
  ASSERT_GT(grads[3].cwiseAbs().maxCoeff(), 0.0f);
  const Matrix h = net.Forward(x, ctx, &cache, 0, 3);
  net.Backward(Matrix::Ones(4, 8), cache, &grads, 3);
  ASSERT_EQ(grads.size(), 4u);
  EXPECT_GT(grads[0].cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_EQ(grads[2].cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_EQ(grads[3].cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_EQ(grads[2].rows(), 8);
  EXPECT_EQ(grads[2].cols(), 3);
}

// A layer that says it passes its input through in a mode returns it bit for bit there, so
// skipping it (as Network::Forward does when nothing is cached) changes no output; and a network
// of such layers gives the same outputs as with every layer run.
TEST(NetworkTest, LayersThatPassThroughReturnTheirInputAndSkippingThemChangesNothing) {
  auto with = [](std::string type, double rate, bool classic = false) {
    LayerConfig c = Simple(type);
    c.rate = rate;
    c.classic_scaling = classic;
    return c;
  };
  const std::vector<LayerConfig> layers = {Simple("flatten"),
                                           with("dropout", 0.3),
                                           with("dropout", 0.3, true),
                                           with("dropout", 0.0, true),
                                           with("gaussian_dropout", 0.2),
                                           with("alpha_dropout", 0.1),
                                           with("spatial_dropout", 0.4),
                                           DenseLayer(5),
                                           Simple("relu")};
  const Shape shape{{4, 3}};
  const Matrix x = RandomMatrix(7, 12, 9);
  int passing = 0;
  for (const auto& config : layers) {
    const bool shaped = config.type == "flatten" || config.type == "spatial_dropout";
    auto layer = MakeLayer(config, shaped ? shape : Shape{{12}}, 1);
    for (Mode mode : {Mode::kTrain, Mode::kEval, Mode::kMonteCarlo}) {
      if (!layer->PassesThrough(mode)) continue;
      ++passing;
      const Matrix y = RunLayer(*layer, x, MakeContext(mode, 3));
      EXPECT_TRUE(BitEqual(x, y)) << config.type << " rate " << config.rate << " mode "
                                  << static_cast<int>(mode);
    }
  }
  // flatten and the rate-0 dropout in all 3 modes; dropout 0.3 (inverted) and the three
  // variants in eval only; classic-scaling dropout, dense and relu never.
  EXPECT_EQ(passing, 3 + 3 + 1 + 3) << "a layer's PassesThrough changed";
  // A network with flatten and eval-identity dropouts: eval output equals the one computed with
  // the same weights by hand.
  Network net(MakeSpec({4, 3}, {Simple("flatten"), DenseLayer(6), Simple("relu"), DropoutLayer(0.5),
                                DenseLayer(2)}));
  const Matrix out = net.Forward(x, MakeContext(Mode::kEval), nullptr);
  const auto& w1 = net.layer(1).params()[0].value;
  const auto& b1 = net.layer(1).params()[1].value;
  const auto& w2 = net.layer(4).params()[0].value;
  const auto& b2 = net.layer(4).params()[1].value;
  const Matrix h = ((x * w1).rowwise() + b1.row(0)).cwiseMax(0.0f);
  const Matrix expected = (h * w2).rowwise() + b2.row(0);
  EXPECT_LT((out - expected).cwiseAbs().maxCoeff(), 1e-5f);
  // The same passes with every layer run, none skipped, give the same bits: in eval (flatten and
  // dropout skipped) and in Monte Carlo (flatten skipped, dropout drawing from the same address).
  for (Mode mode : {Mode::kEval, Mode::kMonteCarlo}) {
    const Context ctx = MakeContext(mode, 11);
    Matrix every = x;
    for (int i = 0; i < net.size(); ++i) {
      Context layer_ctx = ctx;
      layer_ctx.layer = static_cast<uint32_t>(i);
      Matrix next;
      net.layer(i).Forward(every, layer_ctx, nullptr, &next);
      every = std::move(next);
    }
    EXPECT_TRUE(BitEqual(net.Forward(x, ctx, nullptr), every)) << static_cast<int>(mode);
  }
}

// Eval rows computed alone, or stacked with others at any place, agree bit for bit where
// RowsIndependentOfBatch says so; recurrent layers and shared DropConnect masks are excluded.
TEST(NetworkTest, RowsIndependentOfBatchHoldsForEvalBitForBit) {
  const Network net(MakeSpec(30, {DenseLayer(70), Simple("relu"), DropoutLayer(0.5), DenseLayer(37),
                                  Simple("tanh"), DenseLayer(10), Simple("softmax")}));
  if (!RowsIndependentOfBatch(net)) GTEST_SKIP() << "no AVX-512 kernel";
  const Matrix x = RandomMatrix(23, 30, 9);
  for (int threads : {1, 2}) {
    const Matrix all = PredictEval(net, Task::kClassification, LossKind::kCrossEntropy, x, threads);
    for (int64_t r0 : {0, 1, 5, 22}) {
      for (int64_t n : {1, 3}) {
        if (r0 + n > x.rows()) continue;
        SCOPED_TRACE(testing::Message() << "rows " << r0 << "+" << n << " threads " << threads);
        const Matrix alone = PredictEval(net, Task::kClassification, LossKind::kCrossEntropy,
                                         x.middleRows(r0, n), threads);
        EXPECT_TRUE(BitEqual(alone, Matrix(all.middleRows(r0, n))));
      }
    }
  }
  LayerConfig lstm;
  lstm.type = "lstm";
  lstm.units = 4;
  EXPECT_FALSE(RowsIndependentOfBatch(Network(MakeSpec(std::vector<int>{3, 2}, {lstm}))));
  LayerConfig shared;
  shared.type = "drop_connect";
  shared.units = 4;
  shared.rate = 0.5;
  shared.drop_connect_shared = true;
  EXPECT_FALSE(RowsIndependentOfBatch(Network(MakeSpec(6, {shared}))));
  shared.drop_connect_shared = false;
  EXPECT_TRUE(RowsIndependentOfBatch(Network(MakeSpec(6, {shared}))));
}

}  // namespace
}  // namespace dropnet::engine
