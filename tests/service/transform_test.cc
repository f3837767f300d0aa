// The transforms a model carries: a regression model trained with standardize learns standardised
// targets and answers Predict, PredictUncertainty and Evaluate in the target's units; a model
// trained on an IDX import takes raw 0..255 pixels and scales them itself.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/service/service_fixture.h"
#include "tests/testing/idx_bytes.h"

namespace dropnet::service {
namespace {

constexpr double kTargetMean = 150.0;
constexpr double kTargetStd = 75.0;

// RegressionData with its targets moved to mean 150 and std 75 (as diabetes.csv's are, roughly).
Data WideTargets(int64_t rows, uint64_t seed) {
  Data d = RegressionData(rows, 4, seed);
  double mean = 0, sq = 0;
  for (float v : d.y) mean += v;
  mean /= static_cast<double>(rows);
  for (float v : d.y) sq += (v - mean) * (v - mean);
  const double sd = std::sqrt(sq / static_cast<double>(rows));
  for (float& v : d.y) v = static_cast<float>(kTargetMean + kTargetStd * (v - mean) / sd);
  return d;
}

double Rmse(const Data& d, const v1::Tensor& predictions, int64_t rows) {
  double sq = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const double e = d.y[r] - predictions.values(static_cast<int>(r));
    sq += e * e;
  }
  return std::sqrt(sq / static_cast<double>(rows));
}

TEST_F(ServiceTest, StandardizedRegressionAnswersInTheTargetsUnits) {
  StartServer();
  constexpr double kTau = 25.0;  // in standardised units: a noise std of 0.2 target stds
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, kTau)));
  const Data d = WideTargets(400, 21);
  ASSERT_OK(UploadRows("reg-data", d, v1::TASK_REGRESSION));
  v1::TrainRequest train = TrainRequest("reg", "reg-data", 30);
  train.set_standardize(true);
  ASSERT_OK(Train(train));

  // GetModel shows both transforms; the target's is fitted on the training rows.
  const v1::ModelInfo info = GetModel("reg");
  EXPECT_EQ(info.input_scale(), 1.0f);
  EXPECT_EQ(info.input_standardization().mean_size(), 4);
  ASSERT_EQ(info.target_standardization().mean_size(), 1);
  ASSERT_EQ(info.target_standardization().scale_size(), 1);
  EXPECT_NEAR(info.target_standardization().mean(0), kTargetMean, 10.0);
  EXPECT_NEAR(info.target_standardization().scale(0), kTargetStd, 10.0);
  const double s = info.target_standardization().scale(0);

  // The target is about 97% explained by its linear part (0.8 x0 - 0.5 x1 on uniform inputs,
  // against 0.3 x2 x3 and noise), so a model that learned gets an RMSE well below half the
  // target's std; predicting the mean scores the std itself (75) and answers in standardised
  // units (near 0) about sqrt(150^2 + 75^2) = 168.
  constexpr int64_t kRows = kMaxBatchRows;
  v1::PredictResponse pred;
  ASSERT_OK(Predict("reg", RowsOf(d, kRows), &pred));
  const double rmse = Rmse(d, pred.outputs(), kRows);
  EXPECT_LT(rmse, 0.5 * kTargetStd);

  // Evaluate in eval mode: the same RMSE, and the log-likelihood of N(mean, s^2 / tau) in the
  // target's units (the -log s Jacobian included).
  v1::EvaluateRequest req;
  req.set_model("reg");
  req.set_dataset("reg-data");
  req.set_limit(kRows);
  v1::EvaluateResponse eval;
  ASSERT_OK(Evaluate(req, &eval));
  EXPECT_NEAR(eval.rmse(), rmse, 1e-3 * rmse);
  double ll = 0;
  const double var = s * s / kTau;
  for (int64_t r = 0; r < kRows; ++r) {
    const double e = d.y[r] - pred.outputs().values(static_cast<int>(r));
    ll += -0.5 * (std::log(2 * M_PI) + std::log(var) + e * e / var);
  }
  EXPECT_NEAR(eval.log_likelihood(), ll / kRows, 1e-3);

  // Monte Carlo: RMSE in the same units, and a log-likelihood on the same scale as eval mode's
  // (without the Jacobian it would be log 75 = 4.3 higher).
  req.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  req.set_samples(50);
  req.set_seed(3);
  v1::EvaluateResponse mc;
  ASSERT_OK(Evaluate(req, &mc));
  EXPECT_LT(mc.rmse(), 0.5 * kTargetStd);
  EXPECT_NEAR(mc.log_likelihood(), eval.log_likelihood(), 1.0);
  EXPECT_LT(mc.log_likelihood(), 0.5 * std::log(kTau / (2 * M_PI)) - std::log(s) + 1e-6);

  // PredictUncertainty: mean, std, variance (sample variance + s^2 / tau) and intervals in the
  // target's units.
  constexpr int kFew = 8;
  v1::PredictUncertaintyResponse u;
  ASSERT_OK(Uncertainty(UncertaintyRequest("reg", RowsOf(d, kFew), 60, 4), &u));
  ASSERT_EQ(u.mean().values_size(), kFew);
  EXPECT_LT(Rmse(d, u.mean(), kFew), 0.5 * kTargetStd);
  for (int r = 0; r < kFew; ++r) {
    const double m = u.mean().values(r), sd = u.stddev().values(r);
    const double v = u.total_variance().values(r);
    EXPECT_NEAR(v, sd * sd + s * s / kTau, 1e-3 * v) << r;
    EXPECT_GT(v, s * s / kTau * 0.999) << r;
    EXPECT_NEAR(u.upper().values(r) - m, 1.959964 * std::sqrt(v), 1e-3 * std::sqrt(v)) << r;
    EXPECT_NEAR(m - u.lower().values(r), 1.959964 * std::sqrt(v), 1e-3 * std::sqrt(v)) << r;
  }
}

TEST_F(ServiceTest, StandardizationSurvivesARestart) {
  StartServer();
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, 4.0)));
  const Data d = WideTargets(120, 5);
  ASSERT_OK(UploadRows("reg-data", d, v1::TASK_REGRESSION));
  v1::TrainRequest train = TrainRequest("reg", "reg-data", 3);
  train.set_standardize(true);
  ASSERT_OK(Train(train));
  v1::PredictResponse before, after;
  ASSERT_OK(Predict("reg", RowsOf(d, 10), &before));
  StopServer();
  StartServer();
  ASSERT_OK(Predict("reg", RowsOf(d, 10), &after));
  EXPECT_TRUE(SameBits(before.outputs(), after.outputs()));
  EXPECT_EQ(GetModel("reg").target_standardization().mean_size(), 1);
}

// 4 x 4 images of three classes: class c has bright pixels in column c.
struct Images {
  std::vector<uint8_t> pixels;
  std::vector<uint8_t> labels;
};

Images MakeImages(int n, uint64_t seed) {
  Rng rng(seed);
  Images im;
  for (int i = 0; i < n; ++i) {
    const int label = i % 3;
    im.labels.push_back(static_cast<uint8_t>(label));
    for (int p = 0; p < 16; ++p) {
      const int base = p % 4 == label ? 160 : 40;
      im.pixels.push_back(static_cast<uint8_t>(base + static_cast<int>(rng.Uniform() * 90)));
    }
  }
  return im;
}

TEST_F(ServiceTest, IdxModelTakesRawPixels) {
  StartServer();
  const Images im = MakeImages(150, 9);
  WriteFile(dir_.path() / "data" / "img-idx3-ubyte", testing::IdxImages(150, 4, 4, im.pixels));
  WriteFile(dir_.path() / "data" / "lab-idx1-ubyte", testing::IdxLabels(im.labels));
  v1::ImportDatasetRequest imp;
  imp.set_name("idx");
  imp.set_path("img-idx3-ubyte");
  imp.set_label_path("lab-idx1-ubyte");
  ASSERT_OK(ImportDataset(imp));

  // The same images uploaded already scaled to 0..1, as the IDX import used to store them.
  Data scaled;
  scaled.rows = 150;
  scaled.width = 16;
  for (uint8_t p : im.pixels) scaled.x.push_back(static_cast<float>(p) / 255.0f);
  for (uint8_t l : im.labels) scaled.y.push_back(l);
  ASSERT_OK(UploadRows("scaled", scaled));

  ASSERT_OK(CreateModel("raw-model", ClassifierSpec(16, 3)));
  ASSERT_OK(CreateModel("scaled-model", ClassifierSpec(16, 3)));
  ASSERT_OK(Train(TrainRequest("raw-model", "idx", 5)));
  ASSERT_OK(Train(TrainRequest("scaled-model", "scaled", 5)));

  const v1::ModelInfo info = GetModel("raw-model");
  EXPECT_FLOAT_EQ(info.input_scale(), 1.0f / 255.0f);
  EXPECT_EQ(GetModel("scaled-model").input_scale(), 1.0f);

  // Raw pixels to the IDX model answer as scaled pixels to the model trained on scaled ones.
  std::vector<float> raw(im.pixels.begin(), im.pixels.begin() + 20 * 16);
  v1::PredictResponse a, b;
  ASSERT_OK(Predict("raw-model", Batch(raw, {20, 16}), &a));
  ASSERT_OK(Predict("scaled-model", RowsOf(scaled, 20), &b));
  ASSERT_EQ(a.outputs().values_size(), b.outputs().values_size());
  for (int k = 0; k < a.outputs().values_size(); ++k) {
    EXPECT_NEAR(a.outputs().values(k), b.outputs().values(k), 1e-3) << k;
  }
  EXPECT_EQ(std::vector<int>(a.predicted_class().begin(), a.predicted_class().end()),
            std::vector<int>(b.predicted_class().begin(), b.predicted_class().end()));
  // It learned: raw pixels are not saturated.
  int right = 0;
  for (int r = 0; r < 20; ++r) right += a.predicted_class(r) == im.labels[r];
  EXPECT_GE(right, 17);

  // Evaluate reads the stored raw rows through the same scale.
  v1::EvaluateRequest ev;
  ev.set_model("raw-model");
  ev.set_dataset("idx");
  v1::EvaluateResponse e1, e2;
  ASSERT_OK(Evaluate(ev, &e1));
  ev.set_model("scaled-model");
  ev.set_dataset("scaled");
  ASSERT_OK(Evaluate(ev, &e2));
  EXPECT_NEAR(e1.accuracy(), e2.accuracy(), 1e-9);
  EXPECT_NEAR(e1.nll(), e2.nll(), 1e-3);
}

}  // namespace
}  // namespace dropnet::service
