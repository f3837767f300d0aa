// Convolution over NCHW rows (Conv1D/Conv2D), and the window geometry it shares with pooling.
//
// LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition"
// (Proc. IEEE 1998); the im2col + GEMM lowering is Chellapilla, Puri, Simard, "High Performance
// Convolutional Neural Networks for Document Processing" (IWFHR 2006). A row of a batch holds one
// example as C x H x W (2D, row-major, PyTorch's NCHW) or C x L (1D, treated as H = 1). The layers
// compute exactly what torch.nn.Conv1d/Conv2d (zero padding, square kernels, equal strides)
// compute; weights are stored as filters x (C * k * k), PyTorch's [F, C, k, k] flattened. Images
// are processed in parallel over ctx.threads (each image by one thread, so results do not depend
// on the thread count except in the order of the weight-gradient reduction), and every product
// goes through the single-threaded Gemm of gemm.h.
#ifndef DROPNET_ENGINE_CONV_H_
#define DROPNET_ENGINE_CONV_H_

#include "server/engine/layer.h"

namespace dropnet::engine {

// The spatial geometry of a conv or pooling layer, with 1D inputs as H = 1.
struct ConvGeometry {
  int channels = 0, height = 1, width = 0;  // input
  int kernel_h = 1, kernel_w = 1;
  int stride_h = 1, stride_w = 1;
  int pad_h = 0, pad_w = 0;
  int out_height = 1, out_width = 0;
  bool one_d = false;
  int64_t InputSize() const { return int64_t{channels} * height * width; }
  int64_t OutPositions() const { return int64_t{out_height} * out_width; }
};

// Builds the geometry of a conv or pooling layer for `input`, validating the configuration.
// Throws InvalidArgument naming the field ("conv2d.stride") and value, or the input shape.
ConvGeometry MakeConvGeometry(const LayerConfig& config, const Shape& input);

// The output shape of `g` with `channels` output channels; {channels} for a global pool.
Shape ConvOutputShape(const ConvGeometry& g, int channels, bool global);

// Validates a conv1d/conv2d configuration for `input`: its output shape and parameter count,
// without building it.
LayerPlan PlanConv(const LayerConfig& config, const Shape& input);

// conv1d ({C, L} -> {F, L'}) and conv2d ({C, H, W} -> {F, H', W'}).
class Conv : public LayerOf<Conv> {
 public:
  Conv(const LayerConfig& config, const Shape& input, uint64_t init_seed);
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
  const ConvGeometry& geometry() const { return g_; }

 private:
  ConvGeometry g_;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_CONV_H_
