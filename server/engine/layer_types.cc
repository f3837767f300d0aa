#include "server/engine/layer_types.h"

#include "server/engine/concrete_dropout.h"
#include "server/engine/conv.h"
#include "server/engine/dropconnect.h"
#include "server/engine/dropout.h"
#include "server/engine/dropout_variants.h"
#include "server/engine/layers.h"
#include "server/engine/pooling.h"
#include "server/engine/recurrent.h"
#include "server/engine/sparse_vd.h"

namespace dropnet::engine {
namespace {

// Layers whose parameters are drawn from the initialisation seed, and layers without.
template <typename L>
std::unique_ptr<Layer> Seeded(const LayerConfig& config, const Shape& input, uint64_t init_seed) {
  return std::make_unique<L>(config, input, init_seed);
}

template <typename L>
std::unique_ptr<Layer> Unseeded(const LayerConfig& config, const Shape& input, uint64_t) {
  return std::make_unique<L>(config, input);
}

LayerPlan SameShape(const LayerConfig&, const Shape& input) { return LayerPlan{input, 0}; }

constexpr bool kUnits = true;
constexpr bool kWindow = true;

const LayerType kLayerTypes[] = {
    {"dense", PlanDense, Seeded<Dense>, kUnits},
    {"relu", PlanActivation, Unseeded<Activation>},
    {"leaky_relu", PlanActivation, Unseeded<Activation>},
    {"tanh", PlanActivation, Unseeded<Activation>},
    {"sigmoid", PlanActivation, Unseeded<Activation>},
    {"selu", PlanActivation, Unseeded<Activation>},
    {"gelu", PlanActivation, Unseeded<Activation>},
    {"softmax", SameShape, Unseeded<Softmax>},
    {"flatten", PlanFlatten, Unseeded<Flatten>},
    {"batch_norm", PlanBatchNorm, Unseeded<BatchNorm>},
    {"dropout", PlanDropout, Unseeded<Dropout>},
    {"lstm", PlanRecurrent, Seeded<Recurrent>, kUnits},
    {"gru", PlanRecurrent, Seeded<Recurrent>, kUnits},
    {"concrete_dropout", PlanConcreteDropout, Seeded<ConcreteDropout>, kUnits},
    {"sparse_vd", PlanSparseVd, Seeded<SparseVdDense>, kUnits},
    {"conv1d", PlanConv, Seeded<Conv>, false, kWindow},
    {"conv2d", PlanConv, Seeded<Conv>, false, kWindow},
    {"max_pool", PlanPool, Unseeded<Pool>, false, kWindow},
    {"max_pool1d", PlanPool, Unseeded<Pool>, false, kWindow},
    {"max_pool2d", PlanPool, Unseeded<Pool>, false, kWindow},
    {"avg_pool", PlanPool, Unseeded<Pool>, false, kWindow},
    {"avg_pool1d", PlanPool, Unseeded<Pool>, false, kWindow},
    {"avg_pool2d", PlanPool, Unseeded<Pool>, false, kWindow},
    {"global_avg_pool", PlanPool, Unseeded<Pool>, false, kWindow},
    {"spatial_dropout", PlanSpatialDropout, Unseeded<SpatialDropout>},
    {"spatial_dropout1d", PlanSpatialDropout, Unseeded<SpatialDropout>},
    {"spatial_dropout2d", PlanSpatialDropout, Unseeded<SpatialDropout>},
    {"gaussian_dropout", PlanGaussianDropout, Unseeded<GaussianDropout>},
    {"alpha_dropout", PlanAlphaDropout, Unseeded<AlphaDropout>},
    {"drop_connect", PlanDropConnect, Seeded<DropConnectDense>, kUnits},
};

const LayerType& TypeOf(const LayerConfig& config) {
  const LayerType* type = FindLayerType(config.type);
  if (!type) throw InvalidArgument("unknown layer type '" + config.type + "'");
  return *type;
}

}  // namespace

std::span<const LayerType> LayerTypes() { return kLayerTypes; }

const LayerType* FindLayerType(const std::string& name) {
  for (const LayerType& t : kLayerTypes)
    if (name == t.name) return &t;
  return nullptr;
}

std::vector<std::pair<const char*, int>> SizeOptions(const LayerConfig& c) {
  const LayerType* type = FindLayerType(c.type);
  std::vector<std::pair<const char*, int>> out;
  if (type && type->reads_units) out.emplace_back("units", c.units);
  if (type && type->reads_window) {
    out.insert(out.end(), {{"filters", c.filters},
                           {"kernel_size", c.kernel_size},
                           {"stride", c.stride},
                           {"padding", c.padding},
                           {"pool_size", c.pool_size}});
  }
  return out;
}

LayerPlan PlanLayer(const LayerConfig& config, const Shape& input) {
  return TypeOf(config).plan(config, input);
}

std::unique_ptr<Layer> MakeLayer(const LayerConfig& config, const Shape& input,
                                 uint64_t init_seed) {
  return TypeOf(config).build(config, input, init_seed);
}

}  // namespace dropnet::engine
