// An immutable, published model version (TF Serving's pattern): requests take a
// shared_ptr<const Snapshot> once and use it for all their work, while training runs on a private
// copy and publishes the next version.
#ifndef DROPNET_SERVICE_SNAPSHOT_H_
#define DROPNET_SERVICE_SNAPSHOT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dropnet/v1/model.pb.h"
#include "server/engine/data.h"
#include "server/engine/loss.h"
#include "server/engine/network.h"

namespace dropnet::service {

struct Snapshot {
  std::string model;
  int64_t version = 0;
  v1::ModelSpec spec;
  engine::Network net;
  engine::Task task = engine::Task::kClassification;
  engine::LossKind loss = engine::LossKind::kCrossEntropy;
  double tau = 0;
  // Inputs: x' = standardizer(x * input_scale); regression outputs: target_standardizer's
  // mean + scale * output (transform.h).
  float input_scale = 1.0f;
  engine::Standardizer standardizer;
  engine::Standardizer target_standardizer;
  int64_t steps = 0;
  std::vector<v1::EpochRecord> history;
  int64_t created_unix_ms = 0;
  std::string note;
  // Classification: the training data set's class names, in label order; may be empty.
  std::vector<std::string> class_names;

  explicit Snapshot(engine::Network n) : net(std::move(n)) {}
};

using SnapshotPtr = std::shared_ptr<const Snapshot>;

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_SNAPSHOT_H_
