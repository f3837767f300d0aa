#include "server/engine/layers.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "server/engine/dropout.h"
#include "server/engine/gemm.h"
#include "server/engine/thread_pool.h"

namespace dropnet::engine {

std::string Shape::ToString() const {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
  s << "]";
  return s.str();
}

const char* ModeName(Mode mode) {
  static constexpr std::array<const char*, 3> kNames = {"train", "eval", "monte_carlo"};
  return EnumName(mode, kNames);
}

void InitializeWeights(const std::string& scheme, int64_t fan_in, int64_t fan_out, uint64_t seed,
                       Matrix* w) {
  w->resize(fan_in, fan_out);
  SplitMix64 rng(seed);
  double fan = static_cast<double>(fan_in);
  double gain = 1.0;
  bool uniform = false;
  if (scheme == "he_normal") {
    gain = 2.0;
  } else if (scheme == "he_uniform") {
    gain = 2.0, uniform = true;
  } else if (scheme == "glorot_normal") {
    fan = 0.5 * static_cast<double>(fan_in + fan_out);
  } else if (scheme.empty() || scheme == "glorot_uniform") {
    fan = 0.5 * static_cast<double>(fan_in + fan_out), uniform = true;
  } else if (scheme == "lecun_normal") {
  } else if (scheme == "lecun_uniform") {
    uniform = true;
  } else {
    throw InvalidArgument(
        "dense.init must be one of he_normal, he_uniform, glorot_normal, "
        "glorot_uniform, lecun_normal, lecun_uniform; got '" +
        scheme + "'");
  }
  const double stddev = std::sqrt(gain / fan);
  const double limit = std::sqrt(3.0) * stddev;  // uniform on [-limit, limit] has that stddev
  for (int64_t i = 0; i < w->size(); ++i) {
    double v = uniform ? (2.0 * rng.Uniform() - 1.0) * limit : rng.Normal() * stddev;
    w->data()[i] = static_cast<float>(v);
  }
}

// ---- Dense ----

void CheckDenseInput(const char* type, const LayerConfig& config, const Shape& input) {
  if (input.dims.size() != 1) {
    throw InvalidArgument(std::string(type) + " expects flat input, got shape " + input.ToString() +
                          "; add a flatten layer before it");
  }
  if (config.units <= 0) {
    throw InvalidArgument(std::string(type) + ".units must be positive, got " +
                          std::to_string(config.units));
  }
}

LayerPlan PlanDense(const LayerConfig& config, const Shape& input) {
  CheckDenseInput("dense", config, input);
  return LayerPlan{Shape{{config.units}},
                   DenseParameterCount(input.Size(), config.units, config.use_bias)};
}

Dense::Dense(const LayerConfig& config, const Shape& input, uint64_t init_seed)
    : LayerOf(config, input) {
  output_shape_ = PlanDense(config, input).output;
  Parameter w{"weight", {}, true, true};
  InitializeWeights(config.init, input.Size(), config.units, init_seed, &w.value);
  params_.push_back(std::move(w));
  if (config.use_bias) params_.push_back(Parameter{"bias", Matrix::Zero(1, config.units)});
}

void Dense::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  // Outside training, inputs often have whole zero columns (ReLU and dropout zeros, blank
  // pixels; in Monte Carlo the prefix's zeros are shared by every sample): those are skipped.
  if (cache)
    MatMul(x, false, params_[0].value, false, y, ctx.threads);
  else
    MatMulSkippingZeroColumns(x, params_[0].value, y, ctx.threads);
  if (params_.size() > 1) y->rowwise() += params_[1].value.row(0);
  if (cache) KeepInput(x, cache);
}

void Dense::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                     Matrix* dx) const {
  const int threads = cache.threads;
  MatMul(cache.input, true, dy, false, &grads[0], threads);
  if (params_.size() > 1) grads[1] = dy.colwise().sum();
  if (dx) MatMul(dy, false, params_[0].value, true, dx, threads);
}

// ---- Activations ----

namespace {
constexpr float kSeluScale = 1.0507009873554804934193349852946f;
constexpr float kSeluAlpha = 1.6732632423543772848170429916717f;
constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
}  // namespace

namespace {

Activation::Kind ActivationKind(const std::string& t) {
  using Kind = Activation::Kind;
  if (t == "relu") return Kind::kRelu;
  if (t == "leaky_relu") return Kind::kLeakyRelu;
  if (t == "tanh") return Kind::kTanh;
  if (t == "sigmoid") return Kind::kSigmoid;
  if (t == "selu") return Kind::kSelu;
  if (t == "gelu") return Kind::kGelu;
  throw InvalidArgument("unknown activation '" + t + "'");
}

}  // namespace

LayerPlan PlanActivation(const LayerConfig& config, const Shape& input) {
  if (ActivationKind(config.type) == Activation::Kind::kLeakyRelu &&
      !std::isfinite(config.negative_slope)) {
    throw InvalidArgument("leaky_relu.negative_slope must be finite, got " +
                          std::to_string(config.negative_slope));
  }
  return LayerPlan{input, 0};
}

Activation::Activation(const LayerConfig& config, const Shape& input)
    : LayerOf(config, input), kind_(ActivationKind(config.type)) {
  PlanActivation(config, input);
}

namespace {

// Runs fn(first_row, rows) over blocks of rows, on up to `threads` threads when the matrix is
// large enough for the hand-off to pay.
template <typename Fn>
void RowBlocks(int64_t rows, int64_t cols, int threads, Fn fn) {
  if (rows * cols < (1 << 16)) threads = 1;
  ParallelFor(rows, threads, [&](int64_t r0, int64_t r1) { fn(r0, r1 - r0); });
}

}  // namespace

void Activation::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  const float slope = static_cast<float>(config_.negative_slope);
  y->resize(x.rows(), x.cols());
  RowBlocks(x.rows(), x.cols(), ctx.threads, [&](int64_t r0, int64_t n) {
    const auto in = x.middleRows(r0, n);
    auto out = y->middleRows(r0, n);
    switch (kind_) {
      case Kind::kRelu:
        out = in.cwiseMax(0.0f);
        break;
      case Kind::kLeakyRelu:
        out = in.unaryExpr([slope](float v) { return v > 0 ? v : slope * v; });
        break;
      case Kind::kTanh:
        out = in.unaryExpr([](float v) { return std::tanh(v); });  // per element, as SoftmaxRows
        break;
      case Kind::kSigmoid:
        out = in.unaryExpr([](float v) { return 1.0f / (1.0f + std::exp(-v)); });
        break;
      case Kind::kSelu:
        out = in.unaryExpr(
            [](float v) { return kSeluScale * (v > 0 ? v : kSeluAlpha * std::expm1(v)); });
        break;
      case Kind::kGelu:
        out = in.unaryExpr([](float v) { return 0.5f * v * (1.0f + std::erf(v * kInvSqrt2)); });
        break;
    }
  });
  if (cache) {
    KeepInput(x, cache);
    // tanh and sigmoid differentiate through their output, the others through their input.
    if (kind_ == Kind::kTanh || kind_ == Kind::kSigmoid) cache->output = *y;
  }
}

void Activation::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                          Matrix* dx) const {
  if (!dx) return;
  const float slope = static_cast<float>(config_.negative_slope);
  dx->resize(dy.rows(), dy.cols());
  RowBlocks(dy.rows(), dy.cols(), cache.threads, [&](int64_t r0, int64_t n) {
    const auto g = dy.middleRows(r0, n);
    auto out = dx->middleRows(r0, n);
    switch (kind_) {
      case Kind::kRelu:
        out = g.binaryExpr(cache.input.middleRows(r0, n),
                           [](float g, float v) { return v > 0 ? g : 0.0f; });
        break;
      case Kind::kLeakyRelu:
        out = g.binaryExpr(cache.input.middleRows(r0, n),
                           [slope](float g, float v) { return v > 0 ? g : slope * g; });
        break;
      case Kind::kTanh:
        out = g.binaryExpr(cache.output.middleRows(r0, n),
                           [](float g, float t) { return g * (1.0f - t * t); });
        break;
      case Kind::kSigmoid:
        out = g.binaryExpr(cache.output.middleRows(r0, n),
                           [](float g, float s) { return g * s * (1.0f - s); });
        break;
      case Kind::kSelu:
        out = g.binaryExpr(cache.input.middleRows(r0, n), [](float g, float v) {
          return g * kSeluScale * (v > 0 ? 1.0f : kSeluAlpha * std::exp(v));
        });
        break;
      case Kind::kGelu:
        out = g.binaryExpr(cache.input.middleRows(r0, n), [](float g, float v) {
          float cdf = 0.5f * (1.0f + std::erf(v * kInvSqrt2));
          float pdf = kInvSqrt2Pi * std::exp(-0.5f * v * v);
          return g * (cdf + v * pdf);
        });
        break;
    }
  });
}

// ---- Softmax ----

void SoftmaxRows(const Matrix& logits, Matrix* probs) {
  probs->resize(logits.rows(), logits.cols());
  const int64_t cols = logits.cols();
  // Element by element in column order, with the scalar exp: Eigen's vectorised exp and sum
  // would treat a row's elements by the row's alignment in memory, so a row's probabilities would
  // depend on its place in the batch (network.h, RowsIndependentOfBatch).
  for (int64_t r = 0; r < logits.rows(); ++r) {
    const float* in = logits.row(r).data();
    float* out = probs->row(r).data();
    float m = in[0];
    for (int64_t c = 1; c < cols; ++c) m = std::max(m, in[c]);
    float sum = 0;
    for (int64_t c = 0; c < cols; ++c) {
      out[c] = std::exp(in[c] - m);
      sum += out[c];
    }
    for (int64_t c = 0; c < cols; ++c) out[c] /= sum;
  }
}

void Softmax::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  SoftmaxRows(x, y);
  if (cache) cache->output = *y;
}

void Softmax::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                       Matrix* dx) const {
  if (!dx) return;
  const Matrix& y = cache.output;
  Eigen::VectorXf dot = dy.cwiseProduct(y).rowwise().sum();
  *dx = y.cwiseProduct(dy - dot.replicate(1, dy.cols()));
}

// ---- Flatten ----

LayerPlan PlanFlatten(const LayerConfig& config, const Shape& input) {
  if (input.Size() > std::numeric_limits<int>::max()) {
    throw InvalidArgument("flatten input " + input.ToString() + " has too many features");
  }
  return LayerPlan{Shape{{static_cast<int>(input.Size())}}, 0};
}

Flatten::Flatten(const LayerConfig& config, const Shape& input) : LayerOf(config, input) {
  output_shape_ = PlanFlatten(config, input).output;
}

void Flatten::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  *y = x;
}

void Flatten::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                       Matrix* dx) const {
  if (dx) *dx = dy;
}

// ---- BatchNorm ----

namespace {

int64_t BatchNormChannels(const Shape& input) {
  return input.dims.size() > 1 ? input.dims[0] : input.Size();
}

}  // namespace

LayerPlan PlanBatchNorm(const LayerConfig& config, const Shape& input) {
  if (!(config.momentum > 0.0 && config.momentum <= 1.0)) {
    throw InvalidArgument("batch_norm.momentum must be in (0, 1], got " +
                          std::to_string(config.momentum));
  }
  if (!(config.epsilon > 0.0 && std::isfinite(config.epsilon))) {
    throw InvalidArgument("batch_norm.epsilon must be positive and finite, got " +
                          std::to_string(config.epsilon));
  }
  return LayerPlan{input, 2 * BatchNormChannels(input)};  // gamma and beta
}

BatchNorm::BatchNorm(const LayerConfig& config, const Shape& input) : LayerOf(config, input) {
  PlanBatchNorm(config, input);
  channels_ = BatchNormChannels(input);
  spatial_ = input.Size() / channels_;
  params_.push_back(Parameter{"gamma", Matrix::Ones(1, channels_)});
  params_.push_back(Parameter{"beta", Matrix::Zero(1, channels_)});
  buffers_.push_back(Parameter{"running_mean", Matrix::Zero(1, channels_)});
  buffers_.push_back(Parameter{"running_var", Matrix::Ones(1, channels_)});
}

void BatchNorm::Forward(const Matrix& x, const Context& ctx, LayerCache* cache, Matrix* y) const {
  const int64_t n = x.rows(), c_count = channels_, s = spatial_;
  RowVector mean(c_count), var(c_count);
  const bool batch_stats = ctx.mode == Mode::kTrain;
  if (batch_stats) {
    if (n * s < 2) {
      throw InvalidArgument("batch_norm needs more than one value per channel to train");
    }
    mean.setZero();
    var.setZero();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < c_count; ++c) mean[c] += x.row(r).segment(c * s, s).sum();
    mean /= static_cast<float>(n * s);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < c_count; ++c)
        var[c] += (x.row(r).segment(c * s, s).array() - mean[c]).square().sum();
    var /= static_cast<float>(n * s);
  } else {
    mean = buffers_[0].value.row(0);
    var = buffers_[1].value.row(0);
  }
  RowVector inv_std = (var.array() + static_cast<float>(config_.epsilon)).rsqrt().matrix();
  const RowVector& gamma = params_[0].value.row(0);
  const RowVector& beta = params_[1].value.row(0);
  y->resize(n, x.cols());
  Matrix xhat;
  if (cache) xhat.resize(n, x.cols());
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < c_count; ++c) {
      auto xh = (x.row(r).segment(c * s, s).array() - mean[c]) * inv_std[c];
      if (cache) xhat.row(r).segment(c * s, s) = xh.matrix();
      y->row(r).segment(c * s, s) = (xh * gamma[c] + beta[c]).matrix();
    }
  }
  if (cache) {
    cache->output = std::move(xhat);  // the normalised input
    cache->extra = {inv_std, mean, var};
  }
}

void BatchNorm::Backward(const Matrix& dy, const LayerCache& cache, std::span<Matrix> grads,
                         Matrix* dx) const {
  const Matrix& xhat = cache.output;
  const RowVector& inv_std = cache.extra[0];
  const int64_t n = dy.rows(), c_count = channels_, s = spatial_;
  RowVector dgamma = RowVector::Zero(c_count), dbeta = RowVector::Zero(c_count);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < c_count; ++c) {
      auto g = dy.row(r).segment(c * s, s);
      dbeta[c] += g.sum();
      dgamma[c] += g.dot(xhat.row(r).segment(c * s, s));
    }
  }
  grads[0] = dgamma;
  grads[1] = dbeta;
  if (!dx) return;
  const float m = static_cast<float>(n * s);
  const RowVector& gamma = params_[0].value.row(0);
  dx->resize(n, dy.cols());
  // dx = gamma*inv_std/m * (m*dy - sum(dy) - xhat*sum(dy*xhat)), per channel.
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < c_count; ++c) {
      float k = gamma[c] * inv_std[c] / m;
      dx->row(r).segment(c * s, s) = (k * (m * dy.row(r).segment(c * s, s).array() - dbeta[c] -
                                           xhat.row(r).segment(c * s, s).array() * dgamma[c]))
                                         .matrix();
    }
  }
}

void BatchNorm::ApplyTrainStatistics(const LayerCache& cache) {
  if (cache.extra.size() < 3) return;
  const float mom = static_cast<float>(config_.momentum);
  // The running variance is unbiased, as in PyTorch: m values stand behind the batch variance.
  const float m = static_cast<float>(cache.output.rows() * spatial_);
  const float unbiased = m > 1 ? m / (m - 1) : 1.0f;
  buffers_[0].value = (1 - mom) * buffers_[0].value + mom * cache.extra[1];
  buffers_[1].value = (1 - mom) * buffers_[1].value + (mom * unbiased) * cache.extra[2];
}

}  // namespace dropnet::engine
