// A sequential network that owns its layers and their parameters.
//
// Forward takes the mode as an argument and never mutates the network; what Backward needs is
// recorded in a ForwardCache that belongs to the call. Layer i draws its random numbers at layer
// index i, so masks depend only on (seed, stream, layer, row, element).
#ifndef DROPNET_ENGINE_NETWORK_H_
#define DROPNET_ENGINE_NETWORK_H_

#include <memory>
#include <string>
#include <vector>

#include "server/engine/layer.h"

namespace dropnet::engine {

struct NetworkSpec {
  Shape input;
  std::vector<LayerConfig> layers;
  uint64_t seed = 0;  // parameter initialisation
};

struct ForwardCache {
  std::vector<LayerCache> layers;
};

// Gradients aligned with Network::Parameters().
using Gradients = std::vector<Matrix>;

class Network {
 public:
  // Builds and initialises every layer; throws InvalidArgument naming the layer index and field.
  explicit Network(const NetworkSpec& spec);
  Network(const Network& other);
  Network& operator=(const Network& other);
  Network(Network&&) noexcept = default;
  Network& operator=(Network&&) noexcept = default;

  // Runs layers [begin, end) (end < 0: to the last) on x. In kTrain `cache` must be non-null.
  Matrix Forward(const Matrix& x, const Context& ctx, ForwardCache* cache = nullptr, int begin = 0,
                 int end = -1) const;

  // Back-propagates dy through layers [begin, end) recorded in `cache`, writing every parameter's
  // gradient (parameters of layers outside the range get zeros). dx receives dL/dinput if given.
  void Backward(const Matrix& dy, const ForwardCache& cache, Gradients* grads, int end = -1,
                Matrix* dx = nullptr) const;

  // Folds batch statistics recorded by a kTrain Forward into the layers' buffers.
  void ApplyTrainStatistics(const ForwardCache& cache);

  // Sum of the layers' regularisers for a training set of `dataset_size` rows; adds their
  // gradients into `grads` (aligned with Parameters(), as Backward writes them).
  double Regularize(int64_t dataset_size, Gradients* grads) const;

  // Index of the first layer that draws random numbers, or size() when there is none.
  int FirstStochasticLayer() const;

  std::vector<Parameter*> Parameters();
  std::vector<const Parameter*> Parameters() const;
  std::vector<Parameter*> Buffers();
  std::vector<const Parameter*> Buffers() const;
  int64_t ParameterCount() const;

  int size() const { return static_cast<int>(layers_.size()); }
  const Layer& layer(int i) const { return *layers_[i]; }
  Layer& layer(int i) { return *layers_[i]; }
  const NetworkSpec& spec() const { return spec_; }
  const Shape& input_shape() const { return spec_.input; }
  const Shape& output_shape() const;
  bool EndsWithSoftmax() const { return !layers_.empty() && layers_.back()->Type() == "softmax"; }

 private:
  NetworkSpec spec_;
  std::vector<std::unique_ptr<Layer>> layers_;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_NETWORK_H_
