// DropConnect on a dense layer.
//
// Wan, Zeiler, Zhang, LeCun, Fergus, "Regularization of Neural Networks using DropConnect" (ICML
// 2013): y = a((M .* W)^T x + b) with M ~ Bernoulli(1-p) on the weights instead of the units. The
// stored weights are never modified: a masked copy (or, per example, masked rows on the fly) is
// used for the product. Scaling is inverted as for Dropout: kept weights are divided by the keep
// probability, so the mean weights are W itself and E[x^T (M .* W) / (1-p)] = x^T W.
//
// - kTrain and kMonteCarlo draw a mask per example (the default, as in the paper) at the
//   address (seed, stream, layer, row, weight index), or, with drop_connect_shared, one mask per
//   stream (training step or MC sample) shared by all rows of that stream. Backward regenerates
//   the masks from their address instead of storing batch x in x out values.
// - kEval uses the mean weights: a(x^T W + b). With moment_matching it uses Wan et al.'s
//   inference instead: u ~ N(mu, s^2) with mu = x^T W + b and s^2 = p/(1-p) (x.^2)^T (W.^2), and
//   y = E[a(u)], computed in closed form (deterministically, instead of the paper's sampling):
//   exact for linear and relu, the probit approximation (MacKay 1992) for sigmoid and tanh.
// - Bits of the mask are drawn 16 at a time (two per 32-bit word): a weight is dropped with
//   probability p' = round(p * 65536) / 65536 and kept ones are scaled by 1/(1-p').
// The activation is part of the layer (`activation`: "" or linear, relu, sigmoid, tanh) because
// moment matching needs it; the bias is not masked.
#ifndef DROPNET_ENGINE_DROPCONNECT_H_
#define DROPNET_ENGINE_DROPCONNECT_H_

#include <functional>

#include "server/engine/layer.h"

namespace dropnet::engine {

// Validates a drop_connect configuration for `input`: its output shape and parameter count.
LayerPlan PlanDropConnect(const LayerConfig& config, const Shape& input);

class DropConnectDense : public LayerOf<DropConnectDense> {
 public:
  enum class Act { kLinear, kRelu, kSigmoid, kTanh };
  // The activation named by LayerConfig::activation; throws InvalidArgument for another name.
  static Act ActivationOf(const std::string& name);

  DropConnectDense(const LayerConfig& config, const Shape& input, uint64_t init_seed);
  bool IsStochastic() const override { return config_.rate > 0.0; }
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;

  // The weight mask (in x out, values 0 or 1/(1-p')) that row `row` of a pass with ctx uses.
  Matrix MaskFor(const Context& ctx, int64_t row) const;
  // The drop probability actually used, p' = round(p * 65536) / 65536.
  double EffectiveRate() const { return threshold_ / 65536.0; }

 private:
  void ApplyActivation(const Matrix& z, Matrix* y) const;
  void FillMask(const CounterRng& rng, int64_t e0, int64_t e1, float* out) const;
  CounterRng SharedRng(const RandomStream& s, uint32_t layer, uint64_t stream) const;
  // With one mask per batch: for each run of rows [g0, g0 + rows) of a pass of n rows that share
  // a random stream, take(g0, rows, m) with their weight mask m.
  void ForEachSharedMask(const Context& ctx, int64_t n,
                         const std::function<void(int64_t, int64_t, const Matrix&)>& take) const;

  Act act_ = Act::kLinear;
  uint32_t threshold_ = 0;  // a weight is dropped when its 16-bit draw is below this
  float keep_scale_ = 1.0f;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_DROPCONNECT_H_
