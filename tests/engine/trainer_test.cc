// Tests for minibatch training: convergence on small synthetic problems, reproducibility,
// progress reports, cancellation, validation with early stopping and option checking.
#include "server/engine/trainer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "server/engine/random.h"
#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

// Three well separated Gaussian blobs in 2-D, `per_class` rows each.
Dataset Blobs(int per_class, uint64_t seed) {
  const float centers[3][2] = {{-2.0f, 0.0f}, {2.0f, 0.0f}, {0.0f, 2.5f}};
  SplitMix64 rng(seed);
  Dataset d;
  d.task = Task::kClassification;
  d.num_classes = 3;
  d.input_shape = Shape{{2}};
  d.x.resize(3 * per_class, 2);
  d.y.resize(3 * per_class, 1);
  for (int i = 0; i < 3 * per_class; ++i) {
    const int c = i % 3;
    d.x(i, 0) = centers[c][0] + static_cast<float>(0.5 * rng.Normal());
    d.x(i, 1) = centers[c][1] + static_cast<float>(0.5 * rng.Normal());
    d.y(i, 0) = static_cast<float>(c);
  }
  return d;
}

// y = 1.5 x0 - 2 x1 + 0.5 x2 + 0.3 + N(0, 0.05^2).
Dataset Linear(int rows, uint64_t seed) {
  SplitMix64 rng(seed);
  Dataset d;
  d.task = Task::kRegression;
  d.input_shape = Shape{{3}};
  d.x.resize(rows, 3);
  d.y.resize(rows, 1);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < 3; ++j) d.x(i, j) = static_cast<float>(rng.Normal());
    d.y(i, 0) = static_cast<float>(1.5 * d.x(i, 0) - 2.0 * d.x(i, 1) + 0.5 * d.x(i, 2) + 0.3 +
                                   0.05 * rng.Normal());
  }
  return d;
}

// Random features with random binary labels: nothing to learn, so validation loss only worsens
// once the network starts memorising.
Dataset Noise(int rows, int features, uint64_t seed) {
  SplitMix64 rng(seed);
  Dataset d;
  d.task = Task::kClassification;
  d.num_classes = 2;
  d.input_shape = Shape{{features}};
  d.x.resize(rows, features);
  d.y.resize(rows, 1);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < features; ++j) d.x(i, j) = static_cast<float>(rng.Normal());
    d.y(i, 0) = static_cast<float>(rng.Below(2));
  }
  return d;
}

NetworkSpec BlobNet(uint64_t seed = 1) {
  return MakeSpec(2, {DenseLayer(16), Simple("relu"), DropoutLayer(0.1), DenseLayer(3)}, seed);
}

TrainOptions Adam(double lr, int epochs, int batch, uint64_t seed = 0) {
  TrainOptions o;
  o.optimizer.type = OptimizerKind::kAdam;
  o.optimizer.learning_rate = lr;
  o.epochs = epochs;
  o.batch_size = batch;
  o.seed = seed;
  return o;
}

std::vector<Matrix> Snapshot(const Network& net) {
  std::vector<Matrix> out;
  for (const auto* p : net.Parameters()) out.push_back(p->value);
  return out;
}

bool SameParameters(const std::vector<Matrix>& a, const std::vector<Matrix>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!BitEqual(a[i], b[i])) return false;
  return true;
}

double Accuracy(const Matrix& probs, const Matrix& labels) {
  double correct = 0;
  for (int64_t r = 0; r < probs.rows(); ++r) {
    Eigen::Index arg;
    probs.row(r).maxCoeff(&arg);
    correct += arg == static_cast<Eigen::Index>(labels(r, 0));
  }
  return correct / static_cast<double>(probs.rows());
}

TEST(TrainerTest, ClassificationLossFallsOnSeparableData) {
  const Dataset data = Blobs(60, 11);
  Network net(BlobNet());
  double initial = 0;
  const Matrix before = PredictEval(net, Task::kClassification, LossKind::kCrossEntropy, data.x, 1,
                                    &initial, &data.y);
  const TrainResult r =
      Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, Adam(0.02, 30, 32, 3));
  double final_loss = 0;
  const Matrix after = PredictEval(net, Task::kClassification, LossKind::kCrossEntropy, data.x, 1,
                                   &final_loss, &data.y);
  EXPECT_FALSE(r.cancelled);
  EXPECT_EQ(r.epochs_run, 30);
  EXPECT_EQ(r.steps, 30 * 6);  // 180 rows in batches of 32
  ASSERT_EQ(r.history.size(), 30u);
  EXPECT_GT(initial, 0.5);
  EXPECT_LT(final_loss, 0.2 * initial);
  EXPECT_LT(final_loss, 0.15);
  EXPECT_GT(Accuracy(after, data.y), 0.97);
  EXPECT_LT(r.history.back().loss, r.history.front().loss);
  EXPECT_GT(r.history.back().metric, 0.9);
  // Rows of eval predictions are probabilities.
  for (int64_t i = 0; i < after.rows(); ++i) EXPECT_NEAR(after.row(i).sum(), 1.0f, 1e-5f);
  EXPECT_LT(Accuracy(before, data.y), 0.97);
}

TEST(TrainerTest, RegressionLossFalls) {
  const Dataset data = Linear(200, 21);
  Network net(MakeSpec(3, {DenseLayer(32), Simple("tanh"), DenseLayer(1)}));
  double initial = 0;
  PredictEval(net, Task::kRegression, LossKind::kMse, data.x, 1, &initial, &data.y);
  const TrainResult r = Train(&net, Task::kRegression, LossKind::kMse, data, Adam(0.01, 40, 20, 4));
  double final_loss = 0;
  const Matrix pred =
      PredictEval(net, Task::kRegression, LossKind::kMse, data.x, 1, &final_loss, &data.y);
  const double var = (data.y.array() - data.y.mean()).square().mean();
  EXPECT_GT(initial, 1.0);
  EXPECT_LT(final_loss, 0.05 * var);
  EXPECT_LT(final_loss, 0.05 * initial);
  EXPECT_NEAR(final_loss, (pred - data.y).squaredNorm() / 200.0, 1e-4);
  ASSERT_EQ(r.history.size(), 40u);
  EXPECT_LT(r.history.back().metric, r.history.front().metric);  // RMSE
  EXPECT_NEAR(r.history.back().metric, std::sqrt(r.history.back().loss), 1e-6);
}

TEST(TrainerTest, GaussianNllRegressionLearnsTheNoiseLevel) {
  const Dataset data = Linear(200, 22);
  Network net(MakeSpec(3, {DenseLayer(32), Simple("tanh"), DenseLayer(2)}));
  Train(&net, Task::kRegression, LossKind::kGaussianNll, data, Adam(0.01, 60, 20, 5));
  Matrix variance;
  double loss = 0;
  const Matrix mean = PredictEval(net, Task::kRegression, LossKind::kGaussianNll, data.x, 1, &loss,
                                  &data.y, &variance);
  ASSERT_EQ(mean.cols(), 1);
  ASSERT_EQ(variance.rows(), 200);
  const double mse = (mean - data.y).squaredNorm() / 200.0;
  EXPECT_LT(mse, 0.1);
  // The predicted variance tracks the residuals (far below the variance of y, about 6.5).
  EXPECT_LT(variance.mean(), 0.3);
}

TEST(TrainerTest, SameSeedBitIdenticalDifferentSeedDifferent) {
  const Dataset data = Blobs(30, 12);
  auto run = [&](uint64_t seed, int64_t first_step) {
    Network net(BlobNet(7));
    TrainOptions o = Adam(0.01, 4, 16, seed);
    o.threads = 2;
    o.first_step = first_step;
    const TrainResult r = Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, o);
    EXPECT_EQ(r.epochs_run, 4);
    return std::make_pair(Snapshot(net), r.history.back().loss);
  };
  const auto a = run(9, 0), b = run(9, 0), c = run(10, 0), d = run(9, 100);
  EXPECT_TRUE(SameParameters(a.first, b.first));
  EXPECT_EQ(a.second, b.second);
  EXPECT_FALSE(SameParameters(a.first, c.first));
  // Resuming at another step draws other dropout masks.
  EXPECT_FALSE(SameParameters(a.first, d.first));
  // Training moved the parameters at all.
  EXPECT_FALSE(SameParameters(a.first, Snapshot(Network(BlobNet(7)))));
}

// Step s of a run draws its masks at stream first_step + s. With one row (so shuffling does not
// matter) and plain SGD, two epochs are two steps that a reference can replay with the engine's
// own pieces.
TEST(TrainerTest, StepsDrawMasksAtTheirOwnStream) {
  Dataset one;
  one.task = Task::kClassification;
  one.num_classes = 3;
  one.input_shape = Shape{{2}};
  one.x.resize(1, 2);
  one.x << 0.8f, -1.2f;
  one.y.resize(1, 1);
  one.y << 1;
  const NetworkSpec spec =
      MakeSpec(2, {DenseLayer(32), Simple("relu"), DropoutLayer(0.5), DenseLayer(3)}, 4);
  TrainOptions o;
  o.optimizer.type = OptimizerKind::kSgd;
  o.optimizer.momentum = 0;
  o.optimizer.learning_rate = 0.5;
  o.epochs = 2;
  o.batch_size = 8;
  o.seed = 77;
  o.first_step = 5;
  Network trained(spec);
  Train(&trained, Task::kClassification, LossKind::kCrossEntropy, one, o);

  auto replay = [&](std::vector<uint64_t> streams) {
    Network net(spec);
    Optimizer sgd(o.optimizer, net.Parameters());
    for (uint64_t stream : streams) {
      Context ctx;
      ctx.mode = Mode::kTrain;
      ctx.rng = RandomStream{o.seed, stream, 1};
      ForwardCache cache;
      Matrix grad;
      Gradients grads;
      ComputeLoss(LossKind::kCrossEntropy, net.Forward(one.x, ctx, &cache), one.y, &grad);
      net.Backward(grad, cache, &grads);
      sgd.Step(grads, o.optimizer.learning_rate);
    }
    return Snapshot(net);
  };
  const auto want = replay({5, 6});
  const auto same_mask_twice = replay({5, 5});
  const auto got = Snapshot(trained);
  ASSERT_EQ(got.size(), want.size());
  double max_diff = 0, max_diff_wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_diff = std::max<double>(max_diff, (got[i] - want[i]).cwiseAbs().maxCoeff());
    max_diff_wrong =
        std::max<double>(max_diff_wrong, (got[i] - same_mask_twice[i]).cwiseAbs().maxCoeff());
  }
  EXPECT_LT(max_diff, 1e-6);
  EXPECT_GT(max_diff_wrong, 1e-3);
}

TEST(TrainerTest, ProgressIsReportedPerStepAndPerEpoch) {
  const Dataset data = Blobs(34, 13);  // 102 rows: batches of 32, 32, 32, 6
  Network net(BlobNet());
  TrainOptions o = Adam(0.01, 3, 32, 1);
  o.schedule.type = ScheduleKind::kStep;
  o.schedule.step_epochs = 1;
  o.schedule.gamma = 0.5;
  std::vector<TrainProgress> calls;
  const Network* seen = nullptr;
  const TrainResult r = Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, o,
                              [&](const TrainProgress& p, const Network& n) {
                                calls.push_back(p);
                                seen = &n;
                              });
  EXPECT_EQ(seen, &net);
  const int steps_per_epoch = 4;
  ASSERT_EQ(calls.size(), 3u * steps_per_epoch);
  for (size_t k = 0; k < calls.size(); ++k) {
    SCOPED_TRACE(k);
    const TrainProgress& p = calls[k];
    const int epoch = static_cast<int>(k) / steps_per_epoch + 1;
    EXPECT_EQ(p.step, static_cast<int64_t>(k) + 1);
    EXPECT_EQ(p.epoch, epoch);
    EXPECT_EQ(p.epochs, 3);
    EXPECT_EQ(p.total_steps, 12);
    EXPECT_EQ(p.end_of_epoch, (k + 1) % steps_per_epoch == 0);
    EXPECT_DOUBLE_EQ(p.learning_rate, 0.01 * std::pow(0.5, epoch - 1));
    EXPECT_TRUE(std::isfinite(p.loss));
    EXPECT_GT(p.loss, 0);
    EXPECT_GE(p.metric, 0);
    EXPECT_LE(p.metric, 1);
    EXPECT_GE(p.samples_per_second, 0);
    EXPECT_TRUE(std::isnan(p.val_loss));  // no validation split
    EXPECT_TRUE(std::isnan(p.val_metric));
    if (p.end_of_epoch) {
      EXPECT_TRUE(p.best);
    }
  }
  ASSERT_EQ(r.history.size(), 3u);
  for (int e = 0; e < 3; ++e) {
    EXPECT_EQ(r.history[e].epoch, e + 1);
    EXPECT_TRUE(r.history[e].end_of_epoch);
    EXPECT_EQ(r.history[e].loss, calls[(e + 1) * steps_per_epoch - 1].loss);
  }
  EXPECT_EQ(r.best_epoch, 3);
  EXPECT_EQ(r.steps, 12);
}

TEST(TrainerTest, CancelFlagStopsBetweenSteps) {
  const Dataset data = Blobs(40, 14);  // 120 rows, 8 steps an epoch at batch 16
  Network net(BlobNet());
  std::atomic<bool> cancel{false};
  std::vector<Matrix> at_step3;
  int calls = 0;
  const TrainResult r = Train(
      &net, Task::kClassification, LossKind::kCrossEntropy, data, Adam(0.01, 5, 16),
      [&](const TrainProgress& p, const Network& n) {
        ++calls;
        if (p.step == 3) {
          at_step3 = Snapshot(n);
          cancel = true;
        }
      },
      &cancel);
  EXPECT_TRUE(r.cancelled);
  EXPECT_EQ(r.steps, 3);
  EXPECT_EQ(calls, 3);
  EXPECT_TRUE(r.history.empty());
  EXPECT_FALSE(r.early_stopped);
  // No step ran after the flag was raised.
  EXPECT_TRUE(SameParameters(Snapshot(net), at_step3));

  // Raised before the start: nothing happens at all.
  Network untouched(BlobNet());
  const auto initial = Snapshot(untouched);
  std::atomic<bool> raised{true};
  const TrainResult none = Train(&untouched, Task::kClassification, LossKind::kCrossEntropy, data,
                                 Adam(0.01, 5, 16), {}, &raised);
  EXPECT_TRUE(none.cancelled);
  EXPECT_EQ(none.steps, 0);
  EXPECT_EQ(none.epochs_run, 0);
  EXPECT_TRUE(SameParameters(Snapshot(untouched), initial));
}

TEST(TrainerTest, ValidationSplitReportsValidationLossAndBestEpoch) {
  const Dataset data = Blobs(40, 15);
  Network net(BlobNet());
  TrainOptions o = Adam(0.01, 6, 16, 2);
  o.validation_split = 0.25;
  std::vector<Matrix> last;
  const TrainResult r = Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, o,
                              [&](const TrainProgress& p, const Network& n) {
                                if (p.end_of_epoch) last = Snapshot(n);
                              });
  ASSERT_EQ(r.history.size(), 6u);
  EXPECT_EQ(r.steps, 6 * 6);  // 90 training rows in batches of 16
  EXPECT_FALSE(r.early_stopped);
  double best = INFINITY;
  int best_epoch = 0;
  for (const auto& p : r.history) {
    EXPECT_TRUE(std::isfinite(p.val_loss));
    EXPECT_GE(p.val_metric, 0.0);
    EXPECT_LE(p.val_metric, 1.0);
    EXPECT_EQ(p.best, p.val_loss < best);
    if (p.val_loss < best) best = p.val_loss, best_epoch = p.epoch;
  }
  EXPECT_EQ(r.best_epoch, best_epoch);
  // Without early stopping the last parameters stay.
  EXPECT_TRUE(SameParameters(Snapshot(net), last));
  EXPECT_GT(r.history.back().val_metric, 0.9);
}

TEST(TrainerTest, EarlyStoppingRestoresTheBestEpoch) {
  const Dataset data = Noise(80, 8, 16);
  Network net(MakeSpec(8, {DenseLayer(64), Simple("relu"), DenseLayer(2)}));
  TrainOptions o = Adam(0.03, 200, 64, 6);
  o.validation_split = 0.25;
  o.early_stopping_patience = 3;
  std::vector<std::vector<Matrix>> per_epoch(o.epochs + 1);
  int last_callback_epoch = 0;
  const TrainResult r = Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, o,
                              [&](const TrainProgress& p, const Network& n) {
                                if (!p.end_of_epoch) return;
                                last_callback_epoch = p.epoch;
                                per_epoch[p.epoch] = Snapshot(n);
                              });
  EXPECT_TRUE(r.early_stopped);
  EXPECT_FALSE(r.cancelled);
  ASSERT_LT(r.epochs_run, 200);
  ASSERT_GE(r.best_epoch, 1);
  EXPECT_EQ(r.epochs_run, r.best_epoch + 3);
  EXPECT_EQ(last_callback_epoch, r.epochs_run);
  ASSERT_EQ(r.history.size(), static_cast<size_t>(r.epochs_run));
  const double best_loss = r.history[r.best_epoch - 1].val_loss;
  EXPECT_TRUE(r.history[r.best_epoch - 1].best);
  for (int e = r.best_epoch + 1; e <= r.epochs_run; ++e) {
    EXPECT_FALSE(r.history[e - 1].best);
    EXPECT_GE(r.history[e - 1].val_loss, best_loss);
  }
  for (const auto& p : r.history) EXPECT_GE(p.val_loss, best_loss);
  // The parameters are those of the best epoch, not of the epoch after it.
  EXPECT_TRUE(SameParameters(Snapshot(net), per_epoch[r.best_epoch]));
  EXPECT_FALSE(SameParameters(per_epoch[r.best_epoch + 1], per_epoch[r.best_epoch]));
  EXPECT_FALSE(SameParameters(Snapshot(net), per_epoch[r.best_epoch + 1]));
}

TEST(TrainerTest, BadOptionsThrowNamingTheField) {
  const Dataset data = Blobs(10, 17);
  auto train_with = [&](const TrainOptions& o) {
    return [&data, o] {
      Network net(BlobNet());
      Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, o);
    };
  };
  TrainOptions o = Adam(0.01, 1, 8);
  EXPECT_NO_THROW(CheckTrainOptions(o));
  EXPECT_NO_THROW(train_with(o)());

  TrainOptions bad = o;
  bad.epochs = 0;
  ExpectInvalidArgumentContaining(train_with(bad), {"epochs", "0"});
  bad = o;
  bad.batch_size = 0;
  ExpectInvalidArgumentContaining(train_with(bad), {"batch_size", "0"});
  bad = o;
  bad.validation_split = 1.0;
  ExpectInvalidArgumentContaining(train_with(bad), {"validation_split", "1"});
  bad = o;
  bad.validation_split = -0.1;
  ExpectInvalidArgumentContaining(train_with(bad), {"validation_split"});
  bad = o;
  bad.optimizer.type = static_cast<OptimizerKind>(42);
  ExpectInvalidArgumentContaining(train_with(bad), {"optimizer", "42"});
  bad = o;
  bad.optimizer.learning_rate = 0;
  ExpectInvalidArgumentContaining(train_with(bad), {"learning_rate"});
  bad = o;
  bad.schedule.type = static_cast<ScheduleKind>(42);
  ExpectInvalidArgumentContaining(train_with(bad), {"schedule", "42"});
  bad = o;
  bad.threads = 0;
  ExpectInvalidArgumentContaining(train_with(bad), {"threads"});
  bad = o;
  bad.max_norm = -1;
  ExpectInvalidArgumentContaining(train_with(bad), {"max_norm"});
  bad = o;
  bad.max_norm = std::numeric_limits<double>::infinity();
  ExpectInvalidArgumentContaining(train_with(bad), {"max_norm"});
  bad = o;
  bad.early_stopping_patience = 2;  // without a validation split
  ExpectInvalidArgumentContaining(train_with(bad), {"early_stopping_patience"});
}

TEST(TrainerTest, ParametersThatBecomeNonFiniteAreNeverReported) {
  // One step a run (batch = rows): the loss before the step is finite, the step is not. The
  // epoch must fail before its parameters reach the progress callback (which publishes them).
  const Dataset data = Blobs(10, 17);
  for (OptimizerKind type : {OptimizerKind::kSgd, OptimizerKind::kAdam}) {
    Network net(BlobNet());
    TrainOptions o = Adam(1e300, 1, static_cast<int>(data.rows()));
    o.optimizer.type = type;
    int reported = 0;
    ExpectInvalidArgumentContaining(
        [&] {
          Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, o,
                [&](const TrainProgress& p, const Network&) { reported += p.end_of_epoch; });
        },
        {"non-finite", "learning rate"});
    EXPECT_EQ(reported, 0) << OptimizerName(type);
  }
}

TEST(TrainerTest, DataThatDoesNotFitTheNetworkThrows) {
  const TrainOptions o = Adam(0.01, 1, 8);
  Dataset wide = Linear(20, 1);  // 3 features
  wide.task = Task::kClassification;
  wide.num_classes = 2;
  wide.y.setZero();
  Network net(BlobNet());  // expects 2 features
  const auto initial = Snapshot(net);
  ExpectInvalidArgumentContaining(
      [&] { Train(&net, Task::kClassification, LossKind::kCrossEntropy, wide, o); },
      {"3", "2", "features"});
  EXPECT_TRUE(SameParameters(Snapshot(net), initial));

  Dataset many_classes = Blobs(10, 1);
  many_classes.num_classes = 5;  // the network has 3 outputs
  EXPECT_THROW(Train(&net, Task::kClassification, LossKind::kCrossEntropy, many_classes, o),
               InvalidArgument);
  // Loss that does not fit the task or the head.
  EXPECT_THROW(Train(&net, Task::kRegression, LossKind::kCrossEntropy, Blobs(10, 1), o),
               InvalidArgument);
  Network reg(MakeSpec(3, {DenseLayer(2)}));
  EXPECT_THROW(Train(&reg, Task::kRegression, LossKind::kMse, Linear(20, 1), o), InvalidArgument);
}

TEST(TrainerTest, MaxNormIsAppliedAfterEachStep) {
  const Dataset data = Blobs(30, 18);
  Network net(BlobNet());
  TrainOptions o = Adam(0.1, 5, 16);
  o.max_norm = 0.5;
  Train(&net, Task::kClassification, LossKind::kCrossEntropy, data, o);
  for (const auto* p : net.Parameters()) {
    if (!p->max_norm) continue;
    for (int64_t j = 0; j < p->value.cols(); ++j) EXPECT_LE(p->value.col(j).norm(), 0.5f + 1e-5f);
  }
}

}  // namespace
}  // namespace dropnet::engine
