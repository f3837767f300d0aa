#include "server/engine/network.h"

#include <sstream>
#include <utility>

#include "server/engine/gemm.h"

namespace dropnet::engine {

namespace {

void CheckInput(const Shape& input) {
  bool positive = !input.dims.empty() && input.Size() > 0;
  for (int d : input.dims) positive = positive && d > 0;
  if (!positive) {
    throw InvalidArgument("input shape must have positive dimensions, got " + input.ToString());
  }
}

std::string LayerSpecMessage(int index, const std::string& type, const std::string& message) {
  std::ostringstream msg;
  msg << "layers[" << index << "] (" << type << "): " << message;
  return msg.str();
}

[[noreturn]] void ThrowLayerError(size_t i, const std::string& type, const std::string& what) {
  throw LayerSpecError(static_cast<int>(i), type, what);
}

}  // namespace

LayerSpecError::LayerSpecError(int index, std::string type, std::string message)
    : InvalidArgument(LayerSpecMessage(index, type, message)),
      index_(index),
      type_(std::move(type)),
      message_(std::move(message)) {}

// A layer's messages name their fields as "<type>.<field>".
std::string LayerSpecError::FieldMessage() const {
  const size_t n = type_.size();
  if (n == 0 || message_.size() <= n + 1 || message_.compare(0, n, type_) != 0 ||
      message_[n] != '.') {
    return "";
  }
  return message_.substr(n + 1);
}

NetworkPlan PlanNetwork(const NetworkSpec& spec, const PlanHooks& hooks) {
  CheckInput(spec.input);
  NetworkPlan plan;
  Shape shape = spec.input;
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const LayerConfig& config = spec.layers[i];
    if (hooks.before) hooks.before(static_cast<int>(i), config, shape);
    LayerPlan layer;
    try {
      layer = PlanLayer(config, shape);
    } catch (const InvalidArgument& e) {
      ThrowLayerError(i, config.type, e.what());
    }
    plan.parameters = SaturatingAdd(plan.parameters, layer.parameters);
    if (hooks.after) hooks.after(static_cast<int>(i), config, layer);
    shape = layer.output;
    plan.layers.push_back(std::move(layer));
  }
  plan.output = shape;
  return plan;
}

Network::Network(const NetworkSpec& spec) : spec_(spec) {
  CheckInput(spec.input);
  Shape shape = spec.input;
  SplitMix64 seeds(spec.seed);
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    try {
      layers_.push_back(MakeLayer(spec.layers[i], shape, seeds.Next()));
    } catch (const InvalidArgument& e) {
      ThrowLayerError(i, spec.layers[i].type, e.what());
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
  // Below the first layer with parameters no gradient is needed, unless the caller asks for the
  // input's (a dense layer after a flatten would otherwise compute one as large as its input).
  int first_with_params = 0;
  while (!dx && first_with_params < end && layers_[first_with_params]->params().empty())
    ++first_with_params;
  // The gradients live in the caller's matrices (a training loop passes the same ones every
  // step). A layer's Backward overwrites its own; those of layers it does not reach are zero.
  std::vector<size_t> offsets;
  size_t count = 0;
  for (const auto& l : layers_) {
    offsets.push_back(count);
    count += l->params().size();
  }
  grads->resize(count);
  for (int i = 0; i < size(); ++i) {
    const bool reached = i >= first_with_params && i < end;
    size_t q = offsets[i];
    for (const auto& p : layers_[i]->params()) {
      if (reached)
        (*grads)[q++].resize(p.value.rows(), p.value.cols());
      else
        (*grads)[q++].setZero(p.value.rows(), p.value.cols());
    }
  }
  Matrix g = dy, next;
  for (int i = end - 1; i >= first_with_params; --i) {
    const Layer& l = *layers_[i];
    std::span<Matrix> layer_grads(grads->data() + offsets[i], l.params().size());
    const bool need_dx = i > first_with_params || dx != nullptr;
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

bool RowsIndependentOfBatch(const Network& net) {
  if (!FastGemmAvailable()) return false;
  for (int i = 0; i < net.size(); ++i) {
    const LayerConfig& c = net.layer(i).config();
    if (c.type == "lstm" || c.type == "gru") return false;
    if (c.type == "drop_connect" && c.drop_connect_shared) return false;
  }
  return true;
}

}  // namespace dropnet::engine
