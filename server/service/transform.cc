#include "server/service/transform.h"

#include <cmath>

namespace dropnet::service {

using engine::Matrix;

void ApplyInputTransform(const Snapshot& s, Matrix* x) {
  if (s.input_scale != 1.0f) *x *= s.input_scale;
  s.standardizer.Apply(x);
}

Matrix DatasetInputs(const Snapshot& s, const engine::Dataset& d, int64_t rows) {
  return DatasetInputs(s, d, 0, rows);
}

Matrix DatasetInputs(const Snapshot& s, const engine::Dataset& d, int64_t first, int64_t rows) {
  Matrix x = d.x.middleRows(first, rows);
  if (d.input_scale != 1.0f) x *= d.input_scale;
  s.standardizer.Apply(&x);
  return x;
}

void StandardizeTargets(const engine::Standardizer& t, Matrix* y) { t.Apply(y); }

void UnstandardizeOutputs(const engine::Standardizer& t, Matrix* mean, Matrix* variance) {
  if (t.empty()) return;
  if (mean != nullptr && mean->size() > 0) {
    mean->array().rowwise() *= t.scale.array();
    mean->array().rowwise() += t.mean.array();
  }
  if (variance != nullptr && variance->size() > 0) {
    variance->array().rowwise() *= t.scale.array().square();
  }
}

void UnstandardizeMc(const engine::Standardizer& t, engine::McResult* r) {
  if (t.empty()) return;
  UnstandardizeOutputs(t, &r->mean, &r->total_variance);
  UnstandardizeOutputs(t, &r->lower, nullptr);
  UnstandardizeOutputs(t, &r->upper, nullptr);
  if (r->stddev.size() > 0) r->stddev.array().rowwise() *= t.scale.array();
  for (Matrix& m : r->sample_outputs) UnstandardizeOutputs(t, &m, nullptr);
  if (r->log_likelihood.size() > 0) r->log_likelihood.array() -= LogScaleSum(t);
}

double LogScaleSum(const engine::Standardizer& t) {
  double sum = 0;
  for (int64_t j = 0; j < t.scale.size(); ++j) sum += std::log(static_cast<double>(t.scale(j)));
  return sum;
}

void KeepRawPixels(engine::Dataset* d) {
  d->x = (d->x.array() * 255.0f).round().matrix();
  d->input_scale = 1.0f / 255.0f;
}

}  // namespace dropnet::service
