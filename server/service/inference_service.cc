#include "server/service/inference_service.h"

#include <utility>

#include "server/service/handler_common.h"
#include "server/service/inference_convert.h"
#include "server/service/prediction.h"

namespace dropnet::service {

using grpc::StatusCode;

InferenceService::InferenceService(DropnetService* core, Registry* registry,
                                   std::function<bool()> ready)
    : core_(core), registry_(registry), ready_(std::move(ready)) {}

grpc::Status InferenceService::ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                                          inference::ServerLiveResponse* resp) {
  resp->set_live(true);
  return grpc::Status::OK;
}

grpc::Status InferenceService::ServerReady(grpc::ServerContext*,
                                           const inference::ServerReadyRequest*,
                                           inference::ServerReadyResponse* resp) {
  resp->set_ready(ready());
  return grpc::Status::OK;
}

void InferenceService::ServerMetadataSync(inference::ServerMetadataResponse* resp) {
  resp->set_name("dropnet");
  resp->set_version(DROPNET_VERSION);
  // dropnet's own: Monte-Carlo dropout through the mc_samples, seed and interval parameters.
  resp->add_extensions("mc_dropout");
}

bool InferenceService::ModelReadySync(const std::string& name, const std::string& version) const {
  if (!ready()) return false;
  try {
    ResolveModelVersion(*registry_, name, version);
    return true;
  } catch (const ServiceError&) {
    return false;
  }
}

grpc::Status InferenceService::ModelMetadataSync(const inference::ModelMetadataRequest& req,
                                                 inference::ModelMetadataResponse* resp) const {
  try {
    DescribeModel(*ResolveModelVersion(*registry_, req.name(), req.version()),
                  core_->config_.default_samples, resp);
    return grpc::Status::OK;
  } catch (...) {
    return BoundedMessage(ToStatus(std::current_exception()));
  }
}

grpc::Status InferenceService::ServerMetadata(grpc::ServerContext* ctx,
                                              const inference::ServerMetadataRequest*,
                                              inference::ServerMetadataResponse* resp) {
  return core_->Handle("ServerMetadata", ctx, Role::kPredict, [&](DropnetService::CallLog&) {
    ServerMetadataSync(resp);
    return grpc::Status::OK;
  });
}

grpc::Status InferenceService::ModelReady(grpc::ServerContext* ctx,
                                          const inference::ModelReadyRequest* req,
                                          inference::ModelReadyResponse* resp) {
  return core_->Handle("ModelReady", ctx, Role::kPredict, [&](DropnetService::CallLog& log) {
    log.model = req->name();
    // An unknown model is NOT_FOUND, as ModelMetadata answers; a known one is ready or not.
    registry_->Get(req->name());
    resp->set_ready(ModelReadySync(req->name(), req->version()));
    return grpc::Status::OK;
  });
}

grpc::Status InferenceService::ModelMetadata(grpc::ServerContext* ctx,
                                             const inference::ModelMetadataRequest* req,
                                             inference::ModelMetadataResponse* resp) {
  return core_->Handle("ModelMetadata", ctx, Role::kPredict, [&](DropnetService::CallLog& log) {
    log.model = req->name();
    return ModelMetadataSync(*req, resp);
  });
}

int64_t InferenceService::Work(const inference::ModelInferRequest& req) const {
  if (req.inputs_size() != 1) return 0;  // an error, found at once
  const auto& shape = req.inputs(0).shape();
  int64_t samples = 1;
  if (auto it = req.parameters().find("mc_samples"); it != req.parameters().end()) {
    samples = std::max<int64_t>(1, it->second.int64_param());
  }
  return EstimatedWork(*registry_, req.model_name(), {shape.begin(), shape.end()}, samples);
}

grpc::Status InferenceService::Infer(const inference::ModelInferRequest& req,
                                     inference::ModelInferResponse* resp, int threads,
                                     const std::function<bool()>& should_stop, std::string* model,
                                     int64_t* version, int64_t* rows) const {
  *model = req.model_name();
  SnapshotPtr snap = ResolveModelVersion(*registry_, req.model_name(), req.model_version());
  *version = snap->version;
  const InferPlan plan = ReadInferRequest(req, *snap);
  const Prediction p =
      RunPrediction(*snap, plan.inputs, plan.query, core_->config_, threads, should_stop);
  *rows = p.rows;
  WriteInferResponse(req, plan, *snap, p, resp);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(grpc::CallbackServerContext* ctx,
                                                       const inference::ModelInferRequest* req,
                                                       inference::ModelInferResponse* resp) {
  return core_->Queue("ModelInfer", ctx, Role::kPredict, Work(*req),
                      [this, ctx, req, resp](DropnetService::CallLog& log) {
                        log.mode = req->parameters().count("mc_samples") ? "monte_carlo" : "eval";
                        return Infer(
                            *req, resp, log.threads,
                            [ctx] { return ctx->IsCancelled() || DeadlinePassed(ctx); }, &log.model,
                            &log.version, &log.rows);
                      });
}

grpc::Status InferenceService::InferSync(const inference::ModelInferRequest& req,
                                         inference::ModelInferResponse* resp) {
  return core_->RunQueued(
      "ModelInfer(HTTP)", Work(req), [&](int threads, DropnetService::CallLog& log) {
        log.mode = req.parameters().count("mc_samples") ? "monte_carlo" : "eval";
        return Infer(req, resp, threads, nullptr, &log.model, &log.version, &log.rows);
      });
}

}  // namespace dropnet::service
