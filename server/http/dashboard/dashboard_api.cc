#include "server/http/dashboard/dashboard_api.h"

#include <chrono>
#include <cstdlib>
#include <functional>

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "common/status_code_name.h"

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

HttpReply JsonOf(const Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  HttpReply r;
  const auto status = google::protobuf::util::MessageToJsonString(m, &r.body, o);
  if (!status.ok()) {
    return ErrorReply(grpc::Status(grpc::StatusCode::INTERNAL, std::string(status.message())));
  }
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
HttpReply Forward(const std::string& authorization, Call call) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kDeadline);
  if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  Response response;
  const grpc::Status status = call(&ctx, &response);
  return status.ok() ? JsonOf(response) : ErrorReply(status);
}

}  // namespace

int HttpStatusOf(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 200;
    case grpc::StatusCode::CANCELLED:
      return 499;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      return 400;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 504;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED:
      return 409;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 403;
    case grpc::StatusCode::UNAUTHENTICATED:
      return 401;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 429;
    case grpc::StatusCode::UNIMPLEMENTED:
      return 501;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    default:
      return 500;
  }
}

HttpReply ErrorReply(const grpc::Status& status) {
  HttpReply r;
  r.status = HttpStatusOf(status.error_code());
  r.body = nlohmann::json{{"error",
                           {{"code", StatusCodeName(status.error_code())},
                            {"message", status.error_message()}}}}
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}

DashboardApi::DashboardApi(const std::shared_ptr<grpc::Channel>& channel)
    : stub_(v1::Dropnet::NewStub(channel)) {}

HttpReply DashboardApi::Handle(std::string_view method, std::string_view path,
                               const std::string& authorization, const std::string& body) const {
  using grpc::ClientContext;
  constexpr std::string_view kModel = "/api/models/";
  const bool get = method == "GET", post = method == "POST";
  if (get && path == "/api/models") {
    return Forward<v1::ListModelsResponse>(authorization, [&](ClientContext* c, auto* r) {
      return stub_->ListModels(c, v1::ListModelsRequest(), r);
    });
  }
  if (get && path.rfind(kModel, 0) == 0 && path.size() > kModel.size()) {
    v1::GetModelRequest req;
    req.set_name(std::string(path.substr(kModel.size())));
    return Forward<v1::GetModelResponse>(
        authorization, [&](ClientContext* c, auto* r) { return stub_->GetModel(c, req, r); });
  }
  if (get && path == "/api/datasets") {
    return Forward<v1::ListDatasetsResponse>(authorization, [&](ClientContext* c, auto* r) {
      return stub_->ListDatasets(c, v1::ListDatasetsRequest(), r);
    });
  }
  if (post && path == "/api/evaluate") {
    v1::EvaluateRequest req;
    if (auto s = ParseJson(body, &req); !s.ok()) return ErrorReply(s);
    return Forward<v1::EvaluateResponse>(
        authorization, [&](ClientContext* c, auto* r) { return stub_->Evaluate(c, req, r); });
  }
  if (post && path == "/api/uncertainty") {
    v1::PredictUncertaintyRequest req;
    if (auto s = ParseJson(body, &req); !s.ok()) return ErrorReply(s);
    return Forward<v1::PredictUncertaintyResponse>(authorization, [&](ClientContext* c, auto* r) {
      return stub_->PredictUncertainty(c, req, r);
    });
  }
  const bool known = path == "/api/models" || path.rfind(kModel, 0) == 0 ||
                     path == "/api/datasets" || path == "/api/evaluate" ||
                     path == "/api/uncertainty";
  HttpReply r = ErrorReply(
      grpc::Status(known ? grpc::StatusCode::UNIMPLEMENTED : grpc::StatusCode::NOT_FOUND,
                   known ? std::string(method) + " is not allowed on " + std::string(path)
                         : "no endpoint " + std::string(path)));
  if (known) r.status = 405;
  return r;
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
