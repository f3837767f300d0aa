// The Open Inference Protocol's gRPC service, inference.GRPCInferenceService (KServe v2), on the
// same port as dropnet.v1 and thin over the same core: ModelInfer runs through dropnet.v1's
// call wrapper and CallScheduler (service.h, executor.h) and computes with RunPrediction
// (prediction.h), so a request answers with the numbers dropnet.v1's Predict or
// PredictUncertainty give for the same inputs and seed. The same bearer tokens apply: ModelInfer,
// ModelReady, ModelMetadata and ServerMetadata need the predict role; ServerLive and ServerReady
// are open, as grpc.health.v1 is, for probes.
//
// The HTTP port's REST routes (server/http/oip_routes.h) call the *Sync methods with the same
// messages after checking the token themselves.
#ifndef DROPNET_SERVICE_INFERENCE_SERVICE_H_
#define DROPNET_SERVICE_INFERENCE_SERVICE_H_

#include <functional>
#include <string>

#include "inference/grpc_predict_v2.grpc.pb.h"
#include "server/service/registry.h"
#include "server/service/service.h"

namespace dropnet::service {

// ModelInfer through the callback API, the rest synchronous.
using InferenceServiceBase = inference::GRPCInferenceService::WithCallbackMethod_ModelInfer<
    inference::GRPCInferenceService::Service>;

class InferenceService final : public InferenceServiceBase {
 public:
  // `core` and `registry` must outlive the service; `ready` says whether the server is ready
  // (false while it drains).
  InferenceService(DropnetService* core, Registry* registry, std::function<bool()> ready);

  grpc::Status ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                          inference::ServerLiveResponse*) override;
  grpc::Status ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse*) override;
  grpc::Status ModelReady(grpc::ServerContext*, const inference::ModelReadyRequest*,
                          inference::ModelReadyResponse*) override;
  grpc::Status ServerMetadata(grpc::ServerContext*, const inference::ServerMetadataRequest*,
                              inference::ServerMetadataResponse*) override;
  grpc::Status ModelMetadata(grpc::ServerContext*, const inference::ModelMetadataRequest*,
                             inference::ModelMetadataResponse*) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext*,
                                       const inference::ModelInferRequest*,
                                       inference::ModelInferResponse*) override;

  // For another transport whose caller checked the token (the HTTP port). InferSync waits for
  // its turn in the scheduler.
  bool ready() const { return ready_(); }
  static void ServerMetadataSync(inference::ServerMetadataResponse* resp);
  bool ModelReadySync(const std::string& name, const std::string& version) const;
  grpc::Status ModelMetadataSync(const inference::ModelMetadataRequest& req,
                                 inference::ModelMetadataResponse* resp) const;
  grpc::Status InferSync(const inference::ModelInferRequest& req,
                         inference::ModelInferResponse* resp);

 private:
  // The body of a ModelInfer call, whichever transport: resolve, read, compute, answer.
  grpc::Status Infer(const inference::ModelInferRequest& req, inference::ModelInferResponse* resp,
                     int threads, const std::function<bool()>& should_stop, std::string* model,
                     int64_t* version, int64_t* rows) const;
  int64_t Work(const inference::ModelInferRequest& req) const;

  DropnetService* core_;
  Registry* registry_;
  std::function<bool()> ready_;
};

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_INFERENCE_SERVICE_H_
