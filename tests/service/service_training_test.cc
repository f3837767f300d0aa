// In-process tests of the dropnet.v1.Dropnet service's training, prediction and evaluation: the
// events a Train call streams, learning and early stopping, prediction with and without
// uncertainty, and evaluation in eval and Monte-Carlo mode.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

using grpc::StatusCode;

// ---- Training ----

TEST_F(ServiceTest, TrainStreamsStartedStepsEpochsAndFinished) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(96, 4, 7)));
  v1::TrainRequest req = TrainRequest("m", "d", 3, 16);  // 6 steps an epoch, 18 in all
  req.set_report_every_steps(4);
  std::vector<v1::TrainEvent> events;
  ASSERT_OK(Train(req, &events));
  ASSERT_GE(events.size(), 5u);

  EXPECT_EQ(events.front().kind(), v1::TrainEvent::KIND_STARTED);
  EXPECT_EQ(events.front().epochs(), 3);
  EXPECT_EQ(events.front().total_steps(), 18);
  EXPECT_EQ(events.front().version(), 1);
  EXPECT_EQ(events.back().kind(), v1::TrainEvent::KIND_FINISHED);
  EXPECT_FALSE(events.back().early_stopped());

  std::vector<int64_t> step_events, epoch_versions;
  std::vector<int> epochs;
  int64_t last_step = 0;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    const auto& e = events[i];
    EXPECT_GE(e.step(), last_step) << i;
    last_step = e.step();
    EXPECT_EQ(e.total_steps(), 18);
    if (e.kind() == v1::TrainEvent::KIND_STEP) {
      step_events.push_back(e.step());
    } else if (e.kind() == v1::TrainEvent::KIND_EPOCH) {
      epoch_versions.push_back(e.version());
      epochs.push_back(e.epoch());
      EXPECT_EQ(e.step(), 6 * e.epoch());
      EXPECT_TRUE(std::isfinite(e.loss()));
      EXPECT_GE(e.metric(), 0.0);
      EXPECT_LE(e.metric(), 1.0);
      EXPECT_TRUE(std::isnan(e.val_loss()));  // no validation split
    } else {
      ADD_FAILURE() << "unexpected event kind " << e.kind() << " at " << i;
    }
  }
  EXPECT_EQ(step_events, (std::vector<int64_t>{4, 8, 16}));  // 12 and 18 are epoch ends
  EXPECT_EQ(epochs, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(epoch_versions, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(events.back().version(), 4);
  EXPECT_EQ(events.back().step(), 18);

  const v1::ModelInfo m = GetModel("m");
  EXPECT_EQ(m.version(), 4);
  EXPECT_EQ(m.steps(), 18);
  EXPECT_EQ(m.history_size(), 3);
  // A second run continues the history and the version numbers.
  events.clear();
  ASSERT_OK(Train(TrainRequest("m", "d", 1, 16), &events));
  EXPECT_EQ(events.back().version(), 5);
  EXPECT_EQ(GetModel("m").history_size(), 4);
  EXPECT_EQ(GetModel("m").history(3).epoch(), 4);
  EXPECT_EQ(GetModel("m").steps(), 24);
}

TEST_F(ServiceTest, TrainingLearns) {
  StartServer();
  TrainedClassifier(20);
  v1::EvaluateRequest req;
  req.set_model("clf");
  req.set_dataset("clf-data");
  v1::EvaluateResponse resp;
  ASSERT_OK(Evaluate(req, &resp));
  EXPECT_GT(resp.accuracy(), 0.8);  // chance is about 1/3
}

TEST_F(ServiceTest, TrainEarlyStoppingRestoresTheBestEpoch) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec(4, 5)));
  // Random labels: the validation loss soon stops improving.
  ASSERT_OK(UploadRows("noise", ClassificationData(200, 4, 8, /*random_labels=*/true)));
  v1::TrainRequest req = TrainRequest("m", "noise", 60, 16);
  req.set_learning_rate(0.05);
  req.set_validation_split(0.3);
  req.set_early_stopping_patience(2);
  std::vector<v1::TrainEvent> events;
  ASSERT_OK(Train(req, &events));
  ASSERT_FALSE(events.empty());
  const v1::TrainEvent& done = events.back();
  ASSERT_EQ(done.kind(), v1::TrainEvent::KIND_FINISHED);
  EXPECT_TRUE(done.early_stopped());
  int epoch_events = 0;
  int64_t last_epoch_version = 0;
  for (const auto& e : events) {
    if (e.kind() != v1::TrainEvent::KIND_EPOCH) continue;
    ++epoch_events;
    EXPECT_GT(e.version(), last_epoch_version);
    last_epoch_version = e.version();
    EXPECT_TRUE(std::isfinite(e.val_loss()));
  }
  EXPECT_LT(epoch_events, 60);
  EXPECT_GE(epoch_events, 3);
  // The restored parameters are published as a version of their own, and served.
  EXPECT_EQ(done.version(), last_epoch_version + 1);
  EXPECT_EQ(GetModel("m").version(), done.version());

  // Early stopping needs a validation split.
  req.set_validation_split(0);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, TrainOptionErrors) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(20, 4, 1)));
  v1::TrainRequest req = TrainRequest("m", "d", 1);
  req.set_epochs(-1);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
  req = TrainRequest("m", "d", 1);
  req.set_batch_size(-4);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
  req = TrainRequest("m", "d", 1);
  req.set_validation_split(1.0);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
  req = TrainRequest("m", "d", 1);
  req.set_report_every_steps(-1);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
  // Nothing was published by the refused calls.
  EXPECT_EQ(GetModel("m").version(), 1);
  EXPECT_FALSE(GetModel("m").training());
}

// ---- Prediction ----

TEST_F(ServiceTest, PredictReturnsProbabilitiesAndClasses) {
  StartServer();
  TrainedClassifier();
  const Data d = ClassificationData(10, 4, 99);
  v1::PredictResponse resp;
  ASSERT_OK(Predict("clf", RowsOf(d, 10), &resp));
  const int64_t served = GetModel("clf").version();
  EXPECT_EQ(resp.version(), served);
  EXPECT_EQ(resp.task(), v1::TASK_CLASSIFICATION);
  ASSERT_EQ(resp.outputs().shape_size(), 2);
  ASSERT_EQ(resp.outputs().shape(0), 10);
  ASSERT_EQ(resp.outputs().shape(1), 3);
  ASSERT_EQ(resp.outputs().values_size(), 30);
  ASSERT_EQ(resp.predicted_class_size(), 10);
  EXPECT_EQ(resp.variances().values_size(), 0);
  int correct = 0;
  for (int r = 0; r < 10; ++r) {
    double sum = 0;
    int arg = 0;
    for (int c = 0; c < 3; ++c) {
      const float p = resp.outputs().values(r * 3 + c);
      EXPECT_GE(p, 0.0f);
      EXPECT_LE(p, 1.0f);
      sum += p;
      if (p > resp.outputs().values(r * 3 + arg)) arg = c;
    }
    EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << r;
    EXPECT_EQ(resp.predicted_class(r), arg) << "row " << r;
    correct += resp.predicted_class(r) == static_cast<int>(d.y[r]);
  }
  EXPECT_GE(correct, 6);

  // Eval mode is deterministic, and [N, 1, 4] or [N, 2, 2] batches mean the same rows.
  v1::PredictResponse again;
  ASSERT_OK(Predict("clf", RowsOf(d, 10), &again));
  EXPECT_TRUE(SameBits(resp.outputs(), again.outputs()));
  v1::PredictResponse reshaped;
  ASSERT_OK(Predict("clf", Batch(std::vector<float>(d.x.begin(), d.x.begin() + 40), {10, 2, 2}),
                    &reshaped));
  EXPECT_TRUE(SameBits(resp.outputs(), reshaped.outputs()));
}

TEST_F(ServiceTest, PredictUncertaintyIsReproducibleBySeed) {
  StartServer();
  TrainedClassifier();
  const Data d = ClassificationData(7, 4, 98);
  const v1::Tensor x = RowsOf(d, 7);
  v1::PredictUncertaintyResponse a, b, c;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, 1234), &a));
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, 1234), &b));
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, 4321), &c));
  EXPECT_EQ(a.seed(), 1234u);
  EXPECT_EQ(c.seed(), 4321u);
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString());
  EXPECT_TRUE(SameBits(a.mean(), b.mean()));
  EXPECT_FALSE(SameBits(a.mean(), c.mean()));
  EXPECT_EQ(a.num_samples(), 30);
  EXPECT_EQ(a.version(), GetModel("clf").version());
  EXPECT_EQ(a.task(), v1::TASK_CLASSIFICATION);

  // Without a seed the server picks one and echoes it; the echoed seed reproduces the answer.
  v1::PredictUncertaintyResponse chosen, replay;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, std::nullopt), &chosen));
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, chosen.seed()), &replay));
  EXPECT_EQ(chosen.SerializeAsString(), replay.SerializeAsString());
  // The next call without a seed gets another one, and so other masks.
  v1::PredictUncertaintyResponse other;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, std::nullopt), &other));
  EXPECT_NE(other.seed(), chosen.seed());
  EXPECT_FALSE(SameBits(other.mean(), chosen.mean()));

  // samples 0 means the configured default.
  v1::PredictUncertaintyResponse def;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 0, 1), &def));
  EXPECT_EQ(def.num_samples(), kDefaultSamples);
}

// A row's Monte-Carlo answer depends on the seed, T, the version and the row: the rows of `x` in
// reverse order, alone or beside others, get the same bits.
TEST_F(ServiceTest, PredictUncertaintyRowAnswerDoesNotDependOnItsPosition) {
  StartServer();
  TrainedClassifier();
  const Data d = ClassificationData(5, 4, 77);
  const int64_t width = d.width;
  std::vector<float> reversed;
  for (int r = 4; r >= 0; --r)
    reversed.insert(reversed.end(), d.x.begin() + r * width, d.x.begin() + (r + 1) * width);
  v1::PredictUncertaintyResponse forward, backward, alone;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", RowsOf(d, 5), 40, 99), &forward));
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", Batch(reversed, {5, width}), 40, 99), &backward));
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", RowsOf(d, 1), 40, 99), &alone));
  const int classes = forward.mean().shape(1);
  for (int r = 0; r < 5; ++r) {
    EXPECT_EQ(forward.mutual_information(r), backward.mutual_information(4 - r)) << r;
    for (int k = 0; k < classes; ++k) {
      EXPECT_EQ(forward.mean().values(r * classes + k),
                backward.mean().values((4 - r) * classes + k));
      EXPECT_EQ(forward.stddev().values(r * classes + k),
                backward.stddev().values((4 - r) * classes + k));
    }
  }
  EXPECT_EQ(alone.mutual_information(0), forward.mutual_information(0));
  EXPECT_GT(forward.mutual_information(0), 0.0f);
}

TEST_F(ServiceTest, PredictUncertaintyClassificationFields) {
  StartServer();
  TrainedClassifier();
  constexpr int kRows = 6, kT = 25, kC = 3;
  const Data d = ClassificationData(kRows, 4, 97);
  v1::PredictUncertaintyRequest req = UncertaintyRequest("clf", RowsOf(d, kRows), kT, 77);
  req.set_return_samples(true);
  v1::PredictUncertaintyResponse r;
  ASSERT_OK(Uncertainty(req, &r));
  ASSERT_EQ(r.mean().shape_size(), 2);
  EXPECT_EQ(r.mean().shape(0), kRows);
  EXPECT_EQ(r.mean().shape(1), kC);
  ASSERT_EQ(r.mean().values_size(), kRows * kC);
  ASSERT_EQ(r.stddev().values_size(), kRows * kC);
  ASSERT_EQ(r.predictive_entropy_size(), kRows);
  ASSERT_EQ(r.expected_entropy_size(), kRows);
  ASSERT_EQ(r.mutual_information_size(), kRows);
  ASSERT_EQ(r.variation_ratio_size(), kRows);
  ASSERT_EQ(r.predicted_class_size(), kRows);
  EXPECT_EQ(r.total_variance().values_size(), 0);
  EXPECT_EQ(r.lower().values_size(), 0);

  ASSERT_EQ(r.samples().shape_size(), 3);
  EXPECT_EQ(r.samples().shape(0), kT);
  EXPECT_EQ(r.samples().shape(1), kRows);
  EXPECT_EQ(r.samples().shape(2), kC);
  ASSERT_EQ(r.samples().values_size(), kT * kRows * kC);

  double any_spread = 0;
  for (int row = 0; row < kRows; ++row) {
    double sum = 0;
    int arg = 0;
    for (int c = 0; c < kC; ++c) {
      const float m = r.mean().values(row * kC + c);
      sum += m;
      if (m > r.mean().values(row * kC + arg)) arg = c;
      EXPECT_GE(r.stddev().values(row * kC + c), 0.0f);
      any_spread += r.stddev().values(row * kC + c);
      // The mean is the mean of the returned samples.
      double from_samples = 0;
      for (int t = 0; t < kT; ++t) from_samples += r.samples().values((t * kRows + row) * kC + c);
      EXPECT_NEAR(from_samples / kT, m, 1e-5);
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
    EXPECT_EQ(r.predicted_class(row), arg);
    const float pe = r.predictive_entropy(row), ee = r.expected_entropy(row);
    const float mi = r.mutual_information(row);
    EXPECT_GE(pe, 0.0f);
    EXPECT_LE(pe, std::log(3.0f) + 1e-5f);
    EXPECT_GE(mi, -1e-5f);
    EXPECT_NEAR(mi, pe - ee, 1e-5);
    EXPECT_GE(r.variation_ratio(row), 0.0f);
    EXPECT_LE(r.variation_ratio(row), 1.0f - 1.0f / kT + 1e-6f);
  }
  EXPECT_GT(any_spread, 0.0);  // dropout 0.3 does make the samples differ

  // Every sample is a probability vector.
  for (int t = 0; t < kT; ++t) {
    for (int row = 0; row < kRows; ++row) {
      double sum = 0;
      for (int c = 0; c < kC; ++c) sum += r.samples().values((t * kRows + row) * kC + c);
      ASSERT_NEAR(sum, 1.0, 1e-5) << t << "," << row;
    }
  }
}

TEST_F(ServiceTest, PredictUncertaintyRegressionWithTau) {
  StartServer();
  constexpr double kTau = 4.0;
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, kTau)));
  Data d = RegressionData(200, 4, 11);
  ASSERT_OK(UploadRows("reg-data", d, v1::TASK_REGRESSION));
  ASSERT_OK(Train(TrainRequest("reg", "reg-data", 10)));

  constexpr int kRows = 5;
  v1::PredictUncertaintyResponse r;
  ASSERT_OK(Uncertainty(UncertaintyRequest("reg", RowsOf(d, kRows), 40, 5), &r));
  EXPECT_EQ(r.task(), v1::TASK_REGRESSION);
  ASSERT_EQ(r.mean().values_size(), kRows);
  ASSERT_EQ(r.stddev().values_size(), kRows);
  ASSERT_EQ(r.total_variance().values_size(), kRows);
  ASSERT_EQ(r.lower().values_size(), kRows);
  ASSERT_EQ(r.upper().values_size(), kRows);
  EXPECT_EQ(r.total_variance().shape(0), kRows);
  EXPECT_EQ(r.total_variance().shape(1), 1);
  EXPECT_EQ(r.predictive_entropy_size(), 0);
  EXPECT_EQ(r.predicted_class_size(), 0);
  for (int row = 0; row < kRows; ++row) {
    const float mean = r.mean().values(row), sd = r.stddev().values(row);
    const float var = r.total_variance().values(row);
    // sample variance (1/T) + 1/tau
    EXPECT_NEAR(var, sd * sd + 1.0 / kTau, 1e-4) << row;
    EXPECT_LT(r.lower().values(row), mean);
    EXPECT_LT(mean, r.upper().values(row));
    EXPECT_NEAR(r.upper().values(row) - mean, 1.959964 * std::sqrt(var), 1e-3) << row;
    EXPECT_NEAR(mean - r.lower().values(row), 1.959964 * std::sqrt(var), 1e-3) << row;
  }
  // A narrower interval mass gives a narrower interval.
  v1::PredictUncertaintyRequest half = UncertaintyRequest("reg", RowsOf(d, kRows), 40, 5);
  half.set_interval(0.5);
  v1::PredictUncertaintyResponse h;
  ASSERT_OK(Uncertainty(half, &h));
  EXPECT_NEAR(h.upper().values(0) - h.mean().values(0),
              0.6744898 * std::sqrt(h.total_variance().values(0)), 1e-3);
  half.set_interval(1.5);
  EXPECT_CODE(Uncertainty(half, &h), StatusCode::INVALID_ARGUMENT);
}

// ---- Evaluate ----

TEST_F(ServiceTest, EvaluateClassificationInEvalMode) {
  StartServer();
  TrainedClassifier();
  v1::EvaluateRequest req;
  req.set_model("clf");
  req.set_dataset("clf-data");
  req.set_limit(100);
  v1::EvaluateResponse resp;
  ASSERT_OK(Evaluate(req, &resp));
  EXPECT_EQ(resp.rows(), 100);
  EXPECT_EQ(resp.mode(), v1::EVAL_MODE_EVAL);
  EXPECT_EQ(resp.task(), v1::TASK_CLASSIFICATION);
  EXPECT_EQ(resp.version(), GetModel("clf").version());

  // The same scores computed here from Predict on the same rows.
  const Data d = ClassificationData(240, 4, 1);
  v1::PredictResponse pred;
  ASSERT_OK(Predict("clf", RowsOf(d, 64), &pred));
  v1::PredictResponse pred2;
  ASSERT_OK(Predict("clf",
                    Batch(std::vector<float>(d.x.begin() + 64 * 4, d.x.begin() + 100 * 4), {36, 4}),
                    &pred2));
  std::vector<float> probs(pred.outputs().values().begin(), pred.outputs().values().end());
  probs.insert(probs.end(), pred2.outputs().values().begin(), pred2.outputs().values().end());
  double acc = 0, nll = 0, brier = 0;
  std::vector<double> conf(15), hits(15), counts(15);
  for (int r = 0; r < 100; ++r) {
    const int y = static_cast<int>(d.y[r]);
    int arg = 0;
    for (int c = 0; c < 3; ++c) {
      const double p = probs[r * 3 + c];
      brier += (p - (c == y)) * (p - (c == y));
      if (p > probs[r * 3 + arg]) arg = c;
    }
    acc += arg == y;
    nll -= std::log(std::max<double>(probs[r * 3 + y], 1e-12));
    const double top = probs[r * 3 + arg];
    const int bin = std::min(14, static_cast<int>(top * 15));
    conf[bin] += top;
    hits[bin] += arg == y;
    counts[bin] += 1;
  }
  double ece = 0;
  for (int b = 0; b < 15; ++b) ece += std::abs(hits[b] - conf[b]);
  // The reliability diagram: the same bins.
  ASSERT_EQ(resp.reliability_size(), 15);
  for (int b = 0; b < 15; ++b) {
    const auto& bin = resp.reliability(b);
    EXPECT_NEAR(bin.lower(), b / 15.0, 1e-12);
    EXPECT_NEAR(bin.upper(), (b + 1) / 15.0, 1e-12);
    EXPECT_EQ(bin.count(), counts[b]) << "bin " << b;
    if (counts[b] > 0) {
      EXPECT_NEAR(bin.confidence(), conf[b] / counts[b], 1e-5);
      EXPECT_NEAR(bin.accuracy(), hits[b] / counts[b], 1e-9);
    }
  }
  EXPECT_NEAR(resp.accuracy(), acc / 100, 1e-9);
  EXPECT_NEAR(resp.nll(), nll / 100, 1e-5);
  EXPECT_NEAR(resp.brier(), brier / 100, 1e-5);
  EXPECT_NEAR(resp.ece(), ece / 100, 1e-5);
  EXPECT_GT(resp.accuracy(), 0.7);
}

TEST_F(ServiceTest, EvaluateClassificationMonteCarlo) {
  StartServer();
  TrainedClassifier();
  v1::EvaluateRequest req;
  req.set_model("clf");
  req.set_dataset("clf-data");
  req.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  req.set_samples(20);
  req.set_seed(3);
  v1::EvaluateResponse a, b, eval;
  ASSERT_OK(Evaluate(req, &a));
  ASSERT_OK(Evaluate(req, &b));
  EXPECT_EQ(a.mode(), v1::EVAL_MODE_MONTE_CARLO);
  EXPECT_EQ(a.samples(), 20);
  EXPECT_EQ(a.seed(), 3u);
  EXPECT_EQ(a.rows(), 240);
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString());
  EXPECT_GT(a.accuracy(), 0.7);
  EXPECT_GT(a.nll(), 0.0);
  EXPECT_GE(a.brier(), 0.0);
  EXPECT_LE(a.brier(), 2.0);
  EXPECT_GE(a.ece(), 0.0);
  EXPECT_LE(a.ece(), 1.0);
  v1::EvaluateRequest eval_req = req;
  eval_req.clear_mode();
  ASSERT_OK(Evaluate(eval_req, &eval));
  EXPECT_NE(a.nll(), eval.nll());  // the stochastic passes do change the answer

  req.clear_seed();
  v1::EvaluateResponse chosen;
  ASSERT_OK(Evaluate(req, &chosen));
  req.set_seed(chosen.seed());
  v1::EvaluateResponse replay;
  ASSERT_OK(Evaluate(req, &replay));
  EXPECT_EQ(chosen.nll(), replay.nll());
}

TEST_F(ServiceTest, EvaluateRegression) {
  StartServer();
  constexpr double kTau = 10.0;
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, kTau)));
  ASSERT_OK(CreateModel("reg-no-tau", RegressorSpec(4, 0)));
  const Data d = RegressionData(120, 4, 12);
  ASSERT_OK(UploadRows("reg-data", d, v1::TASK_REGRESSION));
  ASSERT_OK(Train(TrainRequest("reg", "reg-data", 20)));

  v1::EvaluateRequest req;
  req.set_model("reg");
  req.set_dataset("reg-data");
  req.set_limit(60);
  v1::EvaluateResponse eval;
  ASSERT_OK(Evaluate(req, &eval));
  EXPECT_EQ(eval.task(), v1::TASK_REGRESSION);
  EXPECT_EQ(eval.rows(), 60);
  v1::PredictResponse pred;
  ASSERT_OK(Predict("reg", RowsOf(d, 60), &pred));
  double sq = 0, ll = 0;
  for (int r = 0; r < 60; ++r) {
    const double e = d.y[r] - pred.outputs().values(r);
    sq += e * e;
    ll += -0.5 * std::log(2 * M_PI) + 0.5 * std::log(kTau) - 0.5 * kTau * e * e;
  }
  EXPECT_NEAR(eval.rmse(), std::sqrt(sq / 60), 1e-5);
  EXPECT_NEAR(eval.log_likelihood(), ll / 60, 1e-4);
  EXPECT_LT(eval.rmse(), 0.5);  // the targets' own spread is about 0.55

  req.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  req.set_samples(30);
  req.set_seed(8);
  v1::EvaluateResponse mc, mc2;
  ASSERT_OK(Evaluate(req, &mc));
  ASSERT_OK(Evaluate(req, &mc2));
  EXPECT_EQ(mc.SerializeAsString(), mc2.SerializeAsString());
  EXPECT_EQ(mc.samples(), 30);
  EXPECT_EQ(mc.seed(), 8u);
  EXPECT_GT(mc.rmse(), 0.0);
  EXPECT_LT(mc.rmse(), 0.6);
  EXPECT_TRUE(std::isfinite(mc.log_likelihood()));
  EXPECT_LT(mc.log_likelihood(), 0.5 * std::log(kTau / (2 * M_PI)) + 1e-6);  // its upper bound

  // Without tau there is no likelihood to report.
  req.set_model("reg-no-tau");
  ASSERT_OK(Evaluate(req, &mc));
  EXPECT_TRUE(std::isnan(mc.log_likelihood()));
  req.clear_mode();
  ASSERT_OK(Evaluate(req, &eval));
  EXPECT_TRUE(std::isnan(eval.log_likelihood()));
  EXPECT_GT(eval.rmse(), 0.0);
}

}  // namespace
}  // namespace dropnet::service
