// The layer contract, written once for every layer of the engine.
//
// A layer is const while it computes: Forward(x, ctx, cache, y) and Backward(dy, cache, grads, dx)
// keep masks, pre-activations and batch statistics in a per-call LayerCache, never in members, so
// many threads may run one network at once and predicting while training needs no lock. The mode
// is an argument of every call: kTrain (stochastic layers on, batch statistics used, cache recorded
// for Backward), kEval (deterministic, running statistics) and kMonteCarlo (stochastic layers on,
// everything else as in kEval). Randomness comes from ctx.rng through the counter-based generator
// of random.h, addressed by (seed, stream, layer index, row, element).
#ifndef DROPNET_ENGINE_LAYER_H_
#define DROPNET_ENGINE_LAYER_H_

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "server/engine/random.h"
#include "server/engine/tensor.h"

namespace dropnet::engine {

enum class Mode { kTrain, kEval, kMonteCarlo };
const char* ModeName(Mode mode);

// Whether stochastic layers draw in this mode.
inline bool Stochastic(Mode mode) { return mode != Mode::kEval; }

struct Context {
  Mode mode = Mode::kEval;
  RandomStream rng;
  uint32_t layer = 0;  // set by the network for each layer: part of every random address
  int threads = 1;     // threads a layer may use for its own products
};

// A tensor owned by a layer: a trainable parameter or a buffer (running statistics).
struct Parameter {
  std::string name;
  Matrix value;
  bool decay = false;     // weight decay applies (weights, not biases or BatchNorm affine terms)
  bool max_norm = false;  // columns are incoming weight vectors, subject to the max-norm constraint
};

// What a forward pass in kTrain keeps for Backward. Layers use the fields they need.
struct LayerCache {
  Matrix input;  // x, for layers that need it: set with KeepInput
  Matrix output;
  Matrix mask;
  std::vector<Matrix> extra;
  int threads = 1;  // the forward call's thread budget, for Backward's products
};

// The configuration of one layer, independent of any wire format.
struct LayerConfig {
  std::string type;      // a name of layer_types.h's table: dense, relu, leaky_relu, tanh,
                         // sigmoid, selu, gelu, softmax, flatten, batch_norm, dropout, lstm,
                         // gru, concrete_dropout, sparse_vd, the convolutions and pools, the
                         // dropout variants and drop_connect
  int units = 0;         // dense: output features
  std::string init;      // dense: he_normal, he_uniform, glorot_normal, glorot_uniform
                         // (default), lecun_normal, lecun_uniform
  bool use_bias = true;  // dense
  double rate = 0.0;     // dropout family: the drop probability p in [0, 1)
  bool classic_scaling = false;  // dropout: y = m*x in train, (1-p)*x in eval (Srivastava 2014)
  double negative_slope = 0.01;  // leaky_relu
  double momentum = 0.1;         // batch_norm: running = (1-momentum)*running + momentum*batch
  double epsilon = 1e-5;         // batch_norm
  // conv1d, conv2d, max_pool[1d|2d], avg_pool[1d|2d], global_avg_pool (conv.h); square kernels.
  int filters = 0;      // conv: output channels
  int kernel_size = 0;  // conv: kernel length (1D) or side (2D); required
  int stride = 0;       // conv, pools: step; 0 = 1 for conv, pool_size for pools
  int padding = 0;      // conv, pools: zeros added on each side of every spatial dimension
  int pool_size = 0;    // pools: window length or side; 0 = 2
  // drop_connect (dropconnect.h): a dense layer (units, init, use_bias) with DropConnect at rate.
  bool drop_connect_shared = false;  // one weight mask per batch instead of per example
  bool moment_matching = false;      // eval by Wan et al.'s Gaussian moment matching
  std::string activation;            // applied inside the layer: "" (linear), relu, sigmoid, tanh
  // lstm, gru (recurrent.h): rate above is the variational input dropout (one mask per sequence).
  bool return_sequences = false;  // lstm, gru: output every step {T, units}, else the last {units}
  double recurrent_rate = 0.0;    // lstm, gru: variational dropout of the recurrent state
  double zoneout_cell = 0.0;      // lstm: zoneout probability of the cell state
  double zoneout_hidden = 0.0;    // lstm, gru: zoneout probability of the hidden state
  // concrete_dropout (concrete_dropout.h): drops its input, then (units > 0) a dense layer.
  bool per_unit = false;              // one learned rate per input unit instead of per layer
  double init_rate = 0.1;             // initial drop probability
  double temperature = 0.1;           // relaxed Bernoulli temperature
  double weight_regularizer = -1.0;   // < 0: length_scale^2 / N (N the training-set size)
  double dropout_regularizer = -1.0;  // < 0: 2 / N
  double length_scale = 1e-4;         // prior length scale l of the derived weight regulariser
  // sparse_vd (sparse_vd.h): a Dense layer with sparse variational dropout (units, init, use_bias).
  double log_sigma2_init = -10.0;  // initial log sigma^2 of every weight
  double prune_threshold = 3.0;    // weights with log alpha above this are pruned in eval
  double kl_weight = 1.0;          // scales the KL term (1 = the variational bound)
};

// What a layer of a given configuration makes of an input shape, known without building it.
struct LayerPlan {
  Shape output;
  int64_t parameters = 0;  // trainable values; INT64_MAX when there are too many to count
};

// The parameter count of a dense map from `inputs` features to `units` (weights, then bias).
inline int64_t DenseParameterCount(int64_t inputs, int64_t units, bool use_bias) {
  return SaturatingAdd(SaturatingMul(inputs, units), use_bias ? units : 0);
}

// Checks the input (flat) and the units (positive) of a dense-like layer, named `type` in errors.
void CheckDenseInput(const char* type, const LayerConfig& config, const Shape& input);

// Records x as cache->input. Network::Forward moves each activation into the next layer's cache
// and passes that very matrix as x, so in training no activation is copied; a caller that passes
// another matrix gets a copy.
inline void KeepInput(const Matrix& x, LayerCache* cache) {
  if (&cache->input != &x) cache->input = x;
}

class Layer {
 public:
  virtual ~Layer() = default;

  // The type name the layer was built from (a name of layer_types.h's table).
  const std::string& Type() const { return config_.type; }
  virtual std::unique_ptr<Layer> Clone() const = 0;

  // True when the layer draws random numbers in kTrain and kMonteCarlo.
  virtual bool IsStochastic() const { return false; }

  // True when Forward in `mode` returns its input unchanged (y = x), so that a pass with no
  // cache to record may skip the layer instead of copying the activation.
  virtual bool PassesThrough(Mode mode) const { return false; }

  // y = f(x). In kTrain `cache` is non-null and must receive what Backward needs.
  virtual void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const = 0;

  // Given dL/dy and the cache of the matching kTrain Forward, writes dL/dparams into `grads`
  // (aligned with params(), overwritten) and, when dx is non-null, dL/dx.
  virtual void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                        Matrix* dx) const = 0;

  // Folds what a kTrain Forward measured (BatchNorm's batch statistics) into the buffers.
  virtual void ApplyTrainStatistics(const LayerCache& cache) {}

  // The layer's regulariser for a training set of `dataset_size` rows (concrete dropout's weight
  // and dropout terms, sparse VD's KL / N): adds its gradient into `grads` (aligned with
  // params()) and returns its value, on the scale of the mean per-row loss. Default: none.
  virtual double Regularize(int64_t dataset_size, std::span<Matrix> grads) const { return 0.0; }

  // Learned drop probabilities (one per layer, or one per unit); empty for fixed-rate layers.
  virtual std::vector<double> LearnedRates() const { return {}; }

  // Fraction of the weights pruned in kEval, or a negative value for layers that do not prune.
  virtual double Sparsity() const { return -1.0; }

  const Shape& input_shape() const { return input_shape_; }
  const Shape& output_shape() const { return output_shape_; }
  const LayerConfig& config() const { return config_; }
  std::vector<Parameter>& params() { return params_; }
  const std::vector<Parameter>& params() const { return params_; }
  std::vector<Parameter>& buffers() { return buffers_; }
  const std::vector<Parameter>& buffers() const { return buffers_; }

 protected:
  Layer(const LayerConfig& config, const Shape& input_shape)
      : config_(config), input_shape_(input_shape), output_shape_(input_shape) {}

  LayerConfig config_;
  Shape input_shape_;
  Shape output_shape_;
  std::vector<Parameter> params_;
  std::vector<Parameter> buffers_;
};

// The base of every concrete layer: Clone() copies the most derived type.
template <class Derived>
class LayerOf : public Layer {
 public:
  std::unique_ptr<Layer> Clone() const override {
    return std::make_unique<Derived>(static_cast<const Derived&>(*this));
  }

 protected:
  using Layer::Layer;
};

// The base of the fixed-rate dropouts of activations (dropout, spatial, Gaussian, alpha): they
// draw when the rate is above 0, and are the identity when it is 0 or the mode draws nothing.
template <class Derived>
class RateDropoutOf : public LayerOf<Derived> {
 public:
  bool IsStochastic() const override { return this->config_.rate > 0.0; }
  bool PassesThrough(Mode mode) const override {
    return this->config_.rate == 0.0 || !Stochastic(mode);
  }
  // dL/dx = dL/dy times the pass's mask (dy/dx), or dL/dy where the pass drew nothing.
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override {
    if (!dx) return;
    if (cache.mask.size() == 0) {
      *dx = dy;
    } else {
      *dx = dy.cwiseProduct(cache.mask);
    }
  }

 protected:
  using LayerOf<Derived>::LayerOf;
};

// Builds a layer for `input` with parameters initialised from `init_seed`. Throws InvalidArgument
// naming the field and value for an unknown type or an invalid option. (layer_types.cc: the table
// of layer types.)
std::unique_ptr<Layer> MakeLayer(const LayerConfig& config, const Shape& input, uint64_t init_seed);

// Validates a layer for `input` and gives its output shape and parameter count, allocating
// nothing; throws as MakeLayer does.
LayerPlan PlanLayer(const LayerConfig& config, const Shape& input);

// Fills `w` (fan_in x fan_out) according to the named scheme.
void InitializeWeights(const std::string& scheme, int64_t fan_in, int64_t fan_out, uint64_t seed,
                       Matrix* w);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_LAYER_H_
