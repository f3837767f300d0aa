// The Open Inference Protocol's (KServe v2) REST routes on the HTTP port, answered by the same
// core as its gRPC service (server/service/inference_service.h), and the JSON tensor format they
// speak, mapped to and from the protocol's gRPC messages:
//
//   GET  /v2                                         server metadata
//   GET  /v2/health/live, /v2/health/ready           probes (open; ready is 503 while draining)
//   GET  /v2/models/{name}[/versions/{v}]            model metadata
//   GET  /v2/models/{name}[/versions/{v}]/ready      {"name", "ready"} (503 when not ready)
//   POST /v2/models/{name}[/versions/{v}]/infer      inference
//
// The model routes need the predict role when tokens are configured. Floats are written with
// the shortest decimal form that reads back as the same value, so a JSON answer carries the
// same float32 numbers as the gRPC one. The binary tensor data extension is not supported.
#ifndef DROPNET_HTTP_OIP_ROUTES_H_
#define DROPNET_HTTP_OIP_ROUTES_H_

#include <string>

#include <nlohmann/json.hpp>

#include "inference/grpc_predict_v2.pb.h"
#include "server/http/http_server.h"
#include "server/service/server.h"

namespace dropnet::http {

// Registers the /v2 routes on `http` for `server`, which must outlive it.
void RegisterOipRoutes(HttpServer* http, service::Server* server);

// A JSON inference request body -> the gRPC message (for model `model`, version `version`).
// Throws ServiceError INVALID_ARGUMENT naming the member that is malformed.
inference::ModelInferRequest InferRequestFromJson(const nlohmann::json& body,
                                                  const std::string& model,
                                                  const std::string& version);
// The gRPC answer -> the JSON inference response.
nlohmann::json InferResponseToJson(const inference::ModelInferResponse& resp);
// Model metadata -> JSON; the class_names and stochastic_layers parameters become arrays.
nlohmann::json ModelMetadataToJson(const inference::ModelMetadataResponse& m);

}  // namespace dropnet::http

#endif  // DROPNET_HTTP_OIP_ROUTES_H_
