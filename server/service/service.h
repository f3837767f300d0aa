// The dropnet.v1.Dropnet service: thin handlers that validate, convert and hand work to the
// engine. Every handler runs through one wrapper that refuses work while draining, maps
// exceptions to statuses (status.h) and logs one line per call with model, version, mode, status
// and latency.
//
// Predict, PredictUncertainty and Evaluate use gRPC's callback API: their handlers hand the work
// to a CallScheduler (executor.h), which runs a small call at once and queues the others for its
// workers, so that any number of calls can wait for a worker and none holds a gRPC thread
// meanwhile. The other calls (model and data-set management, the Train and UploadDataset streams)
// are synchronous, on gRPC's threads; so are the RankDataset and EvaluateStream streams, whose
// thread waits while a worker of the CallScheduler computes. The data-set handlers are defined in
// dataset_handlers.cc, RankDataset in rank_handler.cc, Evaluate and EvaluateStream in
// evaluate_handler.cc, the training a Train call runs in training_job.h, the rest in service.cc.
#ifndef DROPNET_SERVICE_SERVICE_H_
#define DROPNET_SERVICE_SERVICE_H_

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "dropnet/v1/service.grpc.pb.h"
#include "server/service/auth.h"
#include "server/service/batcher.h"
#include "server/service/executor.h"
#include "server/service/metrics_registry.h"
#include "server/service/registry.h"
#include "server/service/training_job.h"

namespace dropnet::service {

struct ServiceConfig {
  std::filesystem::path data_root;  // ImportDataset reads only below it; empty: disabled
  int64_t max_batch_rows = 65536;   // Predict, PredictUncertainty
  int max_samples = 10000;          // PredictUncertainty, Evaluate: T limit
  int default_samples = 50;
  int max_concurrent_trainings = 2;
  int keep_versions = 5;           // newest versions a model keeps unless it sets its own
  int cached_versions = 8;         // older versions kept loaded for calls that name them
  int compute_threads = 1;         // threads one request computes on
  int workers = 1;                 // prediction calls computing at a time
  size_t max_queued_calls = 1024;  // prediction calls waiting for a worker
  int64_t mc_memory_budget_bytes = 64ll << 20;
  int64_t max_dataset_bytes = 2ll << 30;    // UploadDataset: rows as float32, or CSV text
  int64_t max_model_bytes = 64ll << 20;     // ImportModel: the ONNX file
  int64_t max_returned_samples = 16 << 20;  // PredictUncertainty return_samples: floats
  bool read_only = false;                   // a serving replica: no Train, create, delete, upload
  // Dynamic batching (batcher.h): concurrent Predict and PredictUncertainty calls on one model
  // version are merged into one engine call within this window after the first one arrives
  // (0: off), up to batch_max_rows rows. A call that finds the server idle runs at once, alone.
  int64_t batch_window_us = 0;
  int64_t batch_max_rows = 64;
  // How long idle engine threads spin for the next call's work (engine::SetWorkerSpin): a setting
  // of the process, which Server::Start applies. < 0: the engine's default.
  int64_t spin_us = -1;
};

// Predict, PredictUncertainty and Evaluate through the callback API, the rest synchronous.
// Predict and PredictUncertainty take their requests as bytes (request_wire.h).
using DropnetServiceBase = v1::Dropnet::WithRawCallbackMethod_Predict<
    v1::Dropnet::WithRawCallbackMethod_PredictUncertainty<
        v1::Dropnet::WithCallbackMethod_Evaluate<v1::Dropnet::Service>>>;

class DropnetService final : public DropnetServiceBase {
 public:
  // `auth` may be null (every call allowed), and `metrics` (none kept); both must outlive the
  // service.
  DropnetService(Registry* registry, ServiceConfig config, const TokenAuth* auth = nullptr,
                 ServiceMetrics* metrics = nullptr);

  // While draining, new calls get UNAVAILABLE and running trainings stop and save.
  void StartDraining();
  bool draining() const { return draining_.load(); }
  const Batcher& batcher() const { return batcher_; }
  // Calls received and not yet answered, and prediction calls waiting for a worker.
  int64_t CallsInFlight() const {
    return scheduler_.in_flight() + sync_in_flight_.load(std::memory_order_relaxed);
  }
  int64_t QueuedCalls() const { return static_cast<int64_t>(scheduler_.queued()); }

  // The work of one Train call (training_job.h), shared by the RPC and the example bootstrap.
  // `stop` is polled between steps. Returns the final status.
  grpc::Status RunTraining(const v1::TrainRequest& request, const TrainSink& sink,
                           const std::function<bool()>& stop);

  // Models.
  grpc::Status CreateModel(grpc::ServerContext*, const v1::CreateModelRequest*,
                           v1::CreateModelResponse*) override;
  grpc::Status GetModel(grpc::ServerContext*, const v1::GetModelRequest*,
                        v1::GetModelResponse*) override;
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse*) override;
  grpc::Status DeleteModel(grpc::ServerContext*, const v1::DeleteModelRequest*,
                           v1::DeleteModelResponse*) override;
  grpc::Status SetVersionLabel(grpc::ServerContext*, const v1::SetVersionLabelRequest*,
                               v1::SetVersionLabelResponse*) override;
  grpc::Status RemoveVersionLabel(grpc::ServerContext*, const v1::RemoveVersionLabelRequest*,
                                  v1::RemoveVersionLabelResponse*) override;
  grpc::Status UpdateModel(grpc::ServerContext*, const v1::UpdateModelRequest*,
                           v1::UpdateModelResponse*) override;
  // ONNX files (model_io_handlers.cc).
  grpc::Status ImportModel(grpc::ServerContext*, const v1::ImportModelRequest*,
                           v1::ImportModelResponse*) override;
  grpc::Status ExportModel(grpc::ServerContext*, const v1::ExportModelRequest*,
                           v1::ExportModelResponse*) override;
  // Data sets (dataset_handlers.cc).
  grpc::Status UploadDataset(grpc::ServerContext*, grpc::ServerReader<v1::UploadDatasetRequest>*,
                             v1::UploadDatasetResponse*) override;
  grpc::Status ImportDataset(grpc::ServerContext*, const v1::ImportDatasetRequest*,
                             v1::ImportDatasetResponse*) override;
  grpc::Status ListDatasets(grpc::ServerContext*, const v1::ListDatasetsRequest*,
                            v1::ListDatasetsResponse*) override;
  grpc::Status DeleteDataset(grpc::ServerContext*, const v1::DeleteDatasetRequest*,
                             v1::DeleteDatasetResponse*) override;
  // dataset_split.cc.
  grpc::Status SplitDataset(grpc::ServerContext*, const v1::SplitDatasetRequest*,
                            v1::SplitDatasetResponse*) override;
  // Training and prediction.
  grpc::Status Train(grpc::ServerContext*, const v1::TrainRequest*,
                     grpc::ServerWriter<v1::TrainEvent>*) override;
  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext*, const grpc::ByteBuffer*,
                                    grpc::ByteBuffer*) override;
  grpc::ServerUnaryReactor* PredictUncertainty(grpc::CallbackServerContext*,
                                               const grpc::ByteBuffer*, grpc::ByteBuffer*) override;
  grpc::ServerUnaryReactor* Evaluate(grpc::CallbackServerContext*, const v1::EvaluateRequest*,
                                     v1::EvaluateResponse*) override;
  // Active learning (rank_handler.cc): synchronous, on a gRPC thread that waits while a worker
  // of the scheduler computes and streams the events.
  grpc::Status RankDataset(grpc::ServerContext*, const v1::RankDatasetRequest*,
                           grpc::ServerWriter<v1::RankEvent>*) override;
  // Evaluate with progress (evaluate_handler.cc): synchronous as RankDataset, a progress event
  // after every batch, the EvaluateResponse last.
  grpc::Status EvaluateStream(grpc::ServerContext*, const v1::EvaluateRequest*,
                              grpc::ServerWriter<v1::EvaluateEvent>*) override;

  // A call's log line (handler_common.h).
  struct CallLog;
  // Runs `body` as a prediction call of `work` multiply-adds through the scheduler and waits for
  // its answer: for a transport without gRPC's callback API (the HTTP port) whose caller has
  // checked the token. UNAVAILABLE while draining, RESOURCE_EXHAUSTED when the queue is full,
  // exceptions mapped as every call's; one log line.
  grpc::Status RunQueued(const char* method, int64_t work,
                         const std::function<grpc::Status(int threads, CallLog&)>& body);

 private:
  friend class InferenceService;  // its handlers run through Handle and Queue
  // Checks the token, draining and read-only state, runs `body` and maps what it throws.
  template <typename Body>
  grpc::Status Run(const char* method, grpc::ServerContextBase* ctx, Role role, Body&& body,
                   CallLog& log);
  // Run, then the call's log line: the synchronous handlers.
  template <typename Body>
  grpc::Status Handle(const char* method, grpc::ServerContextBase* ctx, Role role, Body&& body);
  // Schedules `body` (executor.h) and answers the call when it has run. `work` estimates its
  // multiply-adds (-1: unknown, large).
  template <typename Body>
  grpc::ServerUnaryReactor* Queue(const char* method, grpc::CallbackServerContext* ctx, Role role,
                                  int64_t work, Body body);

  // Predict and PredictUncertainty: `prepare(log)` checks the call and returns its work (a
  // PredictionPart), `respond(log, part, prediction)` writes the answer. A call of up to
  // batch_max_rows rows (`mergeable`) that does not find the server idle is prepared at once and
  // handed to the batcher; the others are queued as Queue does, and prepared where they run.
  template <typename Prepare, typename Respond>
  grpc::ServerUnaryReactor* QueuePrediction(const char* method, grpc::CallbackServerContext* ctx,
                                            int64_t work, bool mergeable, Prepare prepare,
                                            Respond respond);

  // For a synchronous handler (inside Handle): runs `body(threads)` on a worker of the scheduler,
  // counted as a prediction call, and waits for it; rethrows what it throws. CANCELLED or
  // DEADLINE_EXCEEDED when the call ends while it waits, RESOURCE_EXHAUSTED when the queue is
  // full.
  void ComputeOnWorker(grpc::ServerContextBase* ctx, CallLog& log,
                       const std::function<void(int threads)>& body);

  Registry* registry_;
  const TokenAuth* auth_;
  ServiceMetrics* metrics_;
  ServiceConfig config_;
  std::atomic<bool> draining_{false};
  std::atomic<int> sync_in_flight_{0};  // synchronous calls running
  // Runs its merged calls on scheduler_'s workers, which finish before it goes.
  Batcher batcher_;
  // Last member: destroyed first, so its workers finish before the rest goes.
  CallScheduler scheduler_;
};

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_SERVICE_H_
