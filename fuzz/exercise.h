// Runs a model the way the service does once it is built: an eval pass, a few Monte-Carlo passes
// and one short epoch of training on a copy, on a tiny deterministic batch.
#ifndef DROPNET_FUZZ_EXERCISE_H_
#define DROPNET_FUZZ_EXERCISE_H_

#include <cmath>

#include <google/protobuf/stubs/logging.h>

#include "server/engine/mc.h"
#include "server/engine/trainer.h"
#include "server/service/convert.h"
#include "server/service/snapshot.h"

namespace dropnet::fuzz {

// Protobuf's parser logs every malformed string it meets; at thousands of inputs a second that is
// only noise.
inline void QuietProtobuf() { google::protobuf::SetLogHandler(nullptr); }

// Smaller than the server's defaults so that one input stays fast; the checks are the same.
inline service::SpecLimits Limits() {
  service::SpecLimits l;
  l.max_layers = 24;
  l.max_parameters = 10'000;
  l.max_width = 1'024;
  return l;
}

inline void Exercise(const service::Snapshot& s) {
  const int64_t width = s.net.input_shape().Size();
  const int64_t rows = 4;
  engine::Matrix x(rows, width);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c) x(r, c) = std::sin(static_cast<float>(7 * r + c));
  engine::Matrix scaled = x;
  s.standardizer.Apply(&scaled);
  engine::Matrix variance;
  engine::PredictEval(s.net, s.task, s.loss, scaled, 1, nullptr, nullptr, &variance);

  engine::McOptions mo;
  mo.samples = 3;
  mo.seed = 7;
  mo.tau = s.tau;
  mo.memory_budget_bytes = 1 << 20;
  engine::MonteCarloPredict(s.net, s.task, s.loss, scaled, mo);

  // One epoch of two steps on data that fits the head.
  engine::Dataset d;
  d.task = s.task;
  d.input_shape = s.net.input_shape();
  d.x = x;
  const int64_t outputs = s.net.output_shape().Size();
  if (s.task == engine::Task::kClassification) {
    d.y.resize(rows, 1);
    for (int64_t r = 0; r < rows; ++r)
      d.y(r, 0) = static_cast<float>(r % std::max<int64_t>(outputs, 1));
    d.num_classes = static_cast<int>(std::min<int64_t>(outputs, rows));
  } else {
    const int64_t targets = s.loss == engine::LossKind::kGaussianNll ? outputs / 2 : outputs;
    d.y.resize(rows, std::max<int64_t>(targets, 1));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < d.y.cols(); ++c) d.y(r, c) = std::cos(static_cast<float>(r + c));
  }
  engine::TrainOptions o;
  o.epochs = 1;
  o.batch_size = 2;
  o.seed = 3;
  engine::Network net = s.net;
  try {
    engine::Train(&net, s.task, s.loss, d, o);
  } catch (const engine::InvalidArgument&) {
    // A diverging loss on random weights is reported, not a fault.
  }
}

}  // namespace dropnet::fuzz

#endif  // DROPNET_FUZZ_EXERCISE_H_
