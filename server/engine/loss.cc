#include "server/engine/loss.h"

#include <cmath>
#include <sstream>

#include "server/engine/layers.h"

namespace dropnet::engine {

namespace {
constexpr double kLog2Pi = 1.8378770664093453;
}

const char* TaskName(Task task) {
  return task == Task::kClassification ? "classification" : "regression";
}

const char* LossName(LossKind loss) {
  static constexpr std::array<const char*, 3> kNames = {"cross_entropy", "mse", "gaussian_nll"};
  return EnumName(loss, kNames);
}

Task ParseTask(const std::string& name) {
  if (name == "classification") return Task::kClassification;
  if (name == "regression") return Task::kRegression;
  throw InvalidArgument("task must be classification or regression, got '" + name + "'");
}

LossKind ParseLoss(const std::string& name) {
  if (name == "cross_entropy") return LossKind::kCrossEntropy;
  if (name == "mse") return LossKind::kMse;
  if (name == "gaussian_nll") return LossKind::kGaussianNll;
  throw InvalidArgument("loss must be cross_entropy, mse or gaussian_nll, got '" + name + "'");
}

void CheckHead(Task task, LossKind loss, int64_t outputs, int64_t targets) {
  std::ostringstream msg;
  if (task == Task::kClassification) {
    if (loss != LossKind::kCrossEntropy) {
      msg << "classification needs loss cross_entropy, got " << LossName(loss);
    } else if (outputs < 2) {
      msg << "classification needs at least 2 outputs (one per class), the network has " << outputs;
    } else if (targets > outputs) {
      msg << "the data has " << targets << " classes but the network only " << outputs
          << " outputs";
    }
  } else {
    if (loss == LossKind::kCrossEntropy) {
      msg << "regression needs loss mse or gaussian_nll, got cross_entropy";
    } else if (loss == LossKind::kMse && outputs != targets) {
      msg << "mse regression on " << targets << " targets needs " << targets
          << " outputs, the network has " << outputs;
    } else if (loss == LossKind::kGaussianNll && outputs != 2 * targets) {
      msg << "gaussian_nll on " << targets << " targets needs " << 2 * targets
          << " outputs (means, then log-variances), the network has " << outputs;
    }
  }
  if (!msg.str().empty()) throw InvalidArgument(msg.str());
}

double ComputeLoss(LossKind loss, const Matrix& output, const Matrix& targets, Matrix* grad) {
  const int64_t n = output.rows();
  if (n == 0) throw InvalidArgument("loss of an empty batch");
  if (targets.rows() != n) throw InvalidArgument("targets and outputs have different row counts");
  double total = 0.0;
  switch (loss) {
    case LossKind::kCrossEntropy: {
      const int64_t c = output.cols();
      if (grad) grad->resize(n, c);
      for (int64_t r = 0; r < n; ++r) {
        const int64_t y = static_cast<int64_t>(targets(r, 0));
        if (y < 0 || y >= c) {
          throw InvalidArgument("class label " + std::to_string(y) + " outside [0, " +
                                std::to_string(c) + ")");
        }
        const float m = output.row(r).maxCoeff();
        const double lse = m + std::log((output.row(r).array() - m).exp().cast<double>().sum());
        total += lse - output(r, y);
        if (grad) {
          // Subtract lse in double: rounded to float it is off by up to half an ulp of |lse|
          // (5e-4 at 1e4), which would scale every probability by up to that much.
          grad->row(r) =
              ((output.row(r).cast<double>().array() - lse).exp() / static_cast<double>(n))
                  .cast<float>()
                  .matrix();
          (*grad)(r, y) -= 1.0f / n;
        }
      }
      break;
    }
    case LossKind::kMse: {
      Matrix diff = output - targets;
      total = diff.cast<double>().squaredNorm() / static_cast<double>(diff.cols());
      if (grad) *grad = diff * (2.0f / static_cast<float>(n * diff.cols()));
      break;
    }
    case LossKind::kGaussianNll: {
      const int64_t k = targets.cols();
      if (output.cols() != 2 * k) throw InvalidArgument("gaussian_nll needs 2 outputs per target");
      if (grad) grad->resize(n, 2 * k);
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t j = 0; j < k; ++j) {
          const double mu = output(r, j), s = output(r, k + j), y = targets(r, j);
          const double inv_var = std::exp(-s), d = y - mu;
          total += 0.5 * (s + d * d * inv_var + kLog2Pi);
          if (grad) {
            (*grad)(r, j) = static_cast<float>(-d * inv_var / n);
            (*grad)(r, k + j) = static_cast<float>(0.5 * (1.0 - d * d * inv_var) / n);
          }
        }
      }
      break;
    }
  }
  return total / static_cast<double>(n);
}

void HeadOutputs(Task task, LossKind loss, bool ends_with_softmax, const Matrix& raw,
                 Matrix* prediction, Matrix* variance) {
  if (variance) variance->resize(0, 0);
  if (task == Task::kClassification) {
    if (ends_with_softmax)
      *prediction = raw;
    else
      SoftmaxRows(raw, prediction);
    return;
  }
  if (loss == LossKind::kGaussianNll) {
    const int64_t k = raw.cols() / 2;
    *prediction = raw.leftCols(k);
    // Scalar exp, element by element: a row's variances do not depend on its place in the batch.
    if (variance) *variance = raw.rightCols(k).unaryExpr([](float v) { return std::exp(v); });
    return;
  }
  *prediction = raw;
}

}  // namespace dropnet::engine
