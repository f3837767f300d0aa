#include "server/http/dashboard/dashboard_api.h"

#include <chrono>
#include <cstdlib>

#include <google/protobuf/util/json_util.h>

namespace dropnet::http {

// The page's files, compiled in by embed_files.cmake.
struct EmbeddedFile {
  const char* path;
  const char* content_type;
  const unsigned char* bytes;
  size_t size;
};
extern const EmbeddedFile kDashboardFiles[];
extern const size_t kDashboardFileCount;

namespace {

using google::protobuf::Message;

constexpr auto kDeadline = std::chrono::seconds(120);

ApiResult JsonOf(const Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  ApiResult r;
  const auto status = google::protobuf::util::MessageToJsonString(m, &r.json, o);
  if (!status.ok())
    r.status = grpc::Status(grpc::StatusCode::INTERNAL, std::string(status.message()));
  return r;
}

// Parses `body` into `m`; an empty body is the empty message.
grpc::Status ParseJson(const std::string& body, Message* m) {
  if (body.empty()) return grpc::Status::OK;
  google::protobuf::util::JsonParseOptions o;
  const auto status = google::protobuf::util::JsonStringToMessage(body, m, o);
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      "the body is not a valid " + m->GetDescriptor()->full_name() +
                          " in JSON: " + std::string(status.message()));
}

// Makes one call: `call(ctx, response)` with the caller's token as metadata.
template <typename Response, typename Call>
ApiResult Forward(const std::string& authorization, Call call) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kDeadline);
  if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  Response response;
  const grpc::Status status = call(&ctx, &response);
  return status.ok() ? JsonOf(response) : ApiResult{status, {}};
}

}  // namespace

DashboardApi::DashboardApi(const std::shared_ptr<grpc::Channel>& channel)
    : stub_(v1::Dropnet::NewStub(channel)) {}

ApiResult DashboardApi::ListModels(const std::string& authorization) const {
  return Forward<v1::ListModelsResponse>(authorization, [&](grpc::ClientContext* c, auto* r) {
    return stub_->ListModels(c, v1::ListModelsRequest(), r);
  });
}

ApiResult DashboardApi::GetModel(const std::string& authorization, const std::string& name) const {
  v1::GetModelRequest req;
  req.set_name(name);
  return Forward<v1::GetModelResponse>(
      authorization, [&](grpc::ClientContext* c, auto* r) { return stub_->GetModel(c, req, r); });
}

ApiResult DashboardApi::ListDatasets(const std::string& authorization) const {
  return Forward<v1::ListDatasetsResponse>(authorization, [&](grpc::ClientContext* c, auto* r) {
    return stub_->ListDatasets(c, v1::ListDatasetsRequest(), r);
  });
}

ApiResult DashboardApi::Evaluate(const std::string& authorization, const std::string& body) const {
  v1::EvaluateRequest req;
  if (auto s = ParseJson(body, &req); !s.ok()) return {s, {}};
  return Forward<v1::EvaluateResponse>(
      authorization, [&](grpc::ClientContext* c, auto* r) { return stub_->Evaluate(c, req, r); });
}

ApiResult DashboardApi::PredictUncertainty(const std::string& authorization,
                                           const std::string& body) const {
  v1::PredictUncertaintyRequest req;
  if (auto s = ParseJson(body, &req); !s.ok()) return {s, {}};
  return Forward<v1::PredictUncertaintyResponse>(
      authorization,
      [&](grpc::ClientContext* c, auto* r) { return stub_->PredictUncertainty(c, req, r); });
}

std::optional<StaticFile> DashboardFile(std::string_view path) {
  if (path == "/" || path.empty()) path = "/index.html";
  for (size_t i = 0; i < kDashboardFileCount; ++i) {
    const EmbeddedFile& f = kDashboardFiles[i];
    if (path.substr(1) == f.path) {
      return StaticFile{f.content_type,
                        std::string_view(reinterpret_cast<const char*>(f.bytes), f.size)};
    }
  }
  return std::nullopt;
}

std::filesystem::path ChartJsPath() {
  if (const char* p = std::getenv("DROPNET_CHARTJS"); p && *p) return p;
  return "/usr/share/javascript/chart.js/chart.min.js";
}

}  // namespace dropnet::http
