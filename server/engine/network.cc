#include "server/engine/network.h"

#include <sstream>

#include "server/engine/concrete_dropout.h"
#include "server/engine/conv.h"
#include "server/engine/dropconnect.h"
#include "server/engine/dropout.h"
#include "server/engine/dropout_variants.h"
#include "server/engine/layers.h"
#include "server/engine/recurrent.h"
#include "server/engine/sparse_vd.h"

namespace dropnet::engine {

std::unique_ptr<Layer> MakeLayer(const LayerConfig& config, const Shape& input, uint64_t init_seed) {
  const std::string& t = config.type;
  if (t == "dense") {
    if (input.dims.size() != 1) {
      throw InvalidArgument("dense expects flat input, got shape " + input.ToString() +
                            "; add a flatten layer before it");
    }
    return std::make_unique<Dense>(config, input, init_seed);
  }
  if (t == "relu" || t == "leaky_relu" || t == "tanh" || t == "sigmoid" || t == "selu" ||
      t == "gelu") {
    return std::make_unique<Activation>(config, input);
  }
  if (t == "softmax") return std::make_unique<Softmax>(config, input);
  if (t == "flatten") return std::make_unique<Flatten>(config, input);
  if (t == "batch_norm") return std::make_unique<BatchNorm>(config, input);
  if (t == "dropout") return std::make_unique<Dropout>(config, input);
  if (t == "lstm" || t == "gru") return std::make_unique<Recurrent>(config, input, init_seed);
  if (t == "concrete_dropout") {
    return std::make_unique<ConcreteDropout>(config, input, init_seed);
  }
  if (t == "sparse_vd") {
    if (input.dims.size() != 1) {
      throw InvalidArgument("sparse_vd expects flat input, got shape " + input.ToString() +
                            "; add a flatten layer before it");
    }
    return std::make_unique<SparseVdDense>(config, input, init_seed);
  }
  if (t == "conv1d" || t == "conv2d") return std::make_unique<Conv>(config, input, init_seed);
  if (IsConvOrPoolType(t)) return std::make_unique<Pool>(config, input);
  if (t == "spatial_dropout" || t == "spatial_dropout1d" || t == "spatial_dropout2d") {
    return std::make_unique<SpatialDropout>(config, input);
  }
  if (t == "gaussian_dropout") return std::make_unique<GaussianDropout>(config, input);
  if (t == "alpha_dropout") return std::make_unique<AlphaDropout>(config, input);
  if (t == "drop_connect") {
    if (input.dims.size() != 1) {
      throw InvalidArgument("drop_connect expects flat input, got shape " + input.ToString() +
                            "; add a flatten layer before it");
    }
    return std::make_unique<DropConnectDense>(config, input, init_seed);
  }
  throw InvalidArgument("unknown layer type '" + t + "'");
}

Network::Network(const NetworkSpec& spec) : spec_(spec) {
  if (spec.input.dims.empty() || spec.input.Size() <= 0) {
    throw InvalidArgument("input shape must have positive dimensions, got " +
                          spec.input.ToString());
  }
  for (int d : spec.input.dims) {
    if (d <= 0) throw InvalidArgument("input shape must have positive dimensions, got " +
                                      spec.input.ToString());
  }
  Shape shape = spec.input;
  SplitMix64 seeds(spec.seed);
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    try {
      layers_.push_back(MakeLayer(spec.layers[i], shape, seeds.Next()));
    } catch (const InvalidArgument& e) {
      std::ostringstream msg;
      msg << "layers[" << i << "] (" << spec.layers[i].type << "): " << e.what();
      throw InvalidArgument(msg.str());
    }
    shape = layers_.back()->output_shape();
  }
}

Network::Network(const Network& other) : spec_(other.spec_) {
  for (const auto& l : other.layers_) layers_.push_back(l->Clone());
}

Network& Network::operator=(const Network& other) {
  if (this != &other) {
    Network copy(other);
    *this = std::move(copy);
  }
  return *this;
}

const Shape& Network::output_shape() const {
  return layers_.empty() ? spec_.input : layers_.back()->output_shape();
}

Matrix Network::Forward(const Matrix& x, const Context& ctx, ForwardCache* cache, int begin,
                        int end) const {
  if (end < 0) end = size();
  if (begin < 0 || begin > end || end > size()) {
    throw InvalidArgument("layer range [" + std::to_string(begin) + ", " + std::to_string(end) +
                          ") is outside the network's " + std::to_string(size()) + " layers");
  }
  // The width entering layer `begin` is what layer begin-1 produces; begin may equal size().
  const int64_t expected =
      begin == 0 ? spec_.input.Size() : layers_[begin - 1]->output_shape().Size();
  if (x.cols() != expected) {
    std::ostringstream msg;
    msg << "input has " << x.cols() << " features per row, the network expects " << expected;
    throw InvalidArgument(msg.str());
  }
  if (ctx.mode == Mode::kTrain && !cache) throw InvalidArgument("kTrain forward needs a cache");
  if (cache) cache->layers.resize(layers_.size());
  Context layer_ctx = ctx;
  if (!cache) {
    // Two buffers alternate; layers that pass their input through are skipped, not copied.
    Matrix a, b;
    const Matrix* in = &x;
    for (int i = begin; i < end; ++i) {
      if (layers_[i]->PassesThrough(ctx.mode)) continue;
      layer_ctx.layer = static_cast<uint32_t>(i);
      Matrix& out = in == &a ? b : a;
      layers_[i]->Forward(*in, layer_ctx, nullptr, &out);
      in = &out;
    }
    if (in == &x) return x;
    return std::move(in == &a ? a : b);
  }
  // In kTrain each activation moves into the cache of the layer that reads it (KeepInput), so
  // nothing is copied.
  Matrix a, b;
  for (int i = begin; i < end; ++i) {
    layer_ctx.layer = static_cast<uint32_t>(i);
    LayerCache& lc = cache->layers[i];
    lc = LayerCache();
    lc.threads = ctx.threads;
    if (i > begin) lc.input = std::move(a);
    layers_[i]->Forward(i > begin ? lc.input : x, layer_ctx, &lc, &b);
    std::swap(a, b);
  }
  if (begin == end) return x;
  return a;
}

void Network::Backward(const Matrix& dy, const ForwardCache& cache, Gradients* grads, int end,
                       Matrix* dx) const {
  if (end < 0) end = size();
  grads->resize(0);
  for (const auto& l : layers_) {
    for (const auto& p : l->params()) grads->push_back(Matrix::Zero(p.value.rows(), p.value.cols()));
  }
  size_t offset = 0;
  std::vector<size_t> offsets;
  for (const auto& l : layers_) {
    offsets.push_back(offset);
    offset += l->params().size();
  }
  Matrix g = dy, next;
  for (int i = end - 1; i >= 0; --i) {
    const Layer& l = *layers_[i];
    std::span<Matrix> layer_grads(grads->data() + offsets[i], l.params().size());
    const bool need_dx = i > 0 || dx != nullptr;
    l.Backward(g, cache.layers[i], layer_grads, need_dx ? &next : nullptr);
    if (need_dx) std::swap(g, next);
  }
  if (dx) *dx = std::move(g);
}

void Network::ApplyTrainStatistics(const ForwardCache& cache) {
  for (size_t i = 0; i < layers_.size() && i < cache.layers.size(); ++i) {
    layers_[i]->ApplyTrainStatistics(cache.layers[i]);
  }
}

double Network::Regularize(int64_t dataset_size, Gradients* grads) const {
  double total = 0;
  size_t offset = 0;
  for (const auto& l : layers_) {
    const size_t n = l->params().size();
    total += l->Regularize(dataset_size, std::span<Matrix>(grads->data() + offset, n));
    offset += n;
  }
  return total;
}

int Network::FirstStochasticLayer() const {
  for (int i = 0; i < size(); ++i)
    if (layers_[i]->IsStochastic()) return i;
  return size();
}

std::vector<Parameter*> Network::Parameters() {
  std::vector<Parameter*> out;
  for (auto& l : layers_)
    for (auto& p : l->params()) out.push_back(&p);
  return out;
}

std::vector<const Parameter*> Network::Parameters() const {
  std::vector<const Parameter*> out;
  for (const auto& l : layers_)
    for (const auto& p : l->params()) out.push_back(&p);
  return out;
}

std::vector<Parameter*> Network::Buffers() {
  std::vector<Parameter*> out;
  for (auto& l : layers_)
    for (auto& p : l->buffers()) out.push_back(&p);
  return out;
}

std::vector<const Parameter*> Network::Buffers() const {
  std::vector<const Parameter*> out;
  for (const auto& l : layers_)
    for (const auto& p : l->buffers()) out.push_back(&p);
  return out;
}

int64_t Network::ParameterCount() const {
  int64_t n = 0;
  for (const auto* p : Parameters()) n += p->value.size();
  return n;
}

}  // namespace dropnet::engine
