// Losses and the model head that turns raw network outputs into answers.
//
// Softmax cross-entropy is fused (log-sum-exp on logits, gradient softmax - onehot), so it is
// stable for any logits. MSE averages over all elements. Gaussian NLL reads 2k outputs per row,
// k means then k log-variances, and is 0.5*(log s2 + (y-mu)^2/s2 + log 2pi) summed over targets
// (Nix & Weigend 1994; Lakshminarayanan et al. 2017). Every loss is a mean over rows.
#ifndef DROPNET_ENGINE_LOSS_H_
#define DROPNET_ENGINE_LOSS_H_

#include <string>

#include "server/engine/tensor.h"

namespace dropnet::engine {

enum class Task { kClassification, kRegression };
enum class LossKind { kCrossEntropy, kMse, kGaussianNll };

const char* TaskName(Task task);
const char* LossName(LossKind loss);
Task ParseTask(const std::string& name);      // classification | regression
LossKind ParseLoss(const std::string& name);  // cross_entropy | mse | gaussian_nll

// Mean loss over the rows of `output` against `targets` (class indices in one column for cross
// entropy, values otherwise); when grad is non-null it receives dLoss/doutput.
double ComputeLoss(LossKind loss, const Matrix& output, const Matrix& targets, Matrix* grad);

// Throws InvalidArgument unless the loss fits the task and a network output of `outputs` columns
// for `targets` target columns (classes for classification).
void CheckHead(Task task, LossKind loss, int64_t outputs, int64_t targets);

// What a user reads from raw outputs: class probabilities (softmax of logits, or the outputs
// themselves when the network already ends in softmax), or regression means; `variance` receives
// the predicted variances of a Gaussian NLL head and is left empty otherwise.
void HeadOutputs(Task task, LossKind loss, bool ends_with_softmax, const Matrix& raw,
                 Matrix* prediction, Matrix* variance);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_LOSS_H_
