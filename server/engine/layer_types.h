// The table of layer types, the one place that knows every type name.
//
// Each entry says how to plan a layer of its type (validate the configuration for an input shape
// and give the output shape and parameter count, allocating nothing), how to build it, and which
// integer size options it reads. MakeLayer, PlanLayer and PlanNetwork (network.h) read this table
// and nothing else: a new layer type is one entry here beside its own file.
#ifndef DROPNET_ENGINE_LAYER_TYPES_H_
#define DROPNET_ENGINE_LAYER_TYPES_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "server/engine/layer.h"

namespace dropnet::engine {

struct LayerType {
  const char* name;
  // Throws InvalidArgument naming "<type>.<field>" and the value, or the input shape.
  LayerPlan (*plan)(const LayerConfig& config, const Shape& input);
  std::unique_ptr<Layer> (*build)(const LayerConfig& config, const Shape& input,
                                  uint64_t init_seed);
  bool reads_units = false;   // LayerConfig::units sizes the layer
  bool reads_window = false;  // filters, kernel_size, stride, padding and pool_size size it
};

// Every layer type.
std::span<const LayerType> LayerTypes();

// The entry named `name`, or nullptr for an unknown type.
const LayerType* FindLayerType(const std::string& name);

// The integer size options a layer of config.type reads, each as (field name, value), for limits
// that a caller imposes on them; empty for an unknown type.
std::vector<std::pair<const char*, int>> SizeOptions(const LayerConfig& config);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_LAYER_TYPES_H_
