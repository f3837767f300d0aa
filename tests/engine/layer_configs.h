// Test support: short builders for the LayerConfigs the engine tests assemble networks from.
#ifndef DROPNET_TESTS_ENGINE_LAYER_CONFIGS_H_
#define DROPNET_TESTS_ENGINE_LAYER_CONFIGS_H_

#include <string>

#include "server/engine/layer.h"

namespace dropnet::engine::test_support {

inline LayerConfig DenseLayer(int units) {
  LayerConfig c;
  c.type = "dense";
  c.units = units;
  return c;
}

// A layer with no options: an activation, softmax, flatten or batch_norm.
inline LayerConfig Simple(const std::string& type) {
  LayerConfig c;
  c.type = type;
  return c;
}

inline LayerConfig DropoutLayer(double rate) {
  LayerConfig c;
  c.type = "dropout";
  c.rate = rate;
  return c;
}

}  // namespace dropnet::engine::test_support

#endif  // DROPNET_TESTS_ENGINE_LAYER_CONFIGS_H_
