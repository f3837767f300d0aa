#include "server/engine/optimizer.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <string_view>

#include "server/engine/thread_pool.h"

namespace dropnet::engine {

namespace {
using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

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
                    ArrayMap wa(wp + o, len), ma(mp + o, len), va(vp + o, len);
                    ConstArrayMap ga(gp + o, len);
                    if (adamw_decay) wa *= (1.0f - flr * wd);
                    auto update = [&](const auto& g) {
                      ma = b1 * ma + (1 - b1) * g;
                      va = b2 * va + (1 - b2) * (g * g);
                      wa -= step * ma / (va.sqrt() * inv_sqrt_bc2 + eps);
                    };
                    if (adam_decay)
                      update((ga + wd * wa).eval());
                    else
                      update(ga);
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
