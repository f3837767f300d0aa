// Concrete dropout: a dropout rate learned by gradient descent through a relaxed Bernoulli mask.
//
// Gal, Hron & Kendall, "Concrete Dropout" (NeurIPS 2017). The drop probability p = sigmoid(logit)
// is a parameter, one per layer or (per_unit) one per input unit. In kTrain and kMonteCarlo each
// element is multiplied by the relaxed keep variable 1 - s with
//   s = sigmoid((log(p+e) - log(1-p+e) + log(u+e) - log(1-u+e)) / temperature), u ~ U(0,1),
// e = 1e-7, temperature 0.1, and divided by 1-p (inverted scaling, so kEval is the identity). As
// in the paper's ConcreteDropout(Dense) wrapper, the layer owns the dense layer it feeds
// (units > 0: y = dropped(x) W + b), so that its regulariser
//   weight_reg * |W|^2 / (1-p) + dropout_reg * K * (p log p + (1-p) log(1-p))
// (K the number of input units; per unit: the sum of the per-unit terms) can see W. The
// coefficients default to the paper's derivation from the training-set size N:
// weight_reg = length_scale^2 / N and dropout_reg = 2 / N. With units = 0 the layer drops its
// input only and has the dropout term alone.
#ifndef DROPNET_ENGINE_CONCRETE_DROPOUT_H_
#define DROPNET_ENGINE_CONCRETE_DROPOUT_H_

#include "server/engine/layer.h"

namespace dropnet::engine {

// Validates a concrete_dropout configuration for `input`: its output shape and parameter count.
LayerPlan PlanConcreteDropout(const LayerConfig& config, const Shape& input);

class ConcreteDropout : public LayerOf<ConcreteDropout> {
 public:
  ConcreteDropout(const LayerConfig& config, const Shape& input, uint64_t init_seed);
  bool IsStochastic() const override { return true; }
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
  double Regularize(int64_t dataset_size, std::span<Matrix> grads) const override;
  std::vector<double> LearnedRates() const override;

  // The regulariser coefficients used for a training set of `dataset_size` rows.
  double WeightRegularizer(int64_t dataset_size) const;
  double DropoutRegularizer(int64_t dataset_size) const;

 private:
  bool has_dense_;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_CONCRETE_DROPOUT_H_
