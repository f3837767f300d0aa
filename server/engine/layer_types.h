// The table of layer types, the one place that knows every type name.
//
// Each entry says how to plan a layer of its type (validate the configuration for an input shape
// and give the output shape and parameter count, allocating nothing), how to build it, and which
// LayerConfig options it reads (a specification that sets any other option is refused, since the
// option would do nothing). MakeLayer, PlanLayer and PlanNetwork (network.h) read this table and
// nothing else: a new layer type is one entry here beside its own file.
#ifndef DROPNET_ENGINE_LAYER_TYPES_H_
#define DROPNET_ENGINE_LAYER_TYPES_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/engine/layer.h"

namespace dropnet::engine {

// The options of LayerConfig besides its type, one bit each; the names are the LayerSpec fields.
enum LayerOption : uint32_t {
  kOptUnits = 1u << 0,
  kOptInit = 1u << 1,
  kOptUseBias = 1u << 2,
  kOptRate = 1u << 3,
  kOptClassicScaling = 1u << 4,
  kOptNegativeSlope = 1u << 5,
  kOptMomentum = 1u << 6,
  kOptEpsilon = 1u << 7,
  kOptFilters = 1u << 8,
  kOptKernelSize = 1u << 9,
  kOptStride = 1u << 10,
  kOptPadding = 1u << 11,
  kOptPoolSize = 1u << 12,
  kOptDropConnectShared = 1u << 13,
  kOptMomentMatching = 1u << 14,
  kOptActivation = 1u << 15,
  kOptReturnSequences = 1u << 16,
  kOptRecurrentRate = 1u << 17,
  kOptZoneoutCell = 1u << 18,
  kOptZoneoutHidden = 1u << 19,
  kOptPerUnit = 1u << 20,
  kOptInitRate = 1u << 21,
  kOptTemperature = 1u << 22,
  kOptWeightRegularizer = 1u << 23,
  kOptDropoutRegularizer = 1u << 24,
  kOptLengthScale = 1u << 25,
  kOptLogSigma2Init = 1u << 26,
  kOptPruneThreshold = 1u << 27,
  kOptKlWeight = 1u << 28,
};

struct LayerType {
  const char* name;
  // Throws InvalidArgument naming "<type>.<field>" and the value, or the input shape.
  LayerPlan (*plan)(const LayerConfig& config, const Shape& input);
  std::unique_ptr<Layer> (*build)(const LayerConfig& config, const Shape& input,
                                  uint64_t init_seed);
  uint32_t options = 0;  // the LayerOption bits of the options this type reads

  // Whether this type reads the option named `field` (a LayerSpec field name); false for a name
  // that is no option.
  bool Reads(std::string_view field) const;
};

// Every layer type.
std::span<const LayerType> LayerTypes();

// The entry named `name`, or nullptr for an unknown type.
const LayerType* FindLayerType(const std::string& name);

// The name of one LayerOption bit ("units", "zoneout_cell", ...), or nullptr.
const char* LayerOptionName(uint32_t option);

// The integer size options a layer of config.type reads, each as (field name, value), for limits
// that a caller imposes on them; empty for an unknown type.
std::vector<std::pair<const char*, int>> SizeOptions(const LayerConfig& config);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_LAYER_TYPES_H_
