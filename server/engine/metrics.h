// Scores for predictions against labels.
//
// Classification: accuracy, negative log-likelihood (probabilities floored at 1e-12), the Brier
// score (Brier 1950, summed over classes, averaged over rows) and the expected calibration error
// over 15 equal-width confidence bins (Naeini et al. 2015; Guo et al. 2017). Regression: RMSE and
// the Gaussian test log-likelihood per target value, with a per-value predictive variance.
#ifndef DROPNET_ENGINE_METRICS_H_
#define DROPNET_ENGINE_METRICS_H_

#include <cstdint>
#include <vector>

#include "server/engine/tensor.h"

namespace dropnet::engine {

// One bin of a reliability diagram: the rows whose top-class probability (confidence) falls in
// [lower, upper) (the last bin includes 1), their mean confidence and the fraction of them whose
// top class is the label (0 and 0 for an empty bin).
struct ReliabilityBin {
  double lower = 0, upper = 0;
  int64_t count = 0;
  double confidence = 0, accuracy = 0;
};

struct ClassificationMetrics {
  double accuracy = 0, nll = 0, brier = 0, ece = 0;
  std::vector<ReliabilityBin> reliability;  // the bins ece is computed from
};

// probs: rows x classes; labels: a class index per row.
ClassificationMetrics ScoreClassification(const Matrix& probs, const Matrix& labels, int bins = 15);
double ExpectedCalibrationError(const Matrix& probs, const Matrix& labels, int bins = 15);
// `bins` equal-width bins of confidence over [0, 1]. ECE = sum over bins of
// count / rows * |accuracy - confidence|.
std::vector<ReliabilityBin> ReliabilityDiagram(const Matrix& probs, const Matrix& labels,
                                               int bins = 15);

struct RegressionMetrics {
  double rmse = 0;
  double log_likelihood = 0;  // mean over values; NaN when no variance is known
};

// variance: the predictive variance of each value (same shape as mean), or empty to use 1/tau
// (tau <= 0 and no variance: log-likelihood NaN).
RegressionMetrics ScoreRegression(const Matrix& mean, const Matrix& targets, const Matrix& variance,
                                  double tau);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_METRICS_H_
