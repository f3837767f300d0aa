// The deterministic building blocks: Dense, the activations, Softmax, Flatten and BatchNorm.
//
// Dense initialisation follows He et al., "Delving Deep into Rectifiers" (ICCV 2015), Glorot &
// Bengio, "Understanding the difficulty of training deep feedforward neural networks" (AISTATS
// 2010) and LeCun et al., "Efficient BackProp" (1998). SELU is Klambauer et al., "Self-Normalizing
// Neural Networks" (NeurIPS 2017); GELU is Hendrycks & Gimpel (2016), in its exact erf form.
// BatchNorm is Ioffe & Szegedy (ICML 2015): batch statistics in kTrain, running statistics in
// kEval and kMonteCarlo, normalising over features, or over channels for {C, ...} inputs.
#ifndef DROPNET_ENGINE_LAYERS_H_
#define DROPNET_ENGINE_LAYERS_H_

#include "server/engine/layer.h"

namespace dropnet::engine {

// The layers' plans (layer.h's PlanLayer for one type): validate a configuration for `input`
// and give the output shape and parameter count. Each constructor validates through its plan.
LayerPlan PlanDense(const LayerConfig& config, const Shape& input);
LayerPlan PlanActivation(const LayerConfig& config, const Shape& input);
LayerPlan PlanFlatten(const LayerConfig& config, const Shape& input);
LayerPlan PlanBatchNorm(const LayerConfig& config, const Shape& input);

// y = x W + b, W of shape in x out (each column is one unit's incoming weights).
class Dense : public LayerOf<Dense> {
 public:
  Dense(const LayerConfig& config, const Shape& input, uint64_t init_seed);
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
};

// Element-wise activations: relu, leaky_relu, tanh, sigmoid, selu, gelu.
class Activation : public LayerOf<Activation> {
 public:
  enum class Kind { kRelu, kLeakyRelu, kTanh, kSigmoid, kSelu, kGelu };
  Activation(const LayerConfig& config, const Shape& input);
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;

 private:
  Kind kind_;
};

// Row-wise softmax, computed stably (max subtracted).
class Softmax : public LayerOf<Softmax> {
 public:
  Softmax(const LayerConfig& config, const Shape& input) : LayerOf(config, input) {}
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
};

// Reinterprets {C, H, W} or {C, L} rows as flat feature vectors; the data is unchanged.
class Flatten : public LayerOf<Flatten> {
 public:
  Flatten(const LayerConfig& config, const Shape& input);
  bool PassesThrough(Mode) const override { return true; }  // rows are already flat
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
};

class BatchNorm : public LayerOf<BatchNorm> {
 public:
  BatchNorm(const LayerConfig& config, const Shape& input);
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
  void ApplyTrainStatistics(const LayerCache& cache) override;

 private:
  int64_t channels_;
  int64_t spatial_;
};

// Row-wise softmax of logits into probs (a free function for losses and estimators).
void SoftmaxRows(const Matrix& logits, Matrix* probs);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_LAYERS_H_
