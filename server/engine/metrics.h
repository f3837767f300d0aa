// Scores for predictions against labels.
//
// Classification: accuracy, negative log-likelihood (probabilities floored at 1e-12), the Brier
// score (Brier 1950, summed over classes, averaged over rows) and the expected calibration error
// over 15 equal-width confidence bins (Naeini et al. 2015; Guo et al. 2017). Regression: RMSE and
// the Gaussian test log-likelihood per target value, with a per-value predictive variance.
#ifndef DROPNET_ENGINE_METRICS_H_
#define DROPNET_ENGINE_METRICS_H_

#include "server/engine/tensor.h"

namespace dropnet::engine {

struct ClassificationMetrics {
  double accuracy = 0, nll = 0, brier = 0, ece = 0;
};

// probs: rows x classes; labels: a class index per row.
ClassificationMetrics ScoreClassification(const Matrix& probs, const Matrix& labels, int bins = 15);
double ExpectedCalibrationError(const Matrix& probs, const Matrix& labels, int bins = 15);

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
