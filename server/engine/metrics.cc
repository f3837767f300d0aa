#include "server/engine/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace dropnet::engine {

namespace {
constexpr double kLog2Pi = 1.8378770664093453;
constexpr double kMinProb = 1e-12;

void CheckRows(const Matrix& a, const Matrix& b) {
  if (a.rows() != b.rows() || a.rows() == 0) {
    throw InvalidArgument("predictions and labels need the same, non-zero number of rows (" +
                          std::to_string(a.rows()) + " vs " + std::to_string(b.rows()) + ")");
  }
}

int64_t Label(const Matrix& labels, int64_t r, int64_t classes) {
  const int64_t y = static_cast<int64_t>(labels(r, 0));
  if (y < 0 || y >= classes) {
    throw InvalidArgument("label " + std::to_string(y) + " in row " + std::to_string(r) +
                          " outside [0, " + std::to_string(classes) + ")");
  }
  return y;
}
}  // namespace

std::vector<ReliabilityBin> ReliabilityDiagram(const Matrix& probs, const Matrix& labels,
                                               int bins) {
  CheckRows(probs, labels);
  if (bins <= 0) throw InvalidArgument("bins must be positive, got " + std::to_string(bins));
  std::vector<ReliabilityBin> out(bins);
  std::vector<double> conf(bins, 0), acc(bins, 0);
  for (int64_t r = 0; r < probs.rows(); ++r) {
    Eigen::Index arg;
    const double c = probs.row(r).maxCoeff(&arg);
    int b = std::min(bins - 1, static_cast<int>(c * bins));
    if (b < 0) b = 0;
    conf[b] += c;
    acc[b] += arg == Label(labels, r, probs.cols()) ? 1.0 : 0.0;
    ++out[b].count;
  }
  for (int b = 0; b < bins; ++b) {
    out[b].lower = static_cast<double>(b) / bins;
    out[b].upper = static_cast<double>(b + 1) / bins;
    if (out[b].count) {
      out[b].confidence = conf[b] / static_cast<double>(out[b].count);
      out[b].accuracy = acc[b] / static_cast<double>(out[b].count);
    }
  }
  return out;
}

namespace {
double EceOf(const std::vector<ReliabilityBin>& diagram, int64_t rows) {
  double ece = 0;
  for (const auto& b : diagram) {
    ece += static_cast<double>(b.count) * std::abs(b.accuracy - b.confidence);
  }
  return ece / static_cast<double>(rows);
}
}  // namespace

double ExpectedCalibrationError(const Matrix& probs, const Matrix& labels, int bins) {
  return EceOf(ReliabilityDiagram(probs, labels, bins), probs.rows());
}

ClassificationMetrics ScoreClassification(const Matrix& probs, const Matrix& labels, int bins) {
  CheckRows(probs, labels);
  ClassificationMetrics m;
  const int64_t n = probs.rows();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t y = Label(labels, r, probs.cols());
    Eigen::Index arg;
    probs.row(r).maxCoeff(&arg);
    m.accuracy += arg == y;
    m.nll -= std::log(std::max<double>(probs(r, y), kMinProb));
    for (int64_t c = 0; c < probs.cols(); ++c) {
      const double d = probs(r, c) - (c == y ? 1.0 : 0.0);
      m.brier += d * d;
    }
  }
  m.accuracy /= n;
  m.nll /= n;
  m.brier /= n;
  m.reliability = ReliabilityDiagram(probs, labels, bins);
  m.ece = EceOf(m.reliability, n);
  return m;
}

RegressionMetrics ScoreRegression(const Matrix& mean, const Matrix& targets, const Matrix& variance,
                                  double tau) {
  CheckRows(mean, targets);
  if (mean.cols() != targets.cols())
    throw InvalidArgument("predictions and targets differ in width");
  RegressionMetrics m;
  const bool have_var = variance.size() > 0 || tau > 0;
  double sq = 0, ll = 0;
  for (int64_t r = 0; r < mean.rows(); ++r) {
    for (int64_t j = 0; j < mean.cols(); ++j) {
      const double d = targets(r, j) - mean(r, j);
      sq += d * d;
      if (have_var) {
        const double v = variance.size() > 0 ? variance(r, j) : 1.0 / tau;
        ll += -0.5 * (kLog2Pi + std::log(v) + d * d / v);
      }
    }
  }
  const double count = static_cast<double>(mean.size());
  m.rmse = std::sqrt(sq / count);
  m.log_likelihood = have_var ? ll / count : std::numeric_limits<double>::quiet_NaN();
  return m;
}

}  // namespace dropnet::engine
