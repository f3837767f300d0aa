#include "server/service/prediction.h"

#include <random>
#include <stdexcept>
#include <string>

#include "server/engine/random.h"
#include "server/service/service.h"
#include "server/service/status.h"
#include "server/service/transform.h"

namespace dropnet::service {

using engine::Matrix;
using grpc::StatusCode;

namespace {

// Reads a request batch, checks its size and applies the model's input transform (transform.h).
Matrix ReadInputs(const Snapshot& s, const WireTensor& inputs, int64_t max_rows,
                  const char* field) {
  if (!inputs.shape.empty() && inputs.shape[0] > max_rows) {
    Fail(StatusCode::RESOURCE_EXHAUSTED, std::string(field) + " has " +
                                             std::to_string(inputs.shape[0]) +
                                             " rows, the limit is " + std::to_string(max_rows));
  }
  Matrix x = inputs.ToMatrix(s.net.input_shape().Size(), field);
  ApplyInputTransform(s, &x);
  return x;
}

}  // namespace

uint64_t FreshSeed() {
  // Opening std::random_device per call cost more than a small prediction.
  thread_local engine::SplitMix64 rng = [] {
    std::random_device rd;
    return engine::SplitMix64((static_cast<uint64_t>(rd()) << 32) ^ rd());
  }();
  return rng.Next();
}

int ResolveSamples(int requested, int default_samples, int max_samples) {
  const int t = requested == 0 ? default_samples : requested;
  if (t <= 0) {
    Fail(StatusCode::INVALID_ARGUMENT, "samples must be positive, got " + std::to_string(t));
  }
  if (t > max_samples) {
    Fail(StatusCode::RESOURCE_EXHAUSTED, "samples " + std::to_string(t) +
                                             " exceeds the server limit " +
                                             std::to_string(max_samples));
  }
  return t;
}

engine::McOptions MonteCarloOptions(const PredictionQuery& q, const ServiceConfig& config,
                                    const Snapshot& snap, int threads,
                                    const std::function<bool()>& should_stop) {
  engine::McOptions mo;
  mo.samples = ResolveSamples(q.samples, config.default_samples, config.max_samples);
  if (snap.net.FirstStochasticLayer() >= snap.net.size()) {
    Fail(StatusCode::FAILED_PRECONDITION,
         "model '" + snap.model +
             "' has no stochastic layer: Monte-Carlo samples would all be equal; use " + q.instead);
  }
  mo.seed = q.seed ? *q.seed : FreshSeed();
  mo.threads = threads;
  mo.memory_budget_bytes = config.mc_memory_budget_bytes;
  mo.tau = snap.tau;
  mo.should_stop = should_stop;
  if (q.interval != 0) mo.interval = q.interval;
  if (!(mo.interval > 0 && mo.interval < 1)) {
    Fail(StatusCode::INVALID_ARGUMENT,
         "interval must be in (0, 1), got " + std::to_string(mo.interval));
  }
  return mo;
}

PreparedPrediction PreparePrediction(const Snapshot& snap, const WireTensor& inputs,
                                     const PredictionQuery& q, const ServiceConfig& config) {
  PreparedPrediction p;
  p.snap = &snap;
  p.monte_carlo = q.monte_carlo;
  if (!q.monte_carlo) {
    p.x = ReadInputs(snap, inputs, config.max_batch_rows, q.field);
    return p;
  }
  p.options = MonteCarloOptions(q, config, snap, 1, nullptr);
  p.x = ReadInputs(snap, inputs, config.max_batch_rows, q.field);
  const int64_t outputs = snap.net.output_shape().Size();
  const int64_t returned = static_cast<int64_t>(p.options.samples) * p.x.rows() * outputs;
  if (q.keep_samples && returned > config.max_returned_samples) {
    Fail(StatusCode::RESOURCE_EXHAUSTED, "return_samples would send " + std::to_string(returned) +
                                             " values, the limit is " +
                                             std::to_string(config.max_returned_samples));
  }
  p.options.keep_samples = q.keep_samples;
  return p;
}

namespace {

// The parts' rows, one after the other.
Matrix StackRows(const std::vector<const PreparedPrediction*>& parts) {
  int64_t rows = 0;
  for (const auto* p : parts) rows += p->x.rows();
  Matrix stacked(rows, parts.front()->x.cols());
  int64_t r0 = 0;
  for (const auto* p : parts) {
    stacked.middleRows(r0, p->x.rows()) = p->x;
    r0 += p->x.rows();
  }
  return stacked;
}

}  // namespace

std::vector<Prediction> ComputePredictions(const std::vector<const PreparedPrediction*>& parts,
                                           int threads, const std::function<bool()>& should_stop) {
  const PreparedPrediction& first = *parts.front();
  const Snapshot& snap = *first.snap;
  std::vector<Prediction> out(parts.size());
  if (first.monte_carlo) {
    if (parts.size() != 1) throw std::logic_error("Monte-Carlo calls are computed one at a time");
    Prediction& p = out.front();
    p.rows = first.x.rows();
    p.options = first.options;
    p.options.threads = threads;
    p.options.should_stop = should_stop;
    p.mc = engine::MonteCarloPredict(snap.net, snap.task, snap.loss, first.x, p.options);
    if (snap.task == engine::Task::kRegression) UnstandardizeMc(snap.target_standardizer, &p.mc);
    return out;
  }
  const bool single = parts.size() == 1;
  const Matrix stacked = single ? Matrix() : StackRows(parts);
  Matrix variance;
  Matrix output = engine::PredictEval(snap.net, snap.task, snap.loss, single ? first.x : stacked,
                                      threads, nullptr, nullptr, &variance);
  if (single) {
    out.front().output = std::move(output);
    out.front().variance = std::move(variance);
  } else {
    int64_t r0 = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const int64_t n = parts[i]->x.rows();
      out[i].output = output.middleRows(r0, n);
      if (variance.size() > 0) out[i].variance = variance.middleRows(r0, n);
      r0 += n;
    }
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    Prediction& p = out[i];
    p.rows = parts[i]->x.rows();
    if (snap.task == engine::Task::kRegression) {
      UnstandardizeOutputs(snap.target_standardizer, &p.output, &p.variance);
    }
  }
  return out;
}

Prediction RunPrediction(const Snapshot& snap, const WireTensor& inputs, const PredictionQuery& q,
                         const ServiceConfig& config, int threads,
                         const std::function<bool()>& should_stop) {
  const PreparedPrediction part = PreparePrediction(snap, inputs, q, config);
  return std::move(ComputePredictions({&part}, threads, should_stop).front());
}

}  // namespace dropnet::service
