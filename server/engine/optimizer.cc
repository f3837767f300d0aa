#include "server/engine/optimizer.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <string_view>

#include "server/engine/thread_pool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DROPNET_OPTIMIZER_AVX512 1
#endif

namespace dropnet::engine {

namespace {
using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// One Adam or AdamW step's constants.
struct AdamStep {
  float b1, b2, eps, step, inv_sqrt_bc2, wd;
  float shrink;      // AdamW's decoupled decay: w *= shrink first
  bool adam_decay;   // Adam's L2 decay: g + wd * w in place of g
  bool adamw_decay;  // AdamW's
};

// m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, w -= step m / (sqrt(v) / sqrt(bc2) + eps), with
// the square root correctly rounded (Eigen's vectorised one approximates it to 1 or 2 bits).
void AdamUpdateGeneric(const AdamStep& a, const float* g, float* w, float* m, float* v,
                       int64_t len) {
  ArrayMap wa(w, len), ma(m, len), va(v, len);
  ConstArrayMap ga(g, len);
  if (a.adamw_decay) wa *= a.shrink;
  auto update = [&](const auto& gg) {
    ma = a.b1 * ma + (1 - a.b1) * gg;
    va = a.b2 * va + (1 - a.b2) * (gg * gg);
    wa -=
        a.step * ma / (va.unaryExpr([](float x) { return std::sqrt(x); }) * a.inv_sqrt_bc2 + a.eps);
  };
  if (a.adam_decay)
    update((ga + a.wd * wa).eval());
  else
    update(ga);
}

#ifdef DROPNET_OPTIMIZER_AVX512
// The same operations in the same order, 16 lanes at a time: square root and division are
// correctly rounded at any width, and this file is compiled without contracting a multiply and
// an add into one rounding, so the bits equal the generic update's, which takes the last
// elements short of a vector. Wider lanes matter here: the square roots and divisions, not
// memory, bound the update on narrow vectors.
__attribute__((target("avx512f"))) void AdamUpdateAvx512(const AdamStep& a, const float* g,
                                                         float* w, float* m, float* v,
                                                         int64_t len) {
  const __m512 b1 = _mm512_set1_ps(a.b1), c1 = _mm512_set1_ps(1 - a.b1);
  const __m512 b2 = _mm512_set1_ps(a.b2), c2 = _mm512_set1_ps(1 - a.b2);
  const __m512 step = _mm512_set1_ps(a.step), inv = _mm512_set1_ps(a.inv_sqrt_bc2);
  const __m512 eps = _mm512_set1_ps(a.eps), wd = _mm512_set1_ps(a.wd);
  const __m512 shrink = _mm512_set1_ps(a.shrink);
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    __m512 gv = _mm512_loadu_ps(g + i), wv = _mm512_loadu_ps(w + i);
    if (a.adamw_decay) wv = _mm512_mul_ps(wv, shrink);
    if (a.adam_decay) gv = _mm512_add_ps(gv, _mm512_mul_ps(wd, wv));
    const __m512 mv =
        _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(c1, gv));
    const __m512 vv = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v + i)),
                                    _mm512_mul_ps(c2, _mm512_mul_ps(gv, gv)));
    // (maskz: GCC 12's unmasked _mm512_sqrt_ps warns of an uninitialised operand in its header)
    const __m512 den = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_sqrt_ps(0xFFFF, vv), inv), eps);
    wv = _mm512_sub_ps(wv, _mm512_div_ps(_mm512_mul_ps(step, mv), den));
    _mm512_storeu_ps(m + i, mv);
    _mm512_storeu_ps(v + i, vv);
    _mm512_storeu_ps(w + i, wv);
  }
  if (i < len) AdamUpdateGeneric(a, g + i, w + i, m + i, v + i, len - i);
}
#endif

void AdamUpdate(const AdamStep& a, const float* g, float* w, float* m, float* v, int64_t len) {
#ifdef DROPNET_OPTIMIZER_AVX512
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) {
    AdamUpdateAvx512(a, g, w, m, v, len);
    return;
  }
#endif
  AdamUpdateGeneric(a, g, w, m, v, len);
}

void Require(bool ok, const char* field, double value, const char* rule) {
  if (ok) return;
  std::ostringstream msg;
  msg << field << " must be " << rule << ", got " << value;
  throw InvalidArgument(msg.str());
}
}  // namespace

const char* OptimizerName(OptimizerKind kind) {
  static constexpr std::array<const char*, 3> kNames = {"sgd", "adam", "adamw"};
  return EnumName(kind, kNames);
}

const char* ScheduleName(ScheduleKind kind) {
  static constexpr std::array<const char*, 3> kNames = {"constant", "step", "cosine"};
  return EnumName(kind, kNames);
}

void CheckOptimizer(const OptimizerConfig& c) {
  if (OptimizerName(c.type) == std::string_view("?")) {
    throw InvalidArgument("optimizer must be sgd, adam or adamw, got " +
                          std::to_string(static_cast<int>(c.type)));
  }
  Require(c.learning_rate > 0 && std::isfinite(c.learning_rate), "learning_rate", c.learning_rate,
          "positive and finite");
  Require(c.momentum >= 0 && c.momentum < 1, "momentum", c.momentum, "in [0, 1)");
  Require(c.beta1 >= 0 && c.beta1 < 1, "beta1", c.beta1, "in [0, 1)");
  Require(c.beta2 >= 0 && c.beta2 < 1, "beta2", c.beta2, "in [0, 1)");
  Require(c.epsilon > 0, "epsilon", c.epsilon, "positive");
  Require(c.weight_decay >= 0 && std::isfinite(c.weight_decay), "weight_decay", c.weight_decay,
          "non-negative");
  if (c.nesterov && c.momentum == 0) throw InvalidArgument("nesterov needs momentum > 0");
}

void CheckSchedule(const ScheduleConfig& s) {
  if (ScheduleName(s.type) == std::string_view("?")) {
    throw InvalidArgument("schedule must be constant, step or cosine, got " +
                          std::to_string(static_cast<int>(s.type)));
  }
  Require(s.step_epochs > 0, "schedule.step_epochs", s.step_epochs, "positive");
  Require(s.gamma > 0 && s.gamma <= 1, "schedule.gamma", s.gamma, "in (0, 1]");
  Require(s.min_learning_rate >= 0, "schedule.min_learning_rate", s.min_learning_rate,
          "non-negative");
}

double ScheduledLearningRate(const ScheduleConfig& s, double base, int64_t step,
                             int64_t steps_per_epoch, int64_t total_steps) {
  if (s.type == ScheduleKind::kStep) {
    int64_t epoch = steps_per_epoch > 0 ? step / steps_per_epoch : 0;
    return base * std::pow(s.gamma, static_cast<double>(epoch / s.step_epochs));
  }
  if (s.type == ScheduleKind::kCosine && total_steps > 1) {
    double progress =
        std::min(1.0, static_cast<double>(step) / static_cast<double>(total_steps - 1));
    return s.min_learning_rate +
           0.5 * (base - s.min_learning_rate) * (1.0 + std::cos(3.141592653589793 * progress));
  }
  return base;
}

Optimizer::Optimizer(const OptimizerConfig& config, std::vector<Parameter*> params)
    : config_(config), params_(std::move(params)) {
  CheckOptimizer(config_);
  for (auto* p : params_) {
    m_.push_back(Matrix::Zero(p->value.rows(), p->value.cols()));
    if (config_.type != OptimizerKind::kSgd) {
      v_.push_back(Matrix::Zero(p->value.rows(), p->value.cols()));
    }
  }
}

void Optimizer::Step(const Gradients& grads, double lr, int threads) {
  if (grads.size() != params_.size()) throw InvalidArgument("gradient count mismatch");
  ++t_;
  const float wd = static_cast<float>(config_.weight_decay);
  const float flr = static_cast<float>(lr);
  for (size_t i = 0; i < params_.size(); ++i) {
    Matrix& w = params_[i]->value;
    const bool decay = params_[i]->decay && wd > 0;
    if (config_.type == OptimizerKind::kSgd) {
      Matrix g = grads[i];
      if (decay) g += wd * w;
      const float mu = static_cast<float>(config_.momentum);
      if (mu > 0) {
        m_[i] = mu * m_[i] + g;  // PyTorch's buffer: b = mu*b + g
        if (config_.nesterov)
          g += mu * m_[i];
        else
          g = m_[i];
      }
      w -= flr * g;
      continue;
    }
    const float b1 = static_cast<float>(config_.beta1), b2 = static_cast<float>(config_.beta2);
    const float eps = static_cast<float>(config_.epsilon);
    const double bc1 = 1.0 - std::pow(config_.beta1, static_cast<double>(t_));
    const double bc2 = 1.0 - std::pow(config_.beta2, static_cast<double>(t_));
    const float step = static_cast<float>(lr / bc1);
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    const bool adamw_decay = config_.type == OptimizerKind::kAdamW && decay;
    const bool adam_decay = config_.type == OptimizerKind::kAdam && decay;
    const AdamStep a{b1, b2, eps, step, inv_sqrt_bc2, wd, 1.0f - flr * wd, adam_decay, adamw_decay};
    // One pass over the parameter, in chunks small enough that the moments, the gradient and the
    // weights stay in L1 between the three updates, the chunks split across the threads.
    constexpr int64_t kChunk = 1024;
    const int64_t size = w.size();
    const float* gp = grads[i].data();
    float *wp = w.data(), *mp = m_[i].data(), *vp = v_[i].data();
    ParallelFor((size + kChunk - 1) / kChunk, size >= 4 * kChunk ? threads : 1,
                [&](int64_t c0, int64_t c1) {
                  for (int64_t c = c0; c < c1; ++c) {
                    const int64_t o = c * kChunk, len = std::min(kChunk, size - o);
                    AdamUpdate(a, gp + o, wp + o, mp + o, vp + o, len);
                  }
                });
  }
}

void ApplyMaxNorm(const std::vector<Parameter*>& params, double c) {
  if (c <= 0) return;
  for (auto* p : params) {
    if (!p->max_norm) continue;
    Matrix& w = p->value;
    for (int64_t j = 0; j < w.cols(); ++j) {
      const float norm = w.col(j).norm();
      if (norm > c) w.col(j) *= static_cast<float>(c / norm);
    }
  }
}

}  // namespace dropnet::engine
