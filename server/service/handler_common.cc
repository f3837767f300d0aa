#include "server/service/handler_common.h"

#include <algorithm>
#include <string>

namespace dropnet::service {

using grpc::StatusCode;

std::shared_ptr<spdlog::logger> Logger(const char* name) {
  auto l = spdlog::get(name);
  return l ? l : spdlog::default_logger();
}

grpc::Status BoundedMessage(const grpc::Status& status) {
  if (status.error_message().size() <= kMaxErrorMessageChars) return status;
  return grpc::Status(status.error_code(),
                      status.error_message().substr(0, kMaxErrorMessageChars) + "...",
                      status.error_details());
}

bool DeadlinePassed(const grpc::ServerContextBase* ctx) {
  return ctx && ctx->deadline() <= std::chrono::system_clock::now();
}

void ForEachBatch(const char* method, int64_t rows, int64_t batch,
                  const std::function<bool()>& stop_asked, const std::atomic<bool>* draining,
                  const std::function<void(int64_t first, int64_t n)>& body,
                  const std::function<void(int64_t rows_done)>& progress) {
  for (int64_t first = 0; first < rows; first += batch) {
    if (stop_asked()) {
      throw engine::Cancelled(std::string(method) + " stopped after " + std::to_string(first) +
                              " of " + std::to_string(rows) +
                              " rows: the call was cancelled or its deadline passed");
    }
    if (draining && *draining) Fail(StatusCode::UNAVAILABLE, "the server is shutting down");
    const int64_t n = std::min(batch, rows - first);
    body(first, n);
    if (progress) progress(first + n);
  }
}

void CheckDataFits(const Snapshot& s, const engine::Dataset& d, const std::string& dataset) {
  if (d.x.cols() != s.net.input_shape().Size()) {
    Fail(StatusCode::INVALID_ARGUMENT, "data set '" + dataset + "' has " +
                                           std::to_string(d.x.cols()) +
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
    Fail(StatusCode::INVALID_ARGUMENT,
         "data set '" + dataset + "' has " + std::to_string(d.num_classes) + " classes, model '" +
             s.model + "' only " + std::to_string(outputs) + " outputs");
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

void DropnetService::CallLog::Write(const grpc::Status& status, double ms) const {
  if (metrics) metrics->ObserveCall(method, model, status.error_code(), ms / 1000.0, samples);
  auto log = Logger("rpc");
  // The model name is the caller's: bounded and escaped like everything it can put in a line.
  const std::string shown_model = Printable(model);
  if (status.ok()) {
    log->info("{} model={} version={} mode={} rows={} status=OK {:.3f} ms", method, shown_model,
              version, mode, rows, ms);
  } else {
    log->warn("{} model={} version={} mode={} rows={} status={} {:.3f} ms: {}", method, shown_model,
              version, mode, rows, StatusCodeName(status.error_code()), ms,
              Printable(status.error_message(), kMaxErrorMessageChars));
  }
}

}  // namespace dropnet::service
