// Tests for the scores on small examples worked out by hand.
#include "server/engine/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

namespace dropnet::engine {
namespace {

// Four rows in four different confidence bins (15 bins of width 1/15):
//   [0.70 0.20 0.10] label 0, right, confidence 0.70 -> bin 10
//   [0.20 0.50 0.30] label 2, wrong, confidence 0.50 -> bin 7
//   [0.09 0.09 0.82] label 2, right, confidence 0.82 -> bin 12
//   [0.65 0.25 0.10] label 1, wrong, confidence 0.65 -> bin 9
struct FourRows {
  Matrix probs = Matrix(4, 3);
  Matrix labels = Matrix(4, 1);
  FourRows() {
    probs << 0.70f, 0.20f, 0.10f, 0.20f, 0.50f, 0.30f, 0.09f, 0.09f, 0.82f, 0.65f, 0.25f, 0.10f;
    labels << 0, 2, 2, 1;
  }
};

TEST(MetricsTest, ClassificationByHand) {
  const FourRows d;
  const ClassificationMetrics m = ScoreClassification(d.probs, d.labels);
  EXPECT_NEAR(m.accuracy, 0.5, 1e-12);
  // NLL = -(ln 0.7 + ln 0.3 + ln 0.82 + ln 0.25) / 4.
  EXPECT_NEAR(m.nll, 0.7863482620, 1e-6);
  // Brier, summed over classes and averaged over rows:
  // (0.09+0.04+0.01) + (0.04+0.25+0.49) + (0.0081+0.0081+0.0324) + (0.4225+0.5625+0.01) = 1.9636.
  EXPECT_NEAR(m.brier, 1.9636 / 4, 1e-6);
  // Every row alone in its bin: ECE = (|1-0.7| + |0-0.5| + |1-0.82| + |0-0.65|) / 4.
  EXPECT_NEAR(m.ece, 1.63 / 4, 1e-6);
  EXPECT_NEAR(ExpectedCalibrationError(d.probs, d.labels), 1.63 / 4, 1e-6);
}

TEST(MetricsTest, EceAveragesWithinABin) {
  Matrix probs(3, 2), labels(3, 1);
  probs << 0.71f, 0.29f,  // bin 10, right
      0.72f, 0.28f,       // bin 10, wrong
      1.00f, 0.00f;       // bin 14 (confidence 1 falls in the last bin), right
  labels << 0, 1, 0;
  // Bin 10: accuracy 1/2, confidence 0.715, weight 2/3. Bin 14: perfectly calibrated.
  EXPECT_NEAR(ExpectedCalibrationError(probs, labels), 2.0 / 3.0 * 0.215, 1e-6);
  // One bin: |accuracy - mean confidence| = |2/3 - 2.43/3|.
  EXPECT_NEAR(ExpectedCalibrationError(probs, labels, 1), 0.43 / 3, 1e-6);
  const FourRows d;
  EXPECT_NEAR(ExpectedCalibrationError(d.probs, d.labels, 1), std::abs(0.5 - 2.67 / 4), 1e-6);
}

TEST(MetricsTest, ReliabilityDiagramBinsByConfidence) {
  Matrix probs(3, 2), labels(3, 1);
  probs << 0.71f, 0.29f, 0.72f, 0.28f, 1.00f, 0.00f;
  labels << 0, 1, 0;
  const auto bins = ReliabilityDiagram(probs, labels);
  ASSERT_EQ(bins.size(), 15u);
  for (int b = 0; b < 15; ++b) {
    EXPECT_DOUBLE_EQ(bins[b].lower, b / 15.0);
    EXPECT_DOUBLE_EQ(bins[b].upper, (b + 1) / 15.0);
    const int64_t expected = b == 10 ? 2 : b == 14 ? 1 : 0;
    EXPECT_EQ(bins[b].count, expected) << "bin " << b;
  }
  EXPECT_NEAR(bins[10].confidence, 0.715, 1e-6);
  EXPECT_NEAR(bins[10].accuracy, 0.5, 1e-12);
  EXPECT_NEAR(bins[14].confidence, 1.0, 1e-6);
  EXPECT_NEAR(bins[14].accuracy, 1.0, 1e-12);
  EXPECT_EQ(bins[0].accuracy, 0.0);
  const ClassificationMetrics m = ScoreClassification(probs, labels);
  ASSERT_EQ(m.reliability.size(), 15u);
  EXPECT_EQ(m.reliability[10].count, 2);
  EXPECT_THROW(ReliabilityDiagram(probs, labels, 0), InvalidArgument);
}

TEST(MetricsTest, PerfectPredictionsAndTheProbabilityFloor) {
  Matrix probs(2, 2), labels(2, 1);
  probs << 1.0f, 0.0f, 0.0f, 1.0f;
  labels << 0, 1;
  const ClassificationMetrics perfect = ScoreClassification(probs, labels);
  EXPECT_EQ(perfect.accuracy, 1.0);
  EXPECT_NEAR(perfect.nll, 0.0, 1e-12);
  EXPECT_NEAR(perfect.brier, 0.0, 1e-12);
  EXPECT_NEAR(perfect.ece, 0.0, 1e-12);
  // A zero probability on the label is floored at 1e-12, so the NLL stays finite.
  labels << 1, 1;
  const ClassificationMetrics wrong = ScoreClassification(probs, labels);
  EXPECT_NEAR(wrong.nll, 27.631021115928547 / 2, 1e-6);
  EXPECT_NEAR(wrong.brier, 1.0, 1e-12);  // (1 + 1) / 2 rows
  EXPECT_NEAR(wrong.ece, 0.5, 1e-12);    // confidence 1, accuracy 1/2
}

TEST(MetricsTest, ClassificationRejectsBadInput) {
  const FourRows d;
  Matrix short_labels(3, 1);
  short_labels << 0, 1, 2;
  EXPECT_THROW(ScoreClassification(d.probs, short_labels), InvalidArgument);
  Matrix bad_label = d.labels;
  bad_label(2, 0) = 3;
  EXPECT_THROW(ScoreClassification(d.probs, bad_label), InvalidArgument);
  bad_label(2, 0) = -1;
  EXPECT_THROW(ExpectedCalibrationError(d.probs, bad_label), InvalidArgument);
  EXPECT_THROW(ScoreClassification(Matrix(0, 3), Matrix(0, 1)), InvalidArgument);
}

TEST(MetricsTest, RegressionByHand) {
  Matrix mean(2, 2), targets(2, 2), variance(2, 2);
  mean << 1, 2, 3, 4;
  targets << 1.5f, 2, 2, 5;  // errors 0.5, 0, -1, 1
  variance << 1, 0.5f, 2, 4;
  // RMSE = sqrt((0.25 + 0 + 1 + 1) / 4) = 0.75.
  const RegressionMetrics with_var = ScoreRegression(mean, targets, variance, 0.0);
  EXPECT_NEAR(with_var.rmse, 0.75, 1e-7);
  // Mean of -1/2 (log 2 pi + log v + d^2 / v) over the four values.
  EXPECT_NEAR(with_var.log_likelihood, -1.217225328344659, 1e-6);
  // A per-value variance wins over tau.
  EXPECT_NEAR(ScoreRegression(mean, targets, variance, 2.0).log_likelihood, -1.217225328344659,
              1e-6);
  // tau = 2: variance 1/2 everywhere.
  const RegressionMetrics with_tau = ScoreRegression(mean, targets, Matrix(), 2.0);
  EXPECT_NEAR(with_tau.rmse, 0.75, 1e-7);
  EXPECT_NEAR(with_tau.log_likelihood, -1.1348649429247, 1e-6);
  // Neither: no log-likelihood.
  const RegressionMetrics none = ScoreRegression(mean, targets, Matrix(), 0.0);
  EXPECT_NEAR(none.rmse, 0.75, 1e-7);
  EXPECT_TRUE(std::isnan(none.log_likelihood));

  EXPECT_THROW(ScoreRegression(mean, Matrix(2, 3), Matrix(), 1.0), InvalidArgument);
  EXPECT_THROW(ScoreRegression(mean, Matrix(3, 2), Matrix(), 1.0), InvalidArgument);
}

}  // namespace
}  // namespace dropnet::engine
