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
  Matrix input;
  Matrix output;
  Matrix mask;
  std::vector<Matrix> extra;
  int threads = 1;  // the forward call's thread budget, for Backward's products
};

// The configuration of one layer, independent of any wire format.
struct LayerConfig {
  std::string type;           // dense, relu, leaky_relu, tanh, sigmoid, selu, gelu, softmax,
                              // flatten, batch_norm, dropout
  int units = 0;              // dense: output features
  std::string init;           // dense: he_normal, he_uniform, glorot_normal, glorot_uniform
                              // (default), lecun_normal, lecun_uniform
  bool use_bias = true;       // dense
  double rate = 0.0;          // dropout family: the drop probability p in [0, 1)
  bool classic_scaling = false;  // dropout: y = m*x in train, (1-p)*x in eval (Srivastava 2014)
  double negative_slope = 0.01;  // leaky_relu
  double momentum = 0.1;      // batch_norm: running = (1-momentum)*running + momentum*batch
  double epsilon = 1e-5;      // batch_norm
};

class Layer {
 public:
  virtual ~Layer() = default;

  virtual std::string Type() const = 0;
  virtual std::unique_ptr<Layer> Clone() const = 0;

  // True when the layer draws random numbers in kTrain and kMonteCarlo.
  virtual bool IsStochastic() const { return false; }

  // y = f(x). In kTrain `cache` is non-null and must receive what Backward needs.
  virtual void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const = 0;

  // Given dL/dy and the cache of the matching kTrain Forward, writes dL/dparams into `grads`
  // (aligned with params(), overwritten) and, when dx is non-null, dL/dx.
  virtual void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                        Matrix* dx) const = 0;

  // Folds what a kTrain Forward measured (BatchNorm's batch statistics) into the buffers.
  virtual void ApplyTrainStatistics(const LayerCache& cache) {}

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

// Builds a layer for `input` with parameters initialised from `init_seed`. Throws InvalidArgument
// naming the field and value for an unknown type or an invalid option.
std::unique_ptr<Layer> MakeLayer(const LayerConfig& config, const Shape& input, uint64_t init_seed);

// Fills `w` (fan_in x fan_out) according to the named scheme.
void InitializeWeights(const std::string& scheme, int64_t fan_in, int64_t fan_out, uint64_t seed,
                       Matrix* w);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_LAYER_H_
