// Training jobs: the work of one Train call, from its request to the versions it publishes.
//
// TrainOptionsFromRequest maps a TrainRequest to the engine's options, with the defaults the proto
// documents. RunTraining checks the data set against the model, takes the model's training lease
// (one training per model, a limited number at a time), trains a private copy of the network and
// publishes a version at the end of every epoch, on early stopping, and where it stopped when the
// server shuts down; it reports progress to a TrainSink. The Train call and the example bootstrap
// (server.h) both run through it.
#ifndef DROPNET_SERVICE_TRAINING_JOB_H_
#define DROPNET_SERVICE_TRAINING_JOB_H_

#include <atomic>
#include <functional>

#include <grpcpp/grpcpp.h>

#include "dropnet/v1/service.pb.h"
#include "server/engine/trainer.h"
#include "server/service/metrics_registry.h"
#include "server/service/registry.h"

namespace dropnet::service {

// Where training progress goes: the Train stream, or a log for the built-in example.
// Returns false when the receiver is gone (training then stops).
using TrainSink = std::function<bool(const v1::TrainEvent&)>;

// The server around a training.
struct TrainingEnvironment {
  Registry* registry = nullptr;
  int threads = 1;  // engine threads the training computes on
  int max_concurrent_trainings = 1;
  const std::atomic<bool>* draining = nullptr;  // set when the server shuts down
  ServiceMetrics* metrics = nullptr;            // counts finished epochs; may be null
};

// The engine's options for `request`, on `threads` threads. Throws INVALID_ARGUMENT for an unknown
// optimizer or schedule, a negative report_every_steps, or options the engine refuses.
engine::TrainOptions TrainOptionsFromRequest(const v1::TrainRequest& request, int threads);

// Runs one training. `stop` is polled between steps; a training stopped while the server drains
// saves its unfinished epoch and ends UNAVAILABLE, one stopped otherwise ends CANCELLED. Returns
// the final status; throws (status.h) for what fails before training starts.
grpc::Status RunTraining(const TrainingEnvironment& env, const v1::TrainRequest& request,
                         const TrainSink& sink, const std::function<bool()>& stop);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_TRAINING_JOB_H_
