// Tests for loss.h: values and numerical gradient checks of softmax cross-entropy, MSE and the
// Gaussian NLL, stability of cross-entropy for huge logits, label and head validation, and the
// head outputs a user reads.
#include "server/engine/loss.h"

#include <cmath>
#include <limits>
#include <string>

#include <gtest/gtest.h>

#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

constexpr double kLog2Pi = 1.8378770664093453;

// Class labels in one column.
Matrix Labels(std::initializer_list<float> labels) {
  Matrix y(static_cast<int64_t>(labels.size()), 1);
  int64_t i = 0;
  for (float v : labels) y(i++, 0) = v;
  return y;
}

// log sum_j exp(z_j) - z_label, by hand in double.
double CrossEntropyByHand(const Matrix& logits, const Matrix& labels) {
  double total = 0;
  for (int64_t r = 0; r < logits.rows(); ++r) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < logits.cols(); ++j) m = std::max<double>(m, logits(r, j));
    double s = 0;
    for (int64_t j = 0; j < logits.cols(); ++j) s += std::exp(logits(r, j) - m);
    total += m + std::log(s) - logits(r, static_cast<int64_t>(labels(r, 0)));
  }
  return total / static_cast<double>(logits.rows());
}

GradCheckResult CheckLossGradient(LossKind loss, Matrix output, const Matrix& targets,
                                  const GradCheckOptions& opt = {}) {
  Matrix grad;
  ComputeLoss(loss, output, targets, &grad);
  GradCheckResult r;
  CompareWithCentralDifferences([&] { return ComputeLoss(loss, output, targets, nullptr); },
                                &output, grad, opt, LossName(loss), &r);
  return r;
}

// The losses are means over rows, so gradients are O(1/n): check them at a scale that the
// absolute floor does not swallow (rtol 1e-2, atol 1e-4 with n = 4).
const GradCheckOptions kLossCheck{1e-2, 1e-2, 1e-4};

TEST(CrossEntropyTest, ValueMatchesLogSumExpByHand) {
  const Matrix logits = UniformMatrix(6, 5, -4, 4, 1);
  const Matrix labels = Labels({0, 4, 2, 2, 1, 3});
  EXPECT_NEAR(ComputeLoss(LossKind::kCrossEntropy, logits, labels, nullptr),
              CrossEntropyByHand(logits, labels), 1e-5);
  // Uniform logits: log C.
  EXPECT_NEAR(ComputeLoss(LossKind::kCrossEntropy, Matrix::Zero(3, 5), Labels({0, 1, 4}), nullptr),
              std::log(5.0), 1e-6);
}

TEST(CrossEntropyTest, GradientMatchesCentralDifferences) {
  const GradCheckResult r = CheckLossGradient(
      LossKind::kCrossEntropy, UniformMatrix(4, 5, -3, 3, 2), Labels({1, 0, 4, 2}), kLossCheck);
  EXPECT_EQ(r.checked, 20);
  EXPECT_EQ(r.mismatches, 0) << r.report;
}

TEST(CrossEntropyTest, GradientIsSoftmaxMinusOneHotOverN) {
  const Matrix logits = UniformMatrix(3, 4, -2, 2, 3);
  const Matrix labels = Labels({3, 0, 1});
  Matrix grad;
  ComputeLoss(LossKind::kCrossEntropy, logits, labels, &grad);
  for (int r = 0; r < 3; ++r) {
    double s = 0;
    for (int j = 0; j < 4; ++j) s += std::exp(static_cast<double>(logits(r, j)));
    for (int j = 0; j < 4; ++j) {
      const double expected =
          (std::exp(static_cast<double>(logits(r, j))) / s - (j == labels(r, 0) ? 1 : 0)) / 3;
      EXPECT_NEAR(grad(r, j), expected, 1e-6);
    }
    EXPECT_NEAR(grad.row(r).sum(), 0.0, 1e-6);
  }
}

TEST(CrossEntropyTest, StableForHugeLogits) {
  Matrix logits(4, 3);
  logits << 1e4f, 0, -1e4f,      //
      1e4f, 1e4f - 1, 1e4f - 3,  //
      -1e4f, -1e4f, -1e4f + 2,   //
      1e4f, -1e4f, 1e4f;
  const Matrix labels = Labels({0, 2, 0, 1});
  Matrix grad;
  const double loss = ComputeLoss(LossKind::kCrossEntropy, logits, labels, &grad);
  ASSERT_TRUE(std::isfinite(loss));
  ASSERT_TRUE(grad.allFinite());
  // Row by row, by hand in double.
  const double row0 = std::log1p(std::exp(-1e4) + std::exp(-2e4));
  const double row1 = 3 + std::log(1 + std::exp(-1.0) + std::exp(-3.0));
  const double row2 = 2 + std::log(2 * std::exp(-2.0) + 1);
  const double row3 = 2e4 + std::log(2.0);
  EXPECT_NEAR(loss, (row0 + row1 + row2 + row3) / 4, 1e-5);
  EXPECT_NEAR(loss, CrossEntropyByHand(logits, labels), 1e-5);
  // The gradient of row 1: softmax minus one-hot, over n.
  const double z = 1 + std::exp(-1.0) + std::exp(-3.0);
  EXPECT_NEAR(grad(1, 0), (1 / z) / 4, 1e-6);
  EXPECT_NEAR(grad(1, 2), (std::exp(-3.0) / z - 1) / 4, 1e-6);
  // Row 3: label 1 holds no mass, classes 0 and 2 half each.
  EXPECT_NEAR(grad(3, 0), 0.5 / 4, 1e-6);
  EXPECT_NEAR(grad(3, 1), -1.0 / 4, 1e-6);
  for (int r = 0; r < 4; ++r) EXPECT_NEAR(grad.row(r).sum(), 0.0, 1e-6);
}

TEST(CrossEntropyTest, BadLabelsThrow) {
  const Matrix logits = UniformMatrix(2, 3, -1, 1, 4);
  for (float bad : {-1.0f, 3.0f, 4.0f, 1e9f}) {
    try {
      ComputeLoss(LossKind::kCrossEntropy, logits, Labels({0, bad}), nullptr);
      ADD_FAILURE() << "label " << bad << " accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("label"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(ComputeLoss(LossKind::kCrossEntropy, logits, Labels({0, 2}), nullptr));
  // Row counts must agree, and an empty batch has no mean.
  EXPECT_THROW(ComputeLoss(LossKind::kCrossEntropy, logits, Labels({0, 1, 2}), nullptr),
               InvalidArgument);
  EXPECT_THROW(ComputeLoss(LossKind::kCrossEntropy, Matrix(0, 3), Matrix(0, 1), nullptr),
               InvalidArgument);
}

TEST(MseTest, ValueIsMeanOverAllElements) {
  const Matrix out = UniformMatrix(5, 3, -2, 2, 5);
  const Matrix target = UniformMatrix(5, 3, -2, 2, 6);
  double expected = 0;
  for (int64_t i = 0; i < out.size(); ++i) {
    const double d = static_cast<double>(out.data()[i]) - target.data()[i];
    expected += d * d;
  }
  expected /= static_cast<double>(out.size());
  EXPECT_NEAR(ComputeLoss(LossKind::kMse, out, target, nullptr), expected, 1e-6);
  EXPECT_EQ(ComputeLoss(LossKind::kMse, out, out, nullptr), 0.0);
}

TEST(MseTest, GradientMatchesCentralDifferences) {
  const GradCheckResult r = CheckLossGradient(LossKind::kMse, UniformMatrix(4, 3, -2, 2, 7),
                                              UniformMatrix(4, 3, -2, 2, 8), kLossCheck);
  EXPECT_EQ(r.checked, 12);
  EXPECT_EQ(r.mismatches, 0) << r.report;
}

TEST(GaussianNllTest, ValueMatchesDefinition) {
  // Two targets: outputs are (mu_1, mu_2, log s2_1, log s2_2).
  Matrix out = UniformMatrix(4, 4, -1, 1, 9);
  const Matrix target = UniformMatrix(4, 2, -1, 1, 10);
  double expected = 0;
  for (int r = 0; r < 4; ++r) {
    for (int j = 0; j < 2; ++j) {
      const double mu = out(r, j), log_var = out(r, 2 + j), d = target(r, j) - mu;
      expected += 0.5 * (log_var + d * d / std::exp(log_var) + kLog2Pi);
    }
  }
  EXPECT_NEAR(ComputeLoss(LossKind::kGaussianNll, out, target, nullptr), expected / 4, 1e-6);
  // A standard normal at its mean: 0.5 log 2 pi per target.
  EXPECT_NEAR(ComputeLoss(LossKind::kGaussianNll, Matrix::Zero(1, 2), Matrix::Zero(1, 1), nullptr),
              0.5 * kLog2Pi, 1e-9);
  // The wrong number of outputs per target is rejected.
  EXPECT_THROW(ComputeLoss(LossKind::kGaussianNll, Matrix::Zero(2, 3), Matrix::Zero(2, 2), nullptr),
               InvalidArgument);
}

TEST(GaussianNllTest, GradientMatchesCentralDifferences) {
  Matrix out = UniformMatrix(4, 6, -1.5, 1.5, 11);  // three targets
  const GradCheckResult r =
      CheckLossGradient(LossKind::kGaussianNll, out, UniformMatrix(4, 3, -2, 2, 12), kLossCheck);
  EXPECT_EQ(r.checked, 24);
  EXPECT_EQ(r.mismatches, 0) << r.report;
}

TEST(GaussianNllTest, MinimisedByTrueMeanAndSquaredError) {
  // For one observation, the NLL is minimal at mu = y and, for a fixed error d, at s2 = d^2.
  Matrix target(1, 1);
  target << 0.7f;
  Matrix at_min(1, 2);
  at_min << 0.2f, static_cast<float>(std::log(0.25));  // d = 0.5, s2 = d^2
  Matrix grad;
  ComputeLoss(LossKind::kGaussianNll, at_min, target, &grad);
  EXPECT_NEAR(grad(0, 1), 0.0, 1e-6);
  EXPECT_LT(grad(0, 0), 0.0);  // raising mu towards y lowers the loss
}

TEST(CheckHeadTest, AcceptsValidHeads) {
  EXPECT_NO_THROW(CheckHead(Task::kClassification, LossKind::kCrossEntropy, 10, 10));
  EXPECT_NO_THROW(CheckHead(Task::kClassification, LossKind::kCrossEntropy, 10, 3));
  EXPECT_NO_THROW(CheckHead(Task::kRegression, LossKind::kMse, 2, 2));
  EXPECT_NO_THROW(CheckHead(Task::kRegression, LossKind::kGaussianNll, 4, 2));
}

void ExpectHeadError(Task task, LossKind loss, int64_t outputs, int64_t targets,
                     const std::string& fragment) {
  try {
    CheckHead(task, loss, outputs, targets);
    ADD_FAILURE() << TaskName(task) << "/" << LossName(loss) << " " << outputs << " outputs, "
                  << targets << " targets accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
        << "'" << e.what() << "' lacks '" << fragment << "'";
  }
}

TEST(CheckHeadTest, RejectsMismatchedHeadsNamingTheProblem) {
  ExpectHeadError(Task::kClassification, LossKind::kMse, 3, 3, "mse");
  ExpectHeadError(Task::kClassification, LossKind::kGaussianNll, 4, 2, "gaussian_nll");
  ExpectHeadError(Task::kClassification, LossKind::kCrossEntropy, 1, 1, "has 1");
  ExpectHeadError(Task::kClassification, LossKind::kCrossEntropy, 3, 5, "5 classes");
  ExpectHeadError(Task::kRegression, LossKind::kCrossEntropy, 1, 1, "cross_entropy");
  ExpectHeadError(Task::kRegression, LossKind::kMse, 3, 2, "has 3");
  ExpectHeadError(Task::kRegression, LossKind::kGaussianNll, 2, 2, "needs 4");
  ExpectHeadError(Task::kRegression, LossKind::kGaussianNll, 3, 2, "has 3");
}

TEST(ParseTest, NamesRoundTripAndUnknownNamesThrow) {
  for (LossKind loss : {LossKind::kCrossEntropy, LossKind::kMse, LossKind::kGaussianNll}) {
    EXPECT_EQ(ParseLoss(LossName(loss)), loss);
  }
  for (Task task : {Task::kClassification, Task::kRegression}) {
    EXPECT_EQ(ParseTask(TaskName(task)), task);
  }
  EXPECT_THROW(ParseLoss("hinge"), InvalidArgument);
  EXPECT_THROW(ParseTask("ranking"), InvalidArgument);
}

TEST(HeadOutputsTest, ClassificationRowsAreProbabilities) {
  Matrix raw = UniformMatrix(5, 4, -5, 5, 13);
  raw(4, 0) = 1e4f;  // huge logits stay finite
  raw(4, 1) = -1e4f;
  Matrix prediction, variance(2, 2);
  HeadOutputs(Task::kClassification, LossKind::kCrossEntropy, false, raw, &prediction, &variance);
  ASSERT_EQ(prediction.rows(), 5);
  ASSERT_EQ(prediction.cols(), 4);
  EXPECT_EQ(variance.size(), 0);
  ASSERT_TRUE(prediction.allFinite());
  EXPECT_GE(prediction.minCoeff(), 0.0f);
  for (int r = 0; r < 5; ++r) EXPECT_NEAR(prediction.row(r).sum(), 1.0, 1e-6) << r;
  // Softmax preserves the order of the logits.
  for (int r = 0; r < 5; ++r) {
    int64_t arg_raw, arg_pred;
    raw.row(r).maxCoeff(&arg_raw);
    prediction.row(r).maxCoeff(&arg_pred);
    EXPECT_EQ(arg_raw, arg_pred);
  }
  // A network that already ends in softmax: its outputs are passed through.
  Matrix probs = prediction, again;
  HeadOutputs(Task::kClassification, LossKind::kCrossEntropy, true, probs, &again, nullptr);
  EXPECT_EQ(again, probs);
}

TEST(HeadOutputsTest, RegressionMeansAndGaussianVariances) {
  const Matrix raw = UniformMatrix(3, 4, -2, 2, 14);
  Matrix prediction, variance;
  HeadOutputs(Task::kRegression, LossKind::kGaussianNll, false, raw, &prediction, &variance);
  EXPECT_EQ(prediction, raw.leftCols(2));
  ASSERT_EQ(variance.rows(), 3);
  ASSERT_EQ(variance.cols(), 2);
  for (int r = 0; r < 3; ++r) {
    for (int j = 0; j < 2; ++j) EXPECT_NEAR(variance(r, j), std::exp(raw(r, 2 + j)), 1e-5);
  }
  HeadOutputs(Task::kRegression, LossKind::kMse, false, raw, &prediction, &variance);
  EXPECT_EQ(prediction, raw);
  EXPECT_EQ(variance.size(), 0);
}

}  // namespace
}  // namespace dropnet::engine
