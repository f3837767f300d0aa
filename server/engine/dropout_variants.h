// Dropout variants beyond the standard layer: spatial, Gaussian and alpha dropout.
//
// SpatialDropout1D/2D is Tompson, Goroshin, Jain, LeCun, Bregler, "Efficient Object Localization
// Using Convolutional Networks" (CVPR 2015): one Bernoulli(1-p) draw per (example, channel),
// broadcast over the length or H x W, scaled by 1/(1-p) (PyTorch's Dropout1d/2d, Keras'
// SpatialDropout). GaussianDropout is Srivastava et al., JMLR 15 (2014), section 10: y = x*e with
// e ~ N(1, p/(1-p)), the variance of inverted Bernoulli dropout at rate p. AlphaDropout is
// Klambauer, Unterthiner, Mayr, Hochreiter, "Self-Normalizing Neural Networks" (NeurIPS 2017):
// dropped units are set to a' = -scale*alpha of SELU, then y = a*x' + b with q = 1-p,
// a = (q + a'^2 q (1-q))^(-1/2), b = -a (1-q) a', which keeps a standard-normal input at mean 0
// and variance 1. All three are the identity in kEval and draw in kTrain and kMonteCarlo at the
// addresses (seed, stream, layer, row, element) of ctx, where element is the channel for spatial
// dropout and the feature otherwise; the cache keeps the multiplier for Backward.
#ifndef DROPNET_ENGINE_DROPOUT_VARIANTS_H_
#define DROPNET_ENGINE_DROPOUT_VARIANTS_H_

#include "server/engine/layer.h"

namespace dropnet::engine {

// The SELU constant a' = -scale * alpha: the value dropped units take in alpha dropout.
inline constexpr double kAlphaDropoutValue = -1.7580993408473766;

// The variants' plans: validate the rate (and spatial dropout's input rank); the output is the
// input's shape.
LayerPlan PlanSpatialDropout(const LayerConfig& config, const Shape& input);
LayerPlan PlanGaussianDropout(const LayerConfig& config, const Shape& input);
LayerPlan PlanAlphaDropout(const LayerConfig& config, const Shape& input);

// spatial_dropout1d ({C, L}), spatial_dropout2d ({C, H, W}), spatial_dropout (either).
class SpatialDropout : public RateDropoutOf<SpatialDropout> {
 public:
  SpatialDropout(const LayerConfig& config, const Shape& input);
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
  int64_t channels() const { return channels_; }

 private:
  int64_t channels_ = 0;
  int64_t spatial_ = 0;
};

// gaussian_dropout: y = x * e, e ~ N(1, p/(1-p)) per element.
class GaussianDropout : public RateDropoutOf<GaussianDropout> {
 public:
  GaussianDropout(const LayerConfig& config, const Shape& input);
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
};

// alpha_dropout, for SELU networks (use selu activations and lecun_normal dense init).
class AlphaDropout : public RateDropoutOf<AlphaDropout> {
 public:
  AlphaDropout(const LayerConfig& config, const Shape& input);
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  // The affine constants a and b for drop rate p.
  static void Affine(double p, double* a, double* b);
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_DROPOUT_VARIANTS_H_
