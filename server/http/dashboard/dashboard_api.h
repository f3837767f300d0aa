// The dashboard's JSON endpoints and static files, independent of the HTTP library that serves
// them.
//
// Every /api/... endpoint is one dropnet.v1 call made through the server's in-process gRPC channel,
// with the caller's Authorization header passed on as its metadata: the same handlers, token
// checks, limits, logs and metrics as a gRPC client gets. Requests and answers are the calls'
// messages in protobuf's JSON mapping (proto field names, defaults printed):
//
//   GET  /api/models               ListModels          GET  /api/datasets   ListDatasets
//   GET  /api/models/{name}        GetModel
//   POST /api/evaluate             Evaluate            (body: EvaluateRequest)
//   POST /api/uncertainty          PredictUncertainty  (body: PredictUncertaintyRequest)
//
// A call's error is answered as the HTTP port answers every error (http_server.h): the HTTP
// status of its gRPC code and {"error": "..."}. The page itself (index.html, app.js, style.css) is
// compiled into the program; Chart.js is read from Debian's libjs-chart.js.
#ifndef DROPNET_HTTP_DASHBOARD_DASHBOARD_API_H_
#define DROPNET_HTTP_DASHBOARD_DASHBOARD_API_H_

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "dropnet/v1/service.grpc.pb.h"

namespace dropnet::http {

// What an endpoint answers: the call's status, and its response in JSON when it is OK.
struct ApiResult {
  grpc::Status status;
  std::string json;
};

class DashboardApi {
 public:
  // `channel` reaches the Dropnet service (Server::InProcessChannel).
  explicit DashboardApi(const std::shared_ptr<grpc::Channel>& channel);

  // The endpoints above; `authorization` is the request's Authorization header (empty: none),
  // `body` its JSON body.
  ApiResult ListModels(const std::string& authorization) const;
  ApiResult GetModel(const std::string& authorization, const std::string& name) const;
  ApiResult ListDatasets(const std::string& authorization) const;
  ApiResult Evaluate(const std::string& authorization, const std::string& body) const;
  ApiResult PredictUncertainty(const std::string& authorization, const std::string& body) const;

 private:
  std::unique_ptr<v1::Dropnet::Stub> stub_;
};

// A file of the page: its bytes and content type.
struct StaticFile {
  std::string_view content_type;
  std::string_view bytes;
};
// The page's file at `path` ("/" is index.html), or none.
std::optional<StaticFile> DashboardFile(std::string_view path);

// Where Chart.js is read from: $DROPNET_CHARTJS, else Debian's libjs-chart.js.
std::filesystem::path ChartJsPath();

}  // namespace dropnet::http

#endif  // DROPNET_HTTP_DASHBOARD_DASHBOARD_API_H_
