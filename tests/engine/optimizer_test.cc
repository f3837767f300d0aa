// Tests for the optimizers against update sequences computed here in double precision with
// PyTorch's formulas, for the learning-rate schedules and for the max-norm constraint.
#include "server/engine/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

namespace dropnet::engine {
namespace {

constexpr int kSteps = 3;

// A weight (decayed) and a bias (not decayed), with three steps of gradients.
struct Problem {
  Parameter weight{"weight", Matrix(2, 2), true, true};
  Parameter bias{"bias", Matrix(1, 2), false, false};
  std::vector<Gradients> grads;

  Problem() {
    weight.value << 0.5f, -1.25f, 2.0f, 0.1f;
    bias.value << -0.3f, 0.8f;
    for (int s = 0; s < kSteps; ++s) {
      Matrix gw(2, 2), gb(1, 2);
      gw << 0.1f + 0.2f * s, -0.4f + 0.3f * s, 0.05f * (s + 1), 1.5f - s;
      gb << 0.7f - 0.5f * s, -0.2f * (s + 1);
      grads.push_back({gw, gb});
    }
  }
  std::vector<Parameter*> params() { return {&weight, &bias}; }
};

// The reference for one scalar parameter: returns its value after each of the steps.
using Reference =
    std::function<std::vector<double>(double w0, const std::vector<double>& g, bool decay)>;

void CheckAgainstReference(const OptimizerConfig& config, double lr, const Reference& reference) {
  Problem problem;
  Optimizer optimizer(config, problem.params());
  std::vector<std::vector<double>> weight_seq, bias_seq;
  for (int64_t i = 0; i < 4; ++i) {
    std::vector<double> g;
    for (int s = 0; s < kSteps; ++s) g.push_back(problem.grads[s][0].data()[i]);
    weight_seq.push_back(reference(problem.weight.value.data()[i], g, true));
  }
  for (int64_t i = 0; i < 2; ++i) {
    std::vector<double> g;
    for (int s = 0; s < kSteps; ++s) g.push_back(problem.grads[s][1].data()[i]);
    bias_seq.push_back(reference(problem.bias.value.data()[i], g, false));
  }
  for (int s = 0; s < kSteps; ++s) {
    optimizer.Step(problem.grads[s], lr);
    for (int64_t i = 0; i < 4; ++i) {
      EXPECT_NEAR(problem.weight.value.data()[i], weight_seq[i][s], 2e-6)
          << "weight element " << i << " after step " << s + 1;
    }
    for (int64_t i = 0; i < 2; ++i) {
      EXPECT_NEAR(problem.bias.value.data()[i], bias_seq[i][s], 2e-6)
          << "bias element " << i << " after step " << s + 1;
    }
  }
}

Reference SgdReference(double lr, double mu, bool nesterov, double wd) {
  return [=](double w, const std::vector<double>& grads, bool decay) {
    std::vector<double> out;
    double buf = 0;
    bool first = true;
    for (double g : grads) {
      if (decay) g += wd * w;
      if (mu > 0) {
        buf = first ? g : mu * buf + g;  // PyTorch: the buffer starts as the first gradient
        first = false;
        g = nesterov ? g + mu * buf : buf;
      }
      w -= lr * g;
      out.push_back(w);
    }
    return out;
  };
}

Reference AdamReference(double lr, double b1, double b2, double eps, double wd, bool decoupled) {
  return [=](double w, const std::vector<double>& grads, bool decay) {
    std::vector<double> out;
    double m = 0, v = 0;
    int t = 0;
    for (double g : grads) {
      ++t;
      if (decay && decoupled) w -= lr * wd * w;
      if (decay && !decoupled) g += wd * w;
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
      w -= lr / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + eps);  // eps outside the sqrt
      out.push_back(w);
    }
    return out;
  };
}

OptimizerConfig Sgd(double momentum, bool nesterov, double wd) {
  OptimizerConfig c;
  c.type = OptimizerKind::kSgd;
  c.momentum = momentum;
  c.nesterov = nesterov;
  c.weight_decay = wd;
  return c;
}

TEST(OptimizerTest, PlainSgd) {
  CheckAgainstReference(Sgd(0.0, false, 0.0), 0.1, SgdReference(0.1, 0.0, false, 0.0));
  CheckAgainstReference(Sgd(0.0, false, 0.05), 0.1, SgdReference(0.1, 0.0, false, 0.05));
}

TEST(OptimizerTest, SgdMomentum) {
  CheckAgainstReference(Sgd(0.9, false, 0.0), 0.05, SgdReference(0.05, 0.9, false, 0.0));
  CheckAgainstReference(Sgd(0.9, false, 0.01), 0.05, SgdReference(0.05, 0.9, false, 0.01));
}

TEST(OptimizerTest, SgdNesterov) {
  CheckAgainstReference(Sgd(0.8, true, 0.0), 0.05, SgdReference(0.05, 0.8, true, 0.0));
  CheckAgainstReference(Sgd(0.8, true, 0.02), 0.05, SgdReference(0.05, 0.8, true, 0.02));
}

TEST(OptimizerTest, AdamWithBiasCorrectionAndL2) {
  for (double wd : {0.0, 0.1}) {
    SCOPED_TRACE(wd);
    OptimizerConfig c;
    c.type = OptimizerKind::kAdam;
    c.beta1 = 0.9;
    c.beta2 = 0.99;
    c.epsilon = 1e-3;  // large enough that its place (outside the sqrt) matters
    c.weight_decay = wd;
    CheckAgainstReference(c, 0.01, AdamReference(0.01, 0.9, 0.99, 1e-3, wd, false));
  }
}

TEST(OptimizerTest, AdamWDecouplesDecay) {
  OptimizerConfig c;
  c.type = OptimizerKind::kAdamW;
  c.beta1 = 0.8;
  c.beta2 = 0.95;
  c.epsilon = 1e-8;
  c.weight_decay = 0.5;
  CheckAgainstReference(c, 0.02, AdamReference(0.02, 0.8, 0.95, 1e-8, 0.5, true));
}

TEST(OptimizerTest, ReferencesTellTheVariantsApart) {
  // The checks above would catch a mix-up: the variants give different first-step updates.
  const std::vector<double> g = {0.3, -0.2, 0.1};
  const double l2 = AdamReference(0.02, 0.9, 0.999, 1e-8, 0.5, false)(1.0, g, true)[2];
  const double decoupled = AdamReference(0.02, 0.9, 0.999, 1e-8, 0.5, true)(1.0, g, true)[2];
  EXPECT_GT(std::abs(l2 - decoupled), 1e-3);
  const double momentum = SgdReference(0.1, 0.9, false, 0)(1.0, g, false)[2];
  const double nesterov = SgdReference(0.1, 0.9, true, 0)(1.0, g, false)[2];
  EXPECT_GT(std::abs(momentum - nesterov), 1e-3);
}

TEST(OptimizerTest, AdamStepIsTheFormulaInFloatBitForBit) {
  // Each operation of the update rounded once, in this order, the square root correctly rounded:
  // whichever update runs (wide or generic), and whatever the size (a partial last vector).
  // Each intermediate is stored through a volatile so that no compiler fuses a multiply and add.
  for (OptimizerKind kind : {OptimizerKind::kAdam, OptimizerKind::kAdamW}) {
    for (int64_t cols : {7, 211}) {
      OptimizerConfig c;
      c.type = kind;
      c.weight_decay = 0.01;
      std::srand(11);
      Parameter p{"w", Matrix::Random(13, cols), true, true};
      Matrix w = p.value, m = Matrix::Zero(13, cols), v = Matrix::Zero(13, cols);
      Optimizer o(c, {&p});
      for (int t = 1; t <= 3; ++t) {
        const Matrix g0 = Matrix::Random(13, cols) * 0.01f;
        const double lr = 1e-2;
        o.Step({g0}, lr, 2);
        const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f, flr = static_cast<float>(lr);
        const float step = static_cast<float>(lr / (1.0 - std::pow(0.9, t)));
        const float inv = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(0.999, t)));
        for (int64_t i = 0; i < w.size(); ++i) {
          volatile float wi = w.data()[i], gi = g0.data()[i], x, y;
          if (kind == OptimizerKind::kAdamW) wi = wi * (1.0f - flr * wd);
          if (kind == OptimizerKind::kAdam) {
            x = wd * wi;
            gi = gi + x;
          }
          x = b1 * m.data()[i];
          y = (1 - b1) * gi;
          m.data()[i] = x + y;
          x = b2 * v.data()[i];
          y = gi * gi;
          y = (1 - b2) * y;
          v.data()[i] = x + y;
          x = std::sqrt(v.data()[i]);
          x = x * inv;
          x = x + eps;
          y = step * m.data()[i];
          y = y / x;
          w.data()[i] = wi - y;
        }
        ASSERT_EQ(0, std::memcmp(w.data(), p.value.data(), w.size() * sizeof(float)))
            << OptimizerName(kind) << " " << cols << " columns, step " << t;
      }
    }
  }
}

TEST(OptimizerTest, AdamOnThreadsEqualsOneThreadBitForBit) {
  // A parameter large enough to be split into chunks across threads, with an odd size so the last
  // chunk is partial: every variant gives the same bits on one thread and on two.
  for (OptimizerKind kind : {OptimizerKind::kAdam, OptimizerKind::kAdamW}) {
    OptimizerConfig c;
    c.type = kind;
    c.weight_decay = 0.01;
    Parameter one{"w", Matrix::Random(97, 211), true, true};
    Parameter two = one;
    const Matrix start = one.value;
    Optimizer a(c, {&one}), b(c, {&two});
    for (int s = 0; s < 3; ++s) {
      const Gradients g = {Matrix::Random(97, 211)};
      a.Step(g, 1e-2, 1);
      b.Step(g, 1e-2, 2);
    }
    ASSERT_EQ(0, std::memcmp(one.value.data(), two.value.data(), one.value.size() * sizeof(float)))
        << OptimizerName(kind);
    EXPECT_GT((one.value - start).cwiseAbs().minCoeff(), 0) << "every weight moved";
  }
}

TEST(OptimizerTest, LearningRateArgumentIsUsedPerStep) {
  Problem problem;
  Optimizer sgd(Sgd(0.0, false, 0.0), problem.params());
  const float w0 = problem.weight.value(0, 0);
  sgd.Step(problem.grads[0], 0.5);
  EXPECT_NEAR(problem.weight.value(0, 0), w0 - 0.5f * problem.grads[0][0](0, 0), 1e-7);
  EXPECT_THROW(sgd.Step({problem.grads[0][0]}, 0.1), InvalidArgument);
}

TEST(OptimizerTest, BadConfigurationsThrowNamingTheField) {
  auto expect_throw = [](OptimizerConfig c, const std::string& field) {
    try {
      CheckOptimizer(c);
      ADD_FAILURE() << "no throw for " << field;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
    Problem p;
    EXPECT_THROW(Optimizer(c, p.params()), InvalidArgument);
  };
  EXPECT_NO_THROW(CheckOptimizer(OptimizerConfig{}));
  // A change to the default configuration each, and the field its error names.
  const std::vector<std::pair<std::function<void(OptimizerConfig*)>, std::string>> bad = {
      {[](OptimizerConfig* c) { c->type = static_cast<OptimizerKind>(42); },
       "optimizer must be sgd, adam or adamw, got 42"},
      {[](OptimizerConfig* c) { c->learning_rate = 0; }, "learning_rate"},
      {[](OptimizerConfig* c) { c->learning_rate = INFINITY; }, "learning_rate"},
      {[](OptimizerConfig* c) { c->momentum = 1.0; }, "momentum"},
      {[](OptimizerConfig* c) { c->beta1 = -0.1; }, "beta1"},
      {[](OptimizerConfig* c) { c->beta2 = 1.0; }, "beta2"},
      {[](OptimizerConfig* c) { c->epsilon = 0; }, "epsilon"},
      {[](OptimizerConfig* c) { c->weight_decay = -1; }, "weight_decay"},
      {[](OptimizerConfig* c) { *c = Sgd(0.0, true, 0.0); }, "nesterov"},
  };
  for (const auto& [change, field] : bad) {
    OptimizerConfig c;
    change(&c);
    expect_throw(c, field);
  }
}

TEST(ScheduleTest, ConstantAndStep) {
  ScheduleConfig constant;
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(constant, 0.1, 0, 10, 100), 0.1);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(constant, 0.1, 99, 10, 100), 0.1);

  ScheduleConfig step;
  step.type = ScheduleKind::kStep;
  step.step_epochs = 2;
  step.gamma = 0.5;
  // Ten steps an epoch: epochs 0-1 at the base rate, 2-3 halved, 4-5 quartered.
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(step, 0.1, 0, 10, 100), 0.1);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(step, 0.1, 19, 10, 100), 0.1);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(step, 0.1, 20, 10, 100), 0.05);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(step, 0.1, 39, 10, 100), 0.05);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(step, 0.1, 45, 10, 100), 0.025);
}

TEST(ScheduleTest, CosineEndpoints) {
  ScheduleConfig cosine;
  cosine.type = ScheduleKind::kCosine;
  cosine.min_learning_rate = 0.001;
  const int64_t total = 101;
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(cosine, 0.1, 0, 10, total), 0.1);
  EXPECT_NEAR(ScheduledLearningRate(cosine, 0.1, total - 1, 10, total), 0.001, 1e-15);
  EXPECT_NEAR(ScheduledLearningRate(cosine, 0.1, 50, 10, total), 0.5 * (0.1 + 0.001), 1e-12);
  EXPECT_NEAR(ScheduledLearningRate(cosine, 0.1, 25, 10, total),
              0.001 + 0.5 * 0.099 * (1 + std::cos(std::numbers::pi / 4)), 1e-12);
  double previous = INFINITY;
  for (int64_t s = 0; s < total; ++s) {
    const double lr = ScheduledLearningRate(cosine, 0.1, s, 10, total);
    EXPECT_LE(lr, previous);
    EXPECT_GE(lr, 0.001 - 1e-15);
    previous = lr;
  }
  // One step in all: the base rate.
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(cosine, 0.1, 0, 1, 1), 0.1);
}

TEST(ScheduleTest, BadSchedulesThrowNamingTheField) {
  auto message = [](const ScheduleConfig& s) -> std::string {
    try {
      CheckSchedule(s);
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    return "";
  };
  ScheduleConfig s;
  EXPECT_EQ(message(s), "");
  s.type = static_cast<ScheduleKind>(42);  // not one of the enum's values
  EXPECT_NE(message(s).find("schedule must be constant, step or cosine, got 42"),
            std::string::npos);
  s = {};
  s.step_epochs = 0;
  EXPECT_NE(message(s).find("schedule.step_epochs"), std::string::npos);
  s = {};
  s.gamma = 0;
  EXPECT_NE(message(s).find("schedule.gamma"), std::string::npos);
  s = {};
  s.gamma = 1.5;
  EXPECT_NE(message(s).find("schedule.gamma"), std::string::npos);
  s = {};
  s.min_learning_rate = -1;
  EXPECT_NE(message(s).find("schedule.min_learning_rate"), std::string::npos);
}

TEST(MaxNormTest, ClipsLongColumnsAndLeavesShortOnes) {
  Parameter w{"weight", Matrix(3, 3), true, true};
  // Column norms: 5, 0.5, 2 (exactly at the limit).
  w.value << 3.0f, 0.3f, 0.0f, 4.0f, 0.4f, 2.0f, 0.0f, 0.0f, 0.0f;
  Parameter bias{"bias", Matrix(1, 3), false, false};
  bias.value << 10.0f, -20.0f, 30.0f;
  const Matrix original = w.value;
  ApplyMaxNorm({&w, &bias}, 0.0);  // c <= 0: no-op
  EXPECT_EQ(w.value, original);

  ApplyMaxNorm({&w, &bias}, 2.0);
  EXPECT_NEAR(w.value.col(0).norm(), 2.0f, 1e-6f);
  EXPECT_NEAR(w.value(0, 0), 1.2f, 1e-6f);  // direction kept: (3, 4)/5 * 2
  EXPECT_NEAR(w.value(1, 0), 1.6f, 1e-6f);
  EXPECT_EQ(w.value(2, 0), 0.0f);
  EXPECT_EQ(Matrix(w.value.col(1)), Matrix(original.col(1)));
  EXPECT_EQ(Matrix(w.value.col(2)), Matrix(original.col(2)));
  // Parameters without the max_norm flag are untouched.
  EXPECT_FLOAT_EQ(bias.value(0, 0), 10.0f);
  EXPECT_FLOAT_EQ(bias.value(0, 1), -20.0f);
  EXPECT_FLOAT_EQ(bias.value(0, 2), 30.0f);
}

}  // namespace
}  // namespace dropnet::engine
