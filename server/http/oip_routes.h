// The Open Inference Protocol's (KServe v2) REST routes on the HTTP port: server and model
// health and metadata, and inference, answered by the same core as the gRPC protocols
// (server/service/inference_service.h).
#ifndef DROPNET_HTTP_OIP_ROUTES_H_
#define DROPNET_HTTP_OIP_ROUTES_H_

#include "server/http/http_server.h"
#include "server/service/server.h"

namespace dropnet::http {

// Registers the /v2 routes on `http` for `server`, which must outlive it.
void RegisterOipRoutes(HttpServer* http, service::Server* server);

}  // namespace dropnet::http

#endif  // DROPNET_HTTP_OIP_ROUTES_H_
