// Pooling over NCHW rows: MaxPool, AvgPool and GlobalAvgPool.
//
// The layers compute exactly what torch.nn.MaxPool1d/2d (padding ignored by the max, the first
// maximum wins, NaN wins) and AvgPool1d/2d (count_include_pad=True) compute, and
// AdaptiveAvgPool to 1 for global_avg_pool. The window geometry is conv.h's. Images are processed
// in parallel over ctx.threads, each image by one thread.
#ifndef DROPNET_ENGINE_POOLING_H_
#define DROPNET_ENGINE_POOLING_H_

#include "server/engine/conv.h"
#include "server/engine/layer.h"

namespace dropnet::engine {

// Validates a pooling configuration for `input`: its output shape (pools have no parameters).
LayerPlan PlanPool(const LayerConfig& config, const Shape& input);

// max_pool1d/max_pool2d/avg_pool1d/avg_pool2d (max_pool and avg_pool pick by input rank), and
// global_avg_pool ({C, ...} -> {C}).
class Pool : public LayerOf<Pool> {
 public:
  Pool(const LayerConfig& config, const Shape& input);
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;

 private:
  ConvGeometry g_;
  bool max_ = false;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_POOLING_H_
