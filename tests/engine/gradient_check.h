// Helpers shared by the engine tests: random matrices and a numerical gradient check.
//
// The check compares an analytic gradient with central differences (f(v+h) - f(v-h)) / (2h) of a
// scalar objective evaluated in double. Perturbations are applied to the float tensor in place,
// and h is the perturbation actually stored in float, so rounding of v +- eps does not bias the
// estimate. An element passes when
//   |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|).
#ifndef DROPNET_TESTS_ENGINE_GRADIENT_CHECK_H_
#define DROPNET_TESTS_ENGINE_GRADIENT_CHECK_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/engine/layer.h"
#include "server/engine/random.h"
#include "server/engine/tensor.h"

namespace dropnet::engine::test_support {

// A rows x cols matrix of independent U(lo, hi) entries from a fixed seed.
inline Matrix UniformMatrix(int64_t rows, int64_t cols, double lo, double hi, uint64_t seed) {
  SplitMix64 rng(seed);
  Matrix m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) {
    m.data()[i] = static_cast<float>(lo + (hi - lo) * rng.Uniform());
  }
  return m;
}

// Entries of random sign with |v| uniform in [min_abs, max_abs]: keeps inputs off the kinks.
inline Matrix AwayFromZero(int64_t rows, int64_t cols, double min_abs, double max_abs,
                           uint64_t seed) {
  SplitMix64 rng(seed);
  Matrix m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) {
    const double mag = min_abs + (max_abs - min_abs) * rng.Uniform();
    m.data()[i] = static_cast<float>(rng.Next() & 1 ? mag : -mag);
  }
  return m;
}

// sum_ij w_ij * y_ij accumulated in double.
inline double WeightedSum(const Matrix& y, const Matrix& w) {
  return (y.cast<double>().array() * w.cast<double>().array()).sum();
}

struct GradCheckOptions {
  double eps = 1e-2;
  double rtol = 1e-2;
  double atol = 1e-3;
};

struct GradCheckResult {
  int64_t checked = 0;
  int64_t mismatches = 0;
  std::string report;  // the first few mismatches
};

// Compares `analytic` (same shape as *v) with central differences of f at every element of *v.
inline void CompareWithCentralDifferences(const std::function<double()>& f, Matrix* v,
                                          const Matrix& analytic, const GradCheckOptions& opt,
                                          const std::string& name, GradCheckResult* result) {
  if (analytic.rows() != v->rows() || analytic.cols() != v->cols()) {
    ++result->mismatches;
    std::ostringstream msg;
    msg << name << ": analytic gradient is " << analytic.rows() << "x" << analytic.cols()
        << ", the tensor " << v->rows() << "x" << v->cols() << "\n";
    result->report += msg.str();
    return;
  }
  for (int64_t i = 0; i < v->rows(); ++i) {
    for (int64_t j = 0; j < v->cols(); ++j) {
      const float saved = (*v)(i, j);
      const float plus = static_cast<float>(saved + opt.eps);
      const float minus = static_cast<float>(saved - opt.eps);
      (*v)(i, j) = plus;
      const double f_plus = f();
      (*v)(i, j) = minus;
      const double f_minus = f();
      (*v)(i, j) = saved;
      const double h2 = static_cast<double>(plus) - static_cast<double>(minus);
      const double numeric = (f_plus - f_minus) / h2;
      const double a = analytic(i, j);
      const double err = std::abs(a - numeric);
      ++result->checked;
      if (!(err <= opt.atol + opt.rtol * std::max(std::abs(a), std::abs(numeric)))) {
        if (++result->mismatches <= 5) {
          std::ostringstream msg;
          msg << name << "(" << i << ", " << j << "): analytic " << a << ", numeric " << numeric
              << "\n";
          result->report += msg.str();
        }
      }
    }
  }
}

// Checks dL/dx and dL/dparam of every parameter of `layer` for L = sum(w .* Forward(x)), with w
// fixed random weights, against central differences. ctx.mode should be kTrain; stochastic layers
// draw the same mask at every evaluation because the context (the random address) is fixed.
inline GradCheckResult CheckLayerGradients(Layer* layer, Matrix x, const Context& ctx,
                                           const GradCheckOptions& opt, uint64_t w_seed) {
  GradCheckResult result;
  LayerCache cache;
  cache.threads = ctx.threads;
  Matrix y;
  layer->Forward(x, ctx, &cache, &y);
  const Matrix w = UniformMatrix(y.rows(), y.cols(), -1.0, 1.0, w_seed);
  // Backward must overwrite the gradients, whatever the matrices held: start them at NaN.
  std::vector<Matrix> grads;
  for (const Parameter& p : layer->params())
    grads.push_back(Matrix::Constant(p.value.rows(), p.value.cols(), std::nanf("")));
  Matrix dx;
  layer->Backward(w, cache, grads, &dx);

  auto objective = [&]() {
    LayerCache scratch;
    Matrix out;
    layer->Forward(x, ctx, &scratch, &out);
    return WeightedSum(out, w);
  };
  CompareWithCentralDifferences(objective, &x, dx, opt, layer->Type() + " dx", &result);
  for (size_t k = 0; k < layer->params().size(); ++k) {
    Parameter& p = layer->params()[k];
    CompareWithCentralDifferences(objective, &p.value, grads[k], opt, layer->Type() + " d" + p.name,
                                  &result);
  }
  return result;
}

// CheckLayerGradients with ctx on 1 and then 2 threads (the same masks either way): each check
// compares at least `min_checked` elements and finds no mismatch.
inline void ExpectGradientsOnOneAndTwoThreads(Layer* layer, const Matrix& x, Context ctx,
                                              const GradCheckOptions& opt, uint64_t w_seed,
                                              int64_t min_checked) {
  for (int threads : {1, 2}) {
    ctx.threads = threads;
    const GradCheckResult r = CheckLayerGradients(layer, x, ctx, opt, w_seed);
    EXPECT_GT(r.checked, min_checked) << threads << " threads";
    EXPECT_EQ(r.mismatches, 0) << threads << " threads: " << r.report;
  }
}

}  // namespace dropnet::engine::test_support

#endif  // DROPNET_TESTS_ENGINE_GRADIENT_CHECK_H_
