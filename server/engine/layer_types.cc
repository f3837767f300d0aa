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

// Options shared by several types.
constexpr uint32_t kDenseLike = kOptUnits | kOptInit | kOptUseBias;
constexpr uint32_t kRecurrent = kOptUnits | kOptInit | kOptRate | kOptRecurrentRate |
                                kOptReturnSequences | kOptZoneoutCell | kOptZoneoutHidden;
constexpr uint32_t kConvOptions =
    kOptFilters | kOptKernelSize | kOptStride | kOptPadding | kOptInit | kOptUseBias;
constexpr uint32_t kPoolOptions = kOptPoolSize | kOptStride | kOptPadding;

const LayerType kLayerTypes[] = {
    {"dense", PlanDense, Seeded<Dense>, kDenseLike},
    {"relu", PlanActivation, Unseeded<Activation>},
    {"leaky_relu", PlanActivation, Unseeded<Activation>, kOptNegativeSlope},
    {"tanh", PlanActivation, Unseeded<Activation>},
    {"sigmoid", PlanActivation, Unseeded<Activation>},
    {"selu", PlanActivation, Unseeded<Activation>},
    {"gelu", PlanActivation, Unseeded<Activation>},
    {"softmax", SameShape, Unseeded<Softmax>},
    {"flatten", PlanFlatten, Unseeded<Flatten>},
    {"batch_norm", PlanBatchNorm, Unseeded<BatchNorm>, kOptMomentum | kOptEpsilon},
    {"dropout", PlanDropout, Unseeded<Dropout>, kOptRate | kOptClassicScaling},
    {"lstm", PlanRecurrent, Seeded<Recurrent>, kRecurrent},
    // gru has no cell state: its plan refuses zoneout_cell with that reason.
    {"gru", PlanRecurrent, Seeded<Recurrent>, kRecurrent},
    {"concrete_dropout", PlanConcreteDropout, Seeded<ConcreteDropout>,
     kDenseLike | kOptPerUnit | kOptInitRate | kOptTemperature | kOptWeightRegularizer |
         kOptDropoutRegularizer | kOptLengthScale},
    {"sparse_vd", PlanSparseVd, Seeded<SparseVdDense>,
     kDenseLike | kOptLogSigma2Init | kOptPruneThreshold | kOptKlWeight},
    {"conv1d", PlanConv, Seeded<Conv>, kConvOptions},
    {"conv2d", PlanConv, Seeded<Conv>, kConvOptions},
    {"max_pool", PlanPool, Unseeded<Pool>, kPoolOptions},
    {"max_pool1d", PlanPool, Unseeded<Pool>, kPoolOptions},
    {"max_pool2d", PlanPool, Unseeded<Pool>, kPoolOptions},
    {"avg_pool", PlanPool, Unseeded<Pool>, kPoolOptions},
    {"avg_pool1d", PlanPool, Unseeded<Pool>, kPoolOptions},
    {"avg_pool2d", PlanPool, Unseeded<Pool>, kPoolOptions},
    {"global_avg_pool", PlanPool, Unseeded<Pool>},
    {"spatial_dropout", PlanSpatialDropout, Unseeded<SpatialDropout>, kOptRate},
    {"spatial_dropout1d", PlanSpatialDropout, Unseeded<SpatialDropout>, kOptRate},
    {"spatial_dropout2d", PlanSpatialDropout, Unseeded<SpatialDropout>, kOptRate},
    {"gaussian_dropout", PlanGaussianDropout, Unseeded<GaussianDropout>, kOptRate},
    {"alpha_dropout", PlanAlphaDropout, Unseeded<AlphaDropout>, kOptRate},
    {"drop_connect", PlanDropConnect, Seeded<DropConnectDense>,
     kDenseLike | kOptRate | kOptDropConnectShared | kOptMomentMatching | kOptActivation},
};

struct OptionName {
  uint32_t option;
  const char* name;
};

const OptionName kOptionNames[] = {
    {kOptUnits, "units"},
    {kOptInit, "init"},
    {kOptUseBias, "use_bias"},
    {kOptRate, "rate"},
    {kOptClassicScaling, "classic_scaling"},
    {kOptNegativeSlope, "negative_slope"},
    {kOptMomentum, "momentum"},
    {kOptEpsilon, "epsilon"},
    {kOptFilters, "filters"},
    {kOptKernelSize, "kernel_size"},
    {kOptStride, "stride"},
    {kOptPadding, "padding"},
    {kOptPoolSize, "pool_size"},
    {kOptDropConnectShared, "drop_connect_shared"},
    {kOptMomentMatching, "moment_matching"},
    {kOptActivation, "activation"},
    {kOptReturnSequences, "return_sequences"},
    {kOptRecurrentRate, "recurrent_rate"},
    {kOptZoneoutCell, "zoneout_cell"},
    {kOptZoneoutHidden, "zoneout_hidden"},
    {kOptPerUnit, "per_unit"},
    {kOptInitRate, "init_rate"},
    {kOptTemperature, "temperature"},
    {kOptWeightRegularizer, "weight_regularizer"},
    {kOptDropoutRegularizer, "dropout_regularizer"},
    {kOptLengthScale, "length_scale"},
    {kOptLogSigma2Init, "log_sigma2_init"},
    {kOptPruneThreshold, "prune_threshold"},
    {kOptKlWeight, "kl_weight"},
};

const LayerType& TypeOf(const LayerConfig& config) {
  const LayerType* type = FindLayerType(config.type);
  if (!type) throw InvalidArgument("unknown layer type '" + config.type + "'");
  return *type;
}

}  // namespace

std::span<const LayerType> LayerTypes() { return kLayerTypes; }

bool LayerType::Reads(std::string_view field) const {
  for (const OptionName& o : kOptionNames)
    if (field == o.name) return (options & o.option) != 0;
  return false;
}

const char* LayerOptionName(uint32_t option) {
  for (const OptionName& o : kOptionNames)
    if (o.option == option) return o.name;
  return nullptr;
}

const LayerType* FindLayerType(const std::string& name) {
  for (const LayerType& t : kLayerTypes)
    if (name == t.name) return &t;
  return nullptr;
}

std::vector<std::pair<const char*, int>> SizeOptions(const LayerConfig& c) {
  const LayerType* type = FindLayerType(c.type);
  std::vector<std::pair<const char*, int>> out;
  if (!type) return out;
  const std::pair<uint32_t, int> sizes[] = {
      {kOptUnits, c.units},   {kOptFilters, c.filters}, {kOptKernelSize, c.kernel_size},
      {kOptStride, c.stride}, {kOptPadding, c.padding}, {kOptPoolSize, c.pool_size}};
  for (const auto& [option, value] : sizes)
    if (type->options & option) out.emplace_back(LayerOptionName(option), value);
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
