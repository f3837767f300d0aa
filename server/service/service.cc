#include "server/service/service.h"

#include <chrono>
#include <cmath>
#include <random>
#include <sstream>

#include <spdlog/spdlog.h>

#include "server/engine/mc.h"
#include "server/engine/metrics.h"
#include "server/engine/random.h"
#include "server/engine/thread_pool.h"
#include "server/engine/trainer.h"
#include "server/service/memory.h"
#include "server/service/request_wire.h"
#include "server/service/status.h"

namespace dropnet::service {

namespace fs = std::filesystem;
using engine::Matrix;
using grpc::StatusCode;

namespace {

std::shared_ptr<spdlog::logger> Logger(const char* name) {
  auto l = spdlog::get(name);
  return l ? l : spdlog::default_logger();
}

bool DeadlinePassed(const grpc::ServerContextBase* ctx) {
  return ctx && ctx->deadline() <= std::chrono::system_clock::now();
}

// A seed for a call that gave none: each thread draws from its own SplitMix64 sequence, started
// from the system's entropy once (opening std::random_device per call cost more than a small
// prediction).
uint64_t FreshSeed() {
  thread_local engine::SplitMix64 rng = [] {
    std::random_device rd;
    return engine::SplitMix64((static_cast<uint64_t>(rd()) << 32) ^ rd());
  }();
  return rng.Next();
}

// A Predict or PredictUncertainty call: its request, read from its bytes (request_wire.h), and its
// answer, serialised by the call's body when it succeeds.
template <typename Request, typename Response>
struct WireCall {
  Request request;     // all but the inputs
  WireTensor inputs;
  bool parsed = false;
  Response response;

  // Throws for a request that was not a valid message; the call's body checks this first, after
  // the call's token.
  void CheckParsed() const {
    if (!parsed) {
      Fail(StatusCode::INVALID_ARGUMENT,
           "the request is not a valid " + Request::descriptor()->full_name() + " message");
    }
  }
};

grpc::Status SerializeResponse(const google::protobuf::Message& response, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  return grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(
      response, out, &own_buffer);
}

// Reads a request batch, checks its size and applies the model's standardisation.
Matrix ReadInputs(const Snapshot& s, const WireTensor& inputs, int64_t max_rows) {
  if (!inputs.shape.empty() && inputs.shape[0] > max_rows) {
    Fail(StatusCode::RESOURCE_EXHAUSTED, "inputs has " + std::to_string(inputs.shape[0]) +
                                             " rows, the limit is " + std::to_string(max_rows));
  }
  Matrix x = inputs.ToMatrix(s.net.input_shape().Size(), "inputs");
  s.standardizer.Apply(&x);
  return x;
}

int ResolveSamples(int requested, int default_samples, int max_samples) {
  const int t = requested == 0 ? default_samples : requested;
  if (t <= 0) {
    Fail(StatusCode::INVALID_ARGUMENT, "samples must be positive, got " + std::to_string(t));
  }
  if (t > max_samples) {
    Fail(StatusCode::RESOURCE_EXHAUSTED,
         "samples " + std::to_string(t) + " exceeds the server limit " + std::to_string(max_samples));
  }
  return t;
}

void CheckDataFits(const Snapshot& s, const engine::Dataset& d, const std::string& dataset) {
  if (d.x.cols() != s.net.input_shape().Size()) {
    Fail(StatusCode::INVALID_ARGUMENT,
         "data set '" + dataset + "' has " + std::to_string(d.x.cols()) +
             " features per row, model '" + s.model + "' expects " +
             std::to_string(s.net.input_shape().Size()));
  }
  if (d.task != s.task) {
    Fail(StatusCode::INVALID_ARGUMENT, "data set '" + dataset + "' is for " +
                                           engine::TaskName(d.task) + ", model '" + s.model +
                                           "' for " + engine::TaskName(s.task));
  }
  const int64_t outputs = s.net.output_shape().Size();
  if (s.task == engine::Task::kClassification && d.num_classes > outputs) {
    Fail(StatusCode::INVALID_ARGUMENT, "data set '" + dataset + "' has " +
                                           std::to_string(d.num_classes) + " classes, model '" +
                                           s.model + "' only " + std::to_string(outputs) +
                                           " outputs");
  }
  if (s.task == engine::Task::kRegression) {
    const int64_t targets = s.loss == engine::LossKind::kGaussianNll ? outputs / 2 : outputs;
    if (d.y.cols() != targets) {
      Fail(StatusCode::INVALID_ARGUMENT, "data set '" + dataset + "' has " +
                                             std::to_string(d.y.cols()) + " targets, model '" +
                                             s.model + "' predicts " + std::to_string(targets));
    }
  }
}

std::string ModeOf(v1::EvalMode m) { return m == v1::EVAL_MODE_MONTE_CARLO ? "monte_carlo" : "eval"; }

// Declared first in a call that allocates a lot (a training, a data set), it hands the memory the
// call freed back to the system after every other local is gone.
struct ReleaseFreeMemoryOnExit {
  ~ReleaseFreeMemoryOnExit() { ReleaseFreeMemory(); }
};

}  // namespace

// One log line per call: method, model, version, mode, status and latency (from the call's
// arrival, so a queued call's wait for a worker counts).
struct DropnetService::CallLog {
  const char* method;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::string model = "-", mode = "-";
  int64_t version = 0, rows = 0;
  int threads = 1;  // engine threads of a prediction call, chosen by Queue when it starts

  double ElapsedMs() const {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  }
  void Finish(const grpc::Status& status) const { Write(status, ElapsedMs()); }
  void Write(const grpc::Status& status, double ms) const {
    auto log = Logger("rpc");
    if (status.ok()) {
      log->info("{} model={} version={} mode={} rows={} status=OK {:.3f} ms", method, model,
                version, mode, rows, ms);
    } else {
      log->warn("{} model={} version={} mode={} rows={} status={} {:.3f} ms: {}", method, model,
                version, mode, rows, StatusCodeName(status.error_code()), ms,
                status.error_message());
    }
  }
};

DropnetService::DropnetService(Registry* registry, ServiceConfig config, const TokenAuth* auth)
    : registry_(registry),
      auth_(auth),
      config_(std::move(config)),
      executor_(config_.workers, config_.max_queued_calls) {}

void DropnetService::StartDraining() {
  draining_ = true;
  registry_->CancelAllTraining();
}

template <typename Body>
grpc::Status DropnetService::Run(const char* method, grpc::ServerContextBase* ctx, Role role,
                                 Body&& body, CallLog& log) {
  grpc::Status status;
  // Admin calls are the ones that write; a read-only replica refuses them.
  const bool mutates = role == Role::kAdmin;
  if (auth_ && !(status = auth_->Check(*ctx, role, method)).ok()) {
    // Refused before any work: nothing else to check.
  } else if (draining_) {
    status = grpc::Status(StatusCode::UNAVAILABLE, "the server is shutting down");
  } else if (mutates && config_.read_only) {
    status = grpc::Status(StatusCode::FAILED_PRECONDITION,
                          std::string(method) + " is refused: this server is a read-only replica");
  } else {
    try {
      status = body(log);
    } catch (...) {
      status = ToStatus(std::current_exception(), DeadlinePassed(ctx));
    }
  }
  return status;
}

template <typename Body>
grpc::Status DropnetService::Handle(const char* method, grpc::ServerContextBase* ctx, Role role,
                                    Body&& body) {
  CallLog log{method};
  const grpc::Status status = Run(method, ctx, role, std::forward<Body>(body), log);
  log.Finish(status);
  return status;
}

int DropnetService::ThreadsForCall(int64_t work, bool found_idle) const {
  // A small call splits only when it found the server idle (under load the cores are busy with
  // other calls already, and a split would take one from the next call) and the engine threads
  // are likely still spinning from the previous call (--spin-us): waking a sleeping one costs
  // more than it saves.
  if (work >= 0 && work <= kInlineWork) {
    return found_idle && engine::WorkerSpin() >= kSpinForSmallCalls
               ? config_.compute_threads
               : 1;
  }
  const int active = std::max(1, active_calls_.load(std::memory_order_relaxed));
  return std::max(1, config_.compute_threads / active);
}

int64_t DropnetService::EstimatedWork(const std::string& model, const std::vector<int64_t>& shape,
                                      int64_t samples) const {
  try {
    const int64_t rows = shape.empty() ? 0 : shape[0];
    return std::max<int64_t>(rows, 1) * registry_->Get(model)->net.ParameterCount() *
           std::max<int64_t>(samples, 1);
  } catch (const ServiceError&) {
    return 0;  // an unknown model: the answer is an error, found at once
  }
}

template <typename Body>
grpc::ServerUnaryReactor* DropnetService::Queue(const char* method,
                                                grpc::CallbackServerContext* ctx, Role role,
                                                int64_t work, Body body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto log = std::make_shared<CallLog>(CallLog{method});
  // Idle: no other prediction call in the server, and none answered in the last kIdleGap (calls
  // that follow one another closely are load, even when each is alone in turn).
  const auto now_ns = std::chrono::steady_clock::now().time_since_epoch().count();
  const bool idle = in_flight_.fetch_add(1, std::memory_order_relaxed) == 0 &&
                    now_ns - last_answer_ns_.load(std::memory_order_relaxed) >=
                        std::chrono::nanoseconds(kIdleGap).count();
  auto run = [this, method, ctx, role, reactor, log, work, idle,
              body = std::move(body)]() mutable {
    grpc::Status status;
    // A call that waited past its deadline, or whose client went away, is not computed.
    if (ctx->IsCancelled()) {
      status = grpc::Status(StatusCode::CANCELLED, "the call was cancelled while it waited");
    } else if (DeadlinePassed(ctx)) {
      status = grpc::Status(StatusCode::DEADLINE_EXCEEDED,
                            "the deadline passed while the call waited for a worker");
    } else {
      active_calls_.fetch_add(1, std::memory_order_relaxed);
      // The engine's workers start spinning now, while the call reads its inputs, instead of
      // being woken by its first product.
      log->threads = ThreadsForCall(work, idle);
      engine::WakeWorkers(log->threads);
      status = Run(method, ctx, role, body, *log);
      active_calls_.fetch_sub(1, std::memory_order_relaxed);
    }
    // The answer goes out first; the log line is written after it, off the call's latency.
    const double ms = log->ElapsedMs();
    last_answer_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                          std::memory_order_relaxed);
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    reactor->Finish(status);
    log->Write(status, ms);
  };
  // Some calls run here, on the gRPC thread that received it, because handing them to a worker
  // costs a thread wake-up (tens of microseconds where idle cores sleep) and a second one when
  // the answer goes out from a thread gRPC does not poll on:
  // - a small call (a row or a few through the network) while a worker is free: the hand-off
  //   would be of the order of its compute;
  // - a call of up to kInlineIdleWork that found the server idle: no other call waits for this
  //   thread. Calls that arrive meanwhile go to the workers, so for at most about half a
  //   millisecond one call more than --workers may compute.
  const bool small = work >= 0 && work <= kInlineWork &&
                     active_calls_.load(std::memory_order_relaxed) < executor_.workers();
  const bool alone = idle && work >= 0 && work <= kInlineIdleWork;
  if (small || alone) {
    run();
    return reactor;
  }
  if (!executor_.Submit(std::move(run))) {
    const grpc::Status busy(StatusCode::RESOURCE_EXHAUSTED,
                            "the server is busy: " + std::to_string(executor_.max_queued()) +
                                " calls already wait for a worker");
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    log->Finish(busy);
    reactor->Finish(busy);
  }
  return reactor;
}

// ---- Models ----

grpc::Status DropnetService::CreateModel(grpc::ServerContext* ctx,
                                         const v1::CreateModelRequest* req,
                                         v1::CreateModelResponse* resp) {
  return Handle("CreateModel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    if (!req->has_spec()) Fail(StatusCode::INVALID_ARGUMENT, "spec is required");
    auto snap = registry_->Create(req->name(), req->spec());
    log.version = snap->version;
    registry_->Describe(*snap, resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::GetModel(grpc::ServerContext* ctx, const v1::GetModelRequest* req,
                                      v1::GetModelResponse* resp) {
  return Handle("GetModel", ctx, Role::kPredict, [&](CallLog& log) {
    log.model = req->name();
    auto snap = registry_->Get(req->name());
    log.version = snap->version;
    registry_->Describe(*snap, resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                                        v1::ListModelsResponse* resp) {
  return Handle("ListModels", ctx, Role::kPredict, [&](CallLog&) {
    for (const auto& name : registry_->ModelNames()) {
      try {
        registry_->Describe(*registry_->Get(name), resp->add_models());
      } catch (const ServiceError&) {
        resp->mutable_models()->RemoveLast();  // deleted meanwhile
      }
    }
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::DeleteModel(grpc::ServerContext* ctx,
                                         const v1::DeleteModelRequest* req,
                                         v1::DeleteModelResponse*) {
  return Handle("DeleteModel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    registry_->Delete(req->name());
    return grpc::Status::OK;
  });
}

// ---- Data sets ----

grpc::Status DropnetService::UploadDataset(grpc::ServerContext* ctx,
                                           grpc::ServerReader<v1::UploadDatasetRequest>* reader,
                                           v1::UploadDatasetResponse* resp) {
  return Handle("UploadDataset", ctx, Role::kAdmin, [&](CallLog& log) {
    ReleaseFreeMemoryOnExit release;
    v1::UploadDatasetRequest msg;
    if (!reader->Read(&msg) || !msg.has_header()) {
      Fail(StatusCode::INVALID_ARGUMENT, "the first UploadDataset message must be a header");
    }
    const v1::DatasetHeader header = msg.header();
    CheckName("header.name", header.name());
    log.model = header.name();
    CheckTask("header.task", header.task());
    const engine::Task task = ToEngine(header.task());
    std::vector<float> features, targets;
    std::string csv;
    int64_t bytes = 0;
    bool rows_mode = false, csv_mode = false;
    while (reader->Read(&msg)) {
      if (msg.has_header()) Fail(StatusCode::INVALID_ARGUMENT, "only the first message may be a header");
      if (msg.has_rows()) {
        rows_mode = true;
        features.insert(features.end(), msg.rows().features().begin(), msg.rows().features().end());
        targets.insert(targets.end(), msg.rows().targets().begin(), msg.rows().targets().end());
        bytes += 4 * (msg.rows().features_size() + msg.rows().targets_size());
      } else if (msg.payload_case() == v1::UploadDatasetRequest::kCsvChunk) {
        csv_mode = true;
        csv += msg.csv_chunk();
        bytes += static_cast<int64_t>(msg.csv_chunk().size());
      }
      if (rows_mode && csv_mode) {
        Fail(StatusCode::INVALID_ARGUMENT, "an upload is either rows or CSV text, not both");
      }
      if (bytes > config_.max_dataset_bytes) {
        Fail(StatusCode::RESOURCE_EXHAUSTED, "the upload exceeds the server limit of " +
                                                 std::to_string(config_.max_dataset_bytes) +
                                                 " bytes");
      }
      if (ctx->IsCancelled()) Fail(StatusCode::CANCELLED, "the upload was cancelled");
    }
    engine::Dataset d;
    if (csv_mode) {
      std::istringstream in(csv);
      engine::CsvOptions options;
      options.target = header.target_column();
      options.task = task;
      d = engine::ReadCsv(in, options);
    } else {
      if (header.input_shape().empty()) {
        Fail(StatusCode::INVALID_ARGUMENT, "header.input_shape is required for row uploads");
      }
      for (int i = 0; i < header.input_shape_size(); ++i) {
        if (header.input_shape(i) <= 0) {
          Fail(StatusCode::INVALID_ARGUMENT, "header.input_shape[" + std::to_string(i) +
                                                 "] must be positive, got " +
                                                 std::to_string(header.input_shape(i)));
        }
        d.input_shape.dims.push_back(header.input_shape(i));
      }
      const int64_t width = d.input_shape.Size();
      const int64_t per_row = header.targets_per_row() == 0 ? 1 : header.targets_per_row();
      if (per_row < 0) Fail(StatusCode::INVALID_ARGUMENT, "header.targets_per_row must be positive");
      if (task == engine::Task::kClassification && per_row != 1) {
        Fail(StatusCode::INVALID_ARGUMENT, "classification needs targets_per_row 1 (a class index)");
      }
      if (features.empty()) Fail(StatusCode::INVALID_ARGUMENT, "the upload has no rows");
      if (static_cast<int64_t>(features.size()) % width != 0) {
        Fail(StatusCode::INVALID_ARGUMENT, std::to_string(features.size()) +
                                               " feature values are not a whole number of rows of " +
                                               std::to_string(width));
      }
      const int64_t rows = static_cast<int64_t>(features.size()) / width;
      if (static_cast<int64_t>(targets.size()) != rows * per_row) {
        Fail(StatusCode::INVALID_ARGUMENT, "the upload has " + std::to_string(rows) + " rows but " +
                                               std::to_string(targets.size()) + " target values (" +
                                               std::to_string(per_row) + " a row expected)");
      }
      d.task = task;
      v1::Tensor t;
      t.add_shape(rows);
      t.add_shape(width);
      t.mutable_values()->Add(features.begin(), features.end());
      d.x = FromTensor(t, width, "rows.features");
      t.Clear();
      t.add_shape(rows);
      t.add_shape(per_row);
      t.mutable_values()->Add(targets.begin(), targets.end());
      d.y = FromTensor(t, per_row, "rows.targets");
      if (task == engine::Task::kClassification) {
        float max_label = 0;
        for (int64_t r = 0; r < rows; ++r) {
          const float v = d.y(r, 0);
          if (v < 0 || v != std::floor(v) || v > 1e6) {
            Fail(StatusCode::INVALID_ARGUMENT, "rows.targets[" + std::to_string(r) +
                                                   "] must be a class index >= 0, got " +
                                                   std::to_string(v));
          }
          max_label = std::max(max_label, v);
        }
        d.num_classes = static_cast<int>(max_label) + 1;
      }
    }
    log.rows = d.rows();
    *resp->mutable_dataset() = registry_->PutDataset(header.name(), std::move(d), "upload",
                                                     header.overwrite());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::ImportDataset(grpc::ServerContext* ctx,
                                           const v1::ImportDatasetRequest* req,
                                           v1::ImportDatasetResponse* resp) {
  return Handle("ImportDataset", ctx, Role::kAdmin, [&](CallLog& log) {
    ReleaseFreeMemoryOnExit release;
    CheckName("name", req->name());
    log.model = req->name();
    CheckTask("task", req->task());
    if (req->limit() < 0) Fail(StatusCode::INVALID_ARGUMENT, "limit must be >= 0");
    if (config_.data_root.empty()) {
      Fail(StatusCode::FAILED_PRECONDITION, "ImportDataset is disabled: the server has no --data-root");
    }
    // Resolve symlinks and '..' on both sides, then require the file to stay under the root.
    auto resolve = [&](const std::string& rel, const char* field) {
      if (rel.empty()) Fail(StatusCode::INVALID_ARGUMENT, std::string(field) + " is required");
      if (rel.find('\0') != std::string::npos) {
        Fail(StatusCode::INVALID_ARGUMENT, std::string(field) + " must not contain a NUL byte");
      }
      fs::path p(rel);
      if (p.is_absolute()) {
        Fail(StatusCode::INVALID_ARGUMENT, std::string(field) + " '" + rel +
                                               "' must be relative to the data root");
      }
      std::error_code ec;
      const fs::path root = fs::weakly_canonical(config_.data_root, ec);
      const fs::path full = fs::weakly_canonical(root / p, ec);
      auto [r, f] = std::mismatch(root.begin(), root.end(), full.begin(), full.end());
      if (ec || r != root.end()) {
        Fail(StatusCode::PERMISSION_DENIED, std::string(field) + " '" + rel +
                                                "' leaves the data root");
      }
      if (!fs::is_regular_file(full)) {
        Fail(StatusCode::NOT_FOUND, std::string(field) + " '" + rel + "' is not a file under the data root");
      }
      return full;
    };
    const fs::path file = resolve(req->path(), "path");
    engine::Dataset d;
    const std::string name = file.filename().string();
    if (name.size() >= 4 && name.substr(name.size() - 4) == ".csv") {
      engine::CsvOptions options;
      options.target = req->target_column();
      options.task = ToEngine(req->task());
      d = engine::LoadCsv(file.string(), options);
    } else {
      if (req->label_path().empty()) {
        Fail(StatusCode::INVALID_ARGUMENT,
             "path '" + req->path() + "' is not a .csv file; an IDX import needs label_path");
      }
      d = engine::LoadIdx(file.string(), resolve(req->label_path(), "label_path").string());
    }
    if (req->limit() > 0 && req->limit() < d.rows()) {
      std::vector<int64_t> rows(req->limit());
      for (int64_t i = 0; i < req->limit(); ++i) rows[i] = i;
      d = engine::Subset(d, rows);
    }
    log.rows = d.rows();
    *resp->mutable_dataset() = registry_->PutDataset(req->name(), std::move(d), req->path(),
                                                     req->overwrite());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::ListDatasets(grpc::ServerContext* ctx, const v1::ListDatasetsRequest*,
                                          v1::ListDatasetsResponse* resp) {
  return Handle("ListDatasets", ctx, Role::kPredict, [&](CallLog&) {
    for (auto& info : registry_->ListDatasets()) *resp->add_datasets() = std::move(info);
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::DeleteDataset(grpc::ServerContext* ctx,
                                           const v1::DeleteDatasetRequest* req,
                                           v1::DeleteDatasetResponse*) {
  return Handle("DeleteDataset", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    registry_->DeleteDataset(req->name());
    return grpc::Status::OK;
  });
}

// ---- Training ----

grpc::Status DropnetService::RunTraining(const v1::TrainRequest& req, const TrainSink& sink,
                                         const std::function<bool()>& stop) {
  ReleaseFreeMemoryOnExit release;  // the private network, optimizer state and rows, once freed
  auto start_snap = registry_->Get(req.model());
  const auto data_entry = registry_->GetDataset(req.dataset());
  const engine::Dataset& data = *data_entry.data;
  CheckDataFits(*start_snap, data, req.dataset());

  engine::TrainOptions o;
  o.epochs = req.epochs() == 0 ? 10 : req.epochs();
  o.batch_size = req.batch_size() == 0 ? 128 : req.batch_size();
  switch (req.optimizer()) {
    case v1::OPTIMIZER_SGD: o.optimizer.type = engine::OptimizerKind::kSgd; break;
    case v1::OPTIMIZER_ADAMW: o.optimizer.type = engine::OptimizerKind::kAdamW; break;
    case v1::OPTIMIZER_UNSPECIFIED:
    case v1::OPTIMIZER_ADAM: o.optimizer.type = engine::OptimizerKind::kAdam; break;
    default: Fail(StatusCode::INVALID_ARGUMENT, "optimizer " + std::to_string(req.optimizer()) + " is unknown");
  }
  o.optimizer.learning_rate =
      req.learning_rate() != 0 ? req.learning_rate()
                               : (o.optimizer.type == engine::OptimizerKind::kSgd ? 0.01 : 1e-3);
  if (req.has_momentum()) o.optimizer.momentum = req.momentum();
  o.optimizer.nesterov = req.nesterov();
  o.optimizer.weight_decay = req.weight_decay();
  o.max_norm = req.max_norm();
  o.validation_split = req.validation_split();
  o.early_stopping_patience = req.early_stopping_patience();
  o.seed = req.seed();
  o.threads = config_.compute_threads;
  switch (req.schedule()) {
    case v1::SCHEDULE_STEP: o.schedule.type = engine::ScheduleKind::kStep; break;
    case v1::SCHEDULE_COSINE: o.schedule.type = engine::ScheduleKind::kCosine; break;
    case v1::SCHEDULE_UNSPECIFIED:
    case v1::SCHEDULE_CONSTANT: o.schedule.type = engine::ScheduleKind::kConstant; break;
    default: Fail(StatusCode::INVALID_ARGUMENT, "schedule " + std::to_string(req.schedule()) + " is unknown");
  }
  if (req.schedule_step_epochs() != 0) o.schedule.step_epochs = req.schedule_step_epochs();
  if (req.schedule_gamma() != 0) o.schedule.gamma = req.schedule_gamma();
  if (req.report_every_steps() < 0) {
    Fail(StatusCode::INVALID_ARGUMENT, "report_every_steps must be >= 0");
  }
  engine::CheckTrainOptions(o);

  auto lease = registry_->BeginTraining(req.model(), config_.max_concurrent_trainings);
  // Take the model again under the lease: nothing can publish between here and the end.
  const SnapshotPtr base = registry_->Get(req.model());
  o.first_step = base->steps;
  engine::Network net = base->net;  // the private copy that trains
  engine::Standardizer standardizer = base->standardizer;
  std::shared_ptr<const engine::Dataset> train_data = data_entry.data;
  if (req.standardize()) {
    engine::Dataset fit_rows, unused;
    engine::TrainValidationSplit(data, o, &fit_rows, &unused);
    standardizer = engine::Standardizer::Fit(fit_rows.x);
  }
  if (!standardizer.empty()) {
    auto copy = std::make_shared<engine::Dataset>(data);
    standardizer.Apply(&copy->x);
    train_data = copy;
  }

  std::vector<v1::EpochRecord> history = base->history;
  int64_t published_version = base->version;
  int64_t published_steps = 0;
  // Publishes n as the next version; an epoch's record gets that version number too.
  auto publish = [&](const engine::Network& n, int64_t run_steps, const std::string& note,
                     bool epoch_record = false) {
    auto next = std::make_shared<Snapshot>(n);
    next->model = base->model;
    next->spec = base->spec;
    next->task = base->task;
    next->loss = base->loss;
    next->tau = base->tau;
    next->standardizer = standardizer;
    next->steps = base->steps + run_steps;
    next->history = history;
    next->note = note;
    published_version =
        lease
            ->Publish(std::move(next),
                      [&](Snapshot& s) {
                        if (epoch_record) {
                          s.history.back().set_version(s.version);
                          history.back().set_version(s.version);
                        }
                      })
            ->version;
    published_steps = run_steps;
    return published_version;
  };

  const auto run_start = std::chrono::steady_clock::now();
  auto event = [&](v1::TrainEvent::Kind kind, const engine::TrainProgress& p) {
    v1::TrainEvent e;
    e.set_kind(kind);
    e.set_epoch(p.epoch);
    e.set_epochs(o.epochs);
    e.set_step(p.step);
    e.set_total_steps(p.total_steps);
    e.set_loss(p.loss);
    e.set_metric(p.metric);
    e.set_val_loss(p.val_loss);
    e.set_val_metric(p.val_metric);
    e.set_samples_per_second(p.samples_per_second);
    e.set_learning_rate(p.learning_rate);
    e.set_version(published_version);
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
    if (p.step > 0) {
      e.set_eta_seconds(elapsed / static_cast<double>(p.step) *
                        static_cast<double>(p.total_steps - p.step));
    }
    return e;
  };

  std::atomic<bool>& cancel = lease->cancel();
  engine::TrainProgress start;
  start.epochs = o.epochs;
  {
    const int64_t n = static_cast<int64_t>(std::llround(
        static_cast<double>(data.rows()) * (1.0 - o.validation_split)));
    const int64_t batch = std::min<int64_t>(o.batch_size, std::max<int64_t>(n, 1));
    start.total_steps = (n + batch - 1) / batch * o.epochs;
  }
  if (!sink(event(v1::TrainEvent::KIND_STARTED, start))) cancel = true;
  auto train_log = Logger("train");
  train_log->info("model {} training on '{}' from version {}: {} epochs, batch {}, {} lr {}",
                  req.model(), req.dataset(), base->version, o.epochs, o.batch_size,
                  engine::OptimizerName(o.optimizer.type), o.optimizer.learning_rate);

  engine::TrainResult result;
  try {
    result = engine::Train(
        &net, base->task, base->loss, *train_data, o,
        [&](const engine::TrainProgress& p, const engine::Network& current) {
          if (stop()) cancel = true;
          if (p.end_of_epoch) {
            v1::EpochRecord rec;
            rec.set_epoch(static_cast<int32_t>(history.size()) + 1);
            rec.set_loss(p.loss);
            rec.set_metric(p.metric);
            rec.set_val_loss(p.val_loss);
            rec.set_val_metric(p.val_metric);
            rec.set_samples_per_second(p.samples_per_second);
            rec.set_dataset(req.dataset());
            history.push_back(rec);
            publish(current, p.step, "epoch " + std::to_string(rec.epoch()), true);
            train_log->info("model {} epoch {}/{} loss {:.4f} metric {:.4f} -> version {}",
                            req.model(), p.epoch, p.epochs, p.loss, p.metric, published_version);
            if (!sink(event(v1::TrainEvent::KIND_EPOCH, p))) cancel = true;
          } else if (req.report_every_steps() > 0 && p.step % req.report_every_steps() == 0) {
            if (!sink(event(v1::TrainEvent::KIND_STEP, p))) cancel = true;
          }
        },
        &cancel);
  } catch (const ServiceError& e) {
    // A failed save leaves the previous version served; say which.
    throw ServiceError(e.code(), std::string(e.what()) + "; version " +
                                     std::to_string(published_version) + " is still served");
  }

  if (result.cancelled) {
    if (draining_) {
      // Shutting down: keep the work of the unfinished epoch as a version of its own (when a
      // step ran since the last epoch), and say UNAVAILABLE even at an epoch boundary.
      if (result.steps > published_steps) {
        publish(net, result.steps, "interrupted at step " + std::to_string(result.steps));
      }
      train_log->info("model {} training interrupted by shutdown, saved as version {}",
                      req.model(), published_version);
      return grpc::Status(StatusCode::UNAVAILABLE,
                          "the server is shutting down; training saved as version " +
                              std::to_string(published_version));
    }
    train_log->info("model {} training cancelled, version {} kept", req.model(), published_version);
    return grpc::Status(StatusCode::CANCELLED,
                        "training cancelled; version " + std::to_string(published_version) + " kept");
  }
  if (result.early_stopped) {
    publish(net, result.steps,
            "early stopping: epoch " + std::to_string(result.best_epoch) + " of the run restored");
  }
  engine::TrainProgress last = result.history.empty() ? start : result.history.back();
  v1::TrainEvent done = event(v1::TrainEvent::KIND_FINISHED, last);
  done.set_early_stopped(result.early_stopped);
  done.set_eta_seconds(0);
  sink(done);
  return grpc::Status::OK;
}

grpc::Status DropnetService::Train(grpc::ServerContext* ctx, const v1::TrainRequest* req,
                                   grpc::ServerWriter<v1::TrainEvent>* writer) {
  return Handle("Train", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->model();
    log.mode = "train";
    grpc::Status s = RunTraining(
        *req, [&](const v1::TrainEvent& e) {
          log.version = e.version();
          return writer->Write(e);
        },
        [&] { return ctx->IsCancelled() || draining_.load(); });
    return s;
  });
}

// ---- Prediction ----

grpc::ServerUnaryReactor* DropnetService::Predict(grpc::CallbackServerContext* ctx,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  auto call = std::make_shared<WireCall<v1::PredictRequest, v1::PredictResponse>>();
  call->parsed = ParseRequest(*request, &call->request, &call->inputs);
  const int64_t work = EstimatedWork(call->request.model(), call->inputs.shape, 1);
  return Queue("Predict", ctx, Role::kPredict, work, [this, call, response](CallLog& log) {
    call->CheckParsed();
    const v1::PredictRequest* req = &call->request;
    v1::PredictResponse* resp = &call->response;
    log.model = req->model();
    log.mode = "eval";
    SnapshotPtr snap = registry_->Get(req->model());
    log.version = snap->version;
    Matrix x = ReadInputs(*snap, call->inputs, config_.max_batch_rows);
    log.rows = x.rows();
    Matrix var;
    Matrix out = engine::PredictEval(snap->net, snap->task, snap->loss, x, log.threads,
                                     nullptr, nullptr, &var);
    ToTensor(out, resp->mutable_outputs());
    if (var.size()) ToTensor(var, resp->mutable_variances());
    resp->set_version(snap->version);
    resp->set_task(ToProto(snap->task));
    if (snap->task == engine::Task::kClassification) {
      for (int64_t r = 0; r < out.rows(); ++r) {
        Eigen::Index arg;
        out.row(r).maxCoeff(&arg);
        resp->add_predicted_class(static_cast<int32_t>(arg));
      }
    }
    return SerializeResponse(*resp, response);
  });
}

grpc::ServerUnaryReactor* DropnetService::PredictUncertainty(grpc::CallbackServerContext* ctx,
                                                             const grpc::ByteBuffer* request,
                                                             grpc::ByteBuffer* response) {
  auto call =
      std::make_shared<WireCall<v1::PredictUncertaintyRequest, v1::PredictUncertaintyResponse>>();
  call->parsed = ParseRequest(*request, &call->request, &call->inputs);
  const int samples = call->request.samples();
  const int64_t work = EstimatedWork(call->request.model(), call->inputs.shape,
                                     samples > 0 ? samples : config_.default_samples);
  return Queue("PredictUncertainty", ctx, Role::kPredict, work,
               [this, ctx, call, response](CallLog& log) {
    call->CheckParsed();
    const v1::PredictUncertaintyRequest* req = &call->request;
    v1::PredictUncertaintyResponse* resp = &call->response;
    log.model = req->model();
    log.mode = "monte_carlo";
    SnapshotPtr snap = registry_->Get(req->model());
    log.version = snap->version;
    engine::McOptions mo;
    mo.samples = ResolveSamples(req->samples(), config_.default_samples, config_.max_samples);
    if (req->interval() != 0) mo.interval = req->interval();
    if (!(mo.interval > 0 && mo.interval < 1)) {
      Fail(StatusCode::INVALID_ARGUMENT, "interval must be in (0, 1), got " + std::to_string(mo.interval));
    }
    Matrix x = ReadInputs(*snap, call->inputs, config_.max_batch_rows);
    log.rows = x.rows();
    const int64_t outputs = snap->net.output_shape().Size();
    if (req->return_samples() &&
        static_cast<int64_t>(mo.samples) * x.rows() * outputs > config_.max_returned_samples) {
      Fail(StatusCode::RESOURCE_EXHAUSTED,
           "return_samples would send " + std::to_string(mo.samples * x.rows() * outputs) +
               " values, the limit is " + std::to_string(config_.max_returned_samples));
    }
    mo.seed = req->has_seed() ? req->seed() : FreshSeed();
    mo.threads = log.threads;
    mo.memory_budget_bytes = config_.mc_memory_budget_bytes;
    mo.keep_samples = req->return_samples();
    mo.tau = snap->tau;
    mo.should_stop = [&] { return ctx->IsCancelled() || DeadlinePassed(ctx) || draining_.load(); };
    auto r = engine::MonteCarloPredict(snap->net, snap->task, snap->loss, x, mo);
    ToTensor(r.mean, resp->mutable_mean());
    ToTensor(r.stddev, resp->mutable_stddev());
    if (snap->task == engine::Task::kClassification) {
      auto add = [](const Eigen::VectorXf& v, google::protobuf::RepeatedField<float>* out) {
        out->Add(v.data(), v.data() + v.size());
      };
      add(r.predictive_entropy, resp->mutable_predictive_entropy());
      add(r.expected_entropy, resp->mutable_expected_entropy());
      add(r.mutual_information, resp->mutable_mutual_information());
      add(r.variation_ratio, resp->mutable_variation_ratio());
      resp->mutable_predicted_class()->Add(r.predicted_class.begin(), r.predicted_class.end());
    } else {
      ToTensor(r.total_variance, resp->mutable_total_variance());
      ToTensor(r.lower, resp->mutable_lower());
      ToTensor(r.upper, resp->mutable_upper());
    }
    if (req->return_samples()) {
      auto* t = resp->mutable_samples();
      const int64_t cols = r.sample_outputs.empty() ? 0 : r.sample_outputs[0].cols();
      t->add_shape(mo.samples);
      t->add_shape(x.rows());
      t->add_shape(cols);
      for (const auto& m : r.sample_outputs) t->mutable_values()->Add(m.data(), m.data() + m.size());
    }
    resp->set_num_samples(mo.samples);
    resp->set_seed(mo.seed);
    resp->set_version(snap->version);
    resp->set_task(ToProto(snap->task));
    return SerializeResponse(*resp, response);
  });
}

grpc::ServerUnaryReactor* DropnetService::Evaluate(grpc::CallbackServerContext* ctx,
                                                   const v1::EvaluateRequest* req,
                                                   v1::EvaluateResponse* resp) {
  return Queue("Evaluate", ctx, Role::kPredict, /*work=*/-1, [this, ctx, req, resp](CallLog& log) {
    ReleaseFreeMemoryOnExit release;  // the data set's rows and the outputs, once freed
    log.model = req->model();
    log.mode = ModeOf(req->mode());
    SnapshotPtr snap = registry_->Get(req->model());
    log.version = snap->version;
    const auto entry = registry_->GetDataset(req->dataset());
    CheckDataFits(*snap, *entry.data, req->dataset());
    if (req->limit() < 0) Fail(StatusCode::INVALID_ARGUMENT, "limit must be >= 0");
    if (req->mode() != v1::EVAL_MODE_UNSPECIFIED && req->mode() != v1::EVAL_MODE_EVAL &&
        req->mode() != v1::EVAL_MODE_MONTE_CARLO) {
      Fail(StatusCode::INVALID_ARGUMENT, "mode " + std::to_string(req->mode()) + " is unknown");
    }
    const int64_t rows = req->limit() > 0 ? std::min(req->limit(), entry.data->rows())
                                          : entry.data->rows();
    Matrix x = entry.data->x.topRows(rows);
    const Matrix y = entry.data->y.topRows(rows);
    snap->standardizer.Apply(&x);
    log.rows = rows;
    const bool classify = snap->task == engine::Task::kClassification;
    Matrix mean, var;
    double ll_sum = 0;
    const bool mc = req->mode() == v1::EVAL_MODE_MONTE_CARLO;
    if (!mc) {
      mean = engine::PredictEval(snap->net, snap->task, snap->loss, x, log.threads,
                                 nullptr, nullptr, &var);
    } else {
      engine::McOptions mo;
      mo.samples = ResolveSamples(req->samples(), config_.default_samples, config_.max_samples);
      mo.seed = req->has_seed() ? req->seed() : FreshSeed();
      mo.threads = log.threads;
      mo.memory_budget_bytes = config_.mc_memory_budget_bytes;
      mo.tau = snap->tau;
      mo.should_stop = [&] { return ctx->IsCancelled() || DeadlinePassed(ctx) || draining_.load(); };
      const bool want_ll = !classify && (snap->tau > 0 || snap->loss == engine::LossKind::kGaussianNll);
      constexpr int64_t kBatch = 256;
      for (int64_t r0 = 0; r0 < rows; r0 += kBatch) {
        const int64_t n = std::min(kBatch, rows - r0);
        const Matrix yb = y.middleRows(r0, n);
        mo.targets = want_ll ? &yb : nullptr;
        auto r = engine::MonteCarloPredict(snap->net, snap->task, snap->loss, x.middleRows(r0, n), mo);
        if (r0 == 0) mean.resize(rows, r.mean.cols());
        mean.middleRows(r0, n) = r.mean;
        if (want_ll) ll_sum += r.log_likelihood.sum();
      }
      resp->set_samples(mo.samples);
      resp->set_seed(mo.seed);
      if (want_ll) resp->set_log_likelihood(ll_sum / static_cast<double>(rows * y.cols()));
      else if (!classify) resp->set_log_likelihood(std::nan(""));
    }
    if (classify) {
      auto m = engine::ScoreClassification(mean, y);
      resp->set_accuracy(m.accuracy);
      resp->set_nll(m.nll);
      resp->set_brier(m.brier);
      resp->set_ece(m.ece);
    } else {
      auto m = engine::ScoreRegression(mean, y, var, snap->tau);
      resp->set_rmse(m.rmse);
      if (!mc) resp->set_log_likelihood(m.log_likelihood);
    }
    resp->set_rows(rows);
    resp->set_version(snap->version);
    resp->set_mode(mc ? v1::EVAL_MODE_MONTE_CARLO : v1::EVAL_MODE_EVAL);
    resp->set_task(ToProto(snap->task));
    return grpc::Status::OK;
  });
}

}  // namespace dropnet::service
