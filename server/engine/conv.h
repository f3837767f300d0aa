// Convolution and pooling over NCHW rows: Conv1D/Conv2D, MaxPool, AvgPool and GlobalAvgPool.
//
// LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition"
// (Proc. IEEE 1998); the im2col + GEMM lowering is Chellapilla, Puri, Simard, "High Performance
// Convolutional Neural Networks for Document Processing" (IWFHR 2006). A row of a batch holds one
// example as C x H x W (2D, row-major, PyTorch's NCHW) or C x L (1D, treated as H = 1). The layers
// compute exactly what torch.nn.Conv1d/Conv2d (zero padding, square kernels, equal strides),
// MaxPool1d/2d (padding ignored by the max) and AvgPool1d/2d (count_include_pad=True) compute;
// weights are stored as filters x (C * k * k), PyTorch's [F, C, k, k] flattened. Images are
// processed in parallel over ctx.threads (each image by one thread, so results do not depend on
// the thread count except in the order of the weight-gradient reduction), and every product goes
// through one single-threaded GEMM: a register-blocked AVX-512 kernel chosen at run time when the
// CPU has it (the binary stays portable), else Eigen.
#ifndef DROPNET_ENGINE_CONV_H_
#define DROPNET_ENGINE_CONV_H_

#include "server/engine/layer.h"

namespace dropnet::engine {

// The spatial geometry of a conv or pooling layer, with 1D inputs as H = 1.
struct ConvGeometry {
  int channels = 0, height = 1, width = 0;   // input
  int kernel_h = 1, kernel_w = 1;
  int stride_h = 1, stride_w = 1;
  int pad_h = 0, pad_w = 0;
  int out_height = 1, out_width = 0;
  bool one_d = false;
  int64_t InputSize() const { return int64_t{channels} * height * width; }
  int64_t OutPositions() const { return int64_t{out_height} * out_width; }
};

// True for the types this file implements, and for conv1d/conv2d only.
bool IsConvOrPoolType(const std::string& type);
bool IsConvType(const std::string& type);

// The output shape of a conv/pool layer for `input`, without building it (for spec validation).
// Throws InvalidArgument naming the field and value for a bad configuration or input shape.
Shape ConvOrPoolOutputShape(const LayerConfig& config, const Shape& input);

// Trainable parameters of a conv layer (0 for pooling), without building it.
int64_t ConvOrPoolParameterCount(const LayerConfig& config, const Shape& input);

// c (m x n, leading dimension ldc) = alpha * op(a) * op(b) + beta * c, row-major, on the calling
// thread. op(a) is m x k, op(b) is k x n.
// True when Gemm runs the AVX-512 kernel (else it runs Eigen, as MatMul does).
bool FastGemmAvailable();
void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// c (m x n) = a * B[k_index, :], where a (m x kn, leading dimension lda) holds the columns
// k_index (ascending) of a wider left factor whose other columns are zero: the product skips the
// zero columns and equals Gemm over the full width bit for bit.
void GemmSelectedK(int64_t m, int64_t n, const float* a, int64_t lda, const int32_t* k_index,
                   int64_t kn, const float* b, int64_t ldb, float* c, int64_t ldc);

// out (rows x kn, row-major) = the columns k_index (ascending) of a (rows x cols, row-major).
void GatherColumns(const float* a, int64_t rows, int64_t cols, const int32_t* k_index, int64_t kn,
                   float* out);

// conv1d ({C, L} -> {F, L'}) and conv2d ({C, H, W} -> {F, H', W'}).
class Conv : public Layer {
 public:
  Conv(const LayerConfig& config, const Shape& input, uint64_t init_seed);
  std::string Type() const override { return config_.type; }
  std::unique_ptr<Layer> Clone() const override { return std::make_unique<Conv>(*this); }
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;
  const ConvGeometry& geometry() const { return g_; }

 private:
  ConvGeometry g_;
};

// max_pool1d/max_pool2d/avg_pool1d/avg_pool2d (max_pool and avg_pool pick by input rank), and
// global_avg_pool ({C, ...} -> {C}).
class Pool : public Layer {
 public:
  Pool(const LayerConfig& config, const Shape& input);
  std::string Type() const override { return config_.type; }
  std::unique_ptr<Layer> Clone() const override { return std::make_unique<Pool>(*this); }
  void Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const override;
  void Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                Matrix* dx) const override;

 private:
  ConvGeometry g_;
  bool max_ = false;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_CONV_H_
