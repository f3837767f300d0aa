// Optimizers, learning-rate schedules and the max-norm constraint.
//
// SGD with momentum and Nesterov momentum (Sutskever et al., ICML 2013, in PyTorch's form), Adam
// (Kingma & Ba, ICLR 2015) with L2 weight decay added to the gradient, and AdamW (Loshchilov &
// Hutter, ICLR 2019) with decoupled decay. Weight decay touches only parameters marked `decay`
// (weights, not biases or normalisation terms). Max-norm (Srivastava et al. 2014, section 5.1)
// rescales each unit's incoming weight vector to norm at most c after every step.
#ifndef DROPNET_ENGINE_OPTIMIZER_H_
#define DROPNET_ENGINE_OPTIMIZER_H_

#include <string>
#include <vector>

#include "server/engine/layer.h"
#include "server/engine/network.h"

namespace dropnet::engine {

// The optimizers and schedules, as dropnet.v1's Optimizer and Schedule enums name them.
enum class OptimizerKind { kSgd, kAdam, kAdamW };
enum class ScheduleKind { kConstant, kStep, kCosine };

// "sgd", "adam", "adamw"; "constant", "step", "cosine"; "?" for a value outside the enum.
const char* OptimizerName(OptimizerKind kind);
const char* ScheduleName(ScheduleKind kind);

struct OptimizerConfig {
  OptimizerKind type = OptimizerKind::kAdam;
  double learning_rate = 1e-3;
  double momentum = 0.9;                              // sgd
  bool nesterov = false;                              // sgd
  double beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8;  // adam, adamw
  double weight_decay = 0.0;                          // L2 (sgd, adam) or decoupled (adamw)
};

struct ScheduleConfig {
  ScheduleKind type = ScheduleKind::kConstant;
  int step_epochs = 10;            // step: multiply by gamma every step_epochs epochs
  double gamma = 0.1;              // step
  double min_learning_rate = 0.0;  // cosine: the floor reached at the last step
};

// Throws InvalidArgument naming the field and value for a bad configuration.
void CheckOptimizer(const OptimizerConfig& config);
void CheckSchedule(const ScheduleConfig& config);

// The learning rate for `step` of `total_steps` (steps_per_epoch steps an epoch).
double ScheduledLearningRate(const ScheduleConfig& schedule, double base, int64_t step,
                             int64_t steps_per_epoch, int64_t total_steps);

class Optimizer {
 public:
  Optimizer(const OptimizerConfig& config, std::vector<Parameter*> params);
  // One update with learning rate lr from gradients aligned with the parameters; Adam's
  // element-wise update is split across `threads` (the result does not depend on it).
  void Step(const Gradients& grads, double lr, int threads = 1);

 private:
  OptimizerConfig config_;
  std::vector<Parameter*> params_;
  std::vector<Matrix> m_, v_;
  int64_t t_ = 0;
};

// Rescales every column of parameters marked max_norm to L2 norm at most c (c <= 0: no-op).
void ApplyMaxNorm(const std::vector<Parameter*>& params, double c);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_OPTIMIZER_H_
