// Sparse variational dropout for Dense layers: a per-weight dropout rate that prunes the network.
//
// Molchanov, Ashukha & Vetrov, "Variational Dropout Sparsifies Deep Neural Networks" (ICML 2017).
// Each weight has a mean theta and a log sigma^2 (the additive reparameterisation), so its
// dropout rate alpha = sigma^2 / theta^2 is learned. kTrain samples pre-activations with the local
// reparameterisation trick (Kingma et al. 2015): y = x theta + b + sqrt(x^2 sigma^2 + 1e-8) * eps,
// eps ~ N(0,1) per output element. The regulariser is the paper's approximation of the KL
// divergence to the log-uniform prior,
//   KL ~= sum_w k1 - k1 * sigmoid(k2 + k3 log alpha) + 0.5 log(1 + 1/alpha),
// k1 = 0.63576, k2 = 1.87320, k3 = 1.48695, log alpha clipped to [-10, 10], times kl_weight / N.
// Weights with log alpha > prune_threshold (3) are pruned: kEval uses x (theta * mask) + b, and
// kMonteCarlo samples the local reparameterisation over the unpruned weights only.
#ifndef DROPNET_ENGINE_SPARSE_VD_H_
#define DROPNET_ENGINE_SPARSE_VD_H_

#include "server/engine/layer.h"

namespace dropnet::engine {

// Validates a sparse_vd configuration for `input`: its output shape and parameter count.
LayerPlan PlanSparseVd(const LayerConfig& config, const Shape& input);

class SparseVdDense : public LayerOf<SparseVdDense> {
 public:
  SparseVdDense(const LayerConfig& config, const Shape& input, uint64_t init_seed);
  bool IsStochastic() const override { return true; }
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
  double Regularize(int64_t dataset_size, std::span<Matrix> grads) const override;
  // Mean over the weights of the equivalent Bernoulli rate alpha / (1 + alpha).
  std::vector<double> LearnedRates() const override;
  double Sparsity() const override;

  // log alpha = log sigma^2 - log(theta^2 + 1e-8), clipped to [-10, 10].
  Matrix LogAlpha() const;
  // 1 where a weight is kept in kEval, 0 where log alpha > prune_threshold.
  Matrix KeepMask() const;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_SPARSE_VD_H_
