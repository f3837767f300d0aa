// A sequential network that owns its layers and their parameters.
//
// Forward takes the mode as an argument and never mutates the network; what Backward needs is
// recorded in a ForwardCache that belongs to the call. Layer i draws its random numbers at layer
// index i, so masks depend only on (seed, stream, layer, row, element).
#ifndef DROPNET_ENGINE_NETWORK_H_
#define DROPNET_ENGINE_NETWORK_H_

#include <functional>
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

// What a network of a spec would be, known without building it: each layer's output shape and
// parameter count.
struct NetworkPlan {
  std::vector<LayerPlan> layers;
  int64_t parameters = 0;  // the sum; INT64_MAX when there are too many to count
  Shape output;            // the last layer's (the input's for no layers)
};

// Called by PlanNetwork around layer i, in layer order, so that a caller imposes its own limits
// (and throws its own errors) exactly where they arise: `before` ahead of the layer's checks, with
// its input shape, and `after` once the layer passed them. Either may be empty.
struct PlanHooks {
  std::function<void(int index, const LayerConfig& config, const Shape& input)> before;
  std::function<void(int index, const LayerConfig& config, const LayerPlan& plan)> after;
};

// An invalid layer of a network spec. what() names the layer index and type, then the layer's
// own message: "layers[1] (dropout): dropout.rate must be in [0, 1), got 1.5"; the parts are kept
// for callers that name the layer their own way.
class LayerSpecError : public InvalidArgument {
 public:
  LayerSpecError(int index, std::string type, std::string message);
  int index() const { return index_; }
  const std::string& type() const { return type_; }
  const std::string& message() const { return message_; }
  // The message with its field named relative to the layer ("rate must be in [0, 1), got 1.5"
  // for "dropout.rate must be ..."), or "" when it does not name one of the layer's fields.
  std::string FieldMessage() const;

 private:
  int index_;
  std::string type_;
  std::string message_;
};

// Validates every layer of `spec` and plans it, allocating nothing. Throws LayerSpecError for an
// invalid layer, InvalidArgument for an invalid input shape.
NetworkPlan PlanNetwork(const NetworkSpec& spec, const PlanHooks& hooks = {});

struct ForwardCache {
  std::vector<LayerCache> layers;
};

// Gradients aligned with Network::Parameters().
using Gradients = std::vector<Matrix>;

class Network {
 public:
  // Builds and initialises every layer; throws as PlanNetwork does.
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

// True when every row of a kEval or kMonteCarlo pass of `net` is computed from that row alone, bit
// for bit whatever the other rows of the batch, their number and the row's place among them, so
// that calls may be stacked into one pass: products through the AVX-512 kernel (gemm.h; Eigen's
// blocking depends on the batch), no recurrent layer (their step products are Eigen's) and no
// DropConnect mask shared by a batch.
bool RowsIndependentOfBatch(const Network& net);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_NETWORK_H_
