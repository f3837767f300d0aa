// What the files that define the Dropnet service's calls share: the call's log line, the wrapper
// every handler runs through (DropnetService::Run, Handle and Queue), and the checks and helpers
// more than one of them uses. Only those files (service.cc, dataset_handlers.cc, training_job.cc,
// rank_handler.cc, evaluate_handler.cc, inference_service.cc) include it.
#ifndef DROPNET_SERVICE_HANDLER_COMMON_H_
#define DROPNET_SERVICE_HANDLER_COMMON_H_

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

#include "server/engine/data.h"
#include "server/service/memory.h"
#include "server/service/metrics_registry.h"
#include "server/service/service.h"
#include "server/service/snapshot.h"
#include "server/service/status.h"

namespace dropnet::service {

// The component logger `name`, or the default logger before SetUpLogging.
std::shared_ptr<spdlog::logger> Logger(const char* name);

bool DeadlinePassed(const grpc::ServerContextBase* ctx);

// Throws INVALID_ARGUMENT unless the rows of data set `dataset` fit the model of `s`: as many
// features as its inputs, its task, no more classes than its outputs, as many targets as it
// predicts.
void CheckDataFits(const Snapshot& s, const engine::Dataset& d, const std::string& dataset);

// The batch loop of the calls that compute over the rows of a stored data set (RankDataset,
// Evaluate, EvaluateStream): `body(first, n)` for rows [first, first + n) of `rows`, in consecutive
// batches of `batch` rows, then `progress(rows_done)` (may be empty) after each batch. Before each
// batch it throws engine::Cancelled, naming `method` and the rows done, when `stop_asked()`
// answers true, and UNAVAILABLE once `*draining` is set (null: the call runs on through the
// server's shutdown grace period, until it ends or the server cancels it).
void ForEachBatch(const char* method, int64_t rows, int64_t batch,
                  const std::function<bool()>& stop_asked, const std::atomic<bool>* draining,
                  const std::function<void(int64_t first, int64_t n)>& body,
                  const std::function<void(int64_t rows_done)>& progress);

// Declared first in a call that allocates a lot (a training, a data set), it hands the memory the
// call freed back to the system after every other local is gone.
struct ReleaseFreeMemoryOnExit {
  ~ReleaseFreeMemoryOnExit() { ReleaseFreeMemory(); }
};

// One log line per call: method, model, version, mode, status and latency (from the call's
// arrival, so a queued call's wait for a worker counts), and the call's metrics
// (metrics_registry.h) when the service keeps them.
struct DropnetService::CallLog {
  const char* method;
  ServiceMetrics* metrics = nullptr;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::string model = "-", mode = "-";
  int64_t version = 0, rows = 0;
  int threads = 1;  // engine threads of a prediction call, chosen by Queue when it starts
  int samples = 0;  // Monte-Carlo T of a Monte-Carlo call

  double ElapsedMs() const {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  }
  void Finish(const grpc::Status& status) const { Write(status, ElapsedMs()); }
  void Write(const grpc::Status& status, double ms) const;
};

template <typename Body>
grpc::Status DropnetService::Run(const char* method, grpc::ServerContextBase* ctx, Role role,
                                 Body&& body, CallLog& log) {
  grpc::Status status;
  // Admin calls are the ones that write; a read-only replica refuses them.
  const bool mutates = role == Role::kAdmin;
  if (auth_ && !(status = auth_->Check(*ctx, role, method)).ok()) {
    // Refused before any work: nothing else to check.
  } else if (draining_) {
    status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  } else if (mutates && config_.read_only) {
    status = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
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
  CallLog log{method, metrics_};
  sync_in_flight_.fetch_add(1, std::memory_order_relaxed);
  const grpc::Status status = BoundedMessage(Run(method, ctx, role, std::forward<Body>(body), log));
  sync_in_flight_.fetch_sub(1, std::memory_order_relaxed);
  log.Finish(status);
  return status;
}

// Defined here, not in service.cc, for inference_service.cc's ModelInfer too.
template <typename Body>
grpc::ServerUnaryReactor* DropnetService::Queue(const char* method,
                                                grpc::CallbackServerContext* ctx, Role role,
                                                int64_t work, Body body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto log = std::make_shared<CallLog>(CallLog{method, metrics_});
  auto run = [this, method, ctx, role, reactor, log,
              body = std::move(body)](const ScheduledCall& call) mutable {
    grpc::Status status;
    // A call that waited past its deadline, or whose client went away, is not computed.
    if (ctx->IsCancelled()) {
      status = grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled while it waited");
    } else if (DeadlinePassed(ctx)) {
      status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                            "the deadline passed while the call waited for a worker");
    } else {
      log->threads = scheduler_.BeginCompute(call);
      status = BoundedMessage(Run(method, ctx, role, body, *log));
      scheduler_.EndCompute();
    }
    // The answer goes out first; the log line is written after it, off the call's latency.
    const double ms = log->ElapsedMs();
    scheduler_.Answered();
    reactor->Finish(status);
    log->Write(status, ms);
  };
  if (!scheduler_.Schedule(work, std::move(run))) {
    const grpc::Status busy(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "the server is busy: " + std::to_string(scheduler_.max_queued()) +
                                " calls already wait for a worker");
    log->Finish(busy);
    reactor->Finish(busy);
  }
  return reactor;
}

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_HANDLER_COMMON_H_
