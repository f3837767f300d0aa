// The ONNX calls of the Dropnet service: ImportModel and ExportModel, thin over
// server/interop/onnx (which converts) and the registry (which validates, saves and serves).
#include "server/service/service.h"

#include <string>

#include "server/interop/onnx/onnx_model.h"
#include "server/service/handler_common.h"

namespace dropnet::service {

using grpc::StatusCode;

grpc::Status DropnetService::ImportModel(grpc::ServerContext* ctx,
                                         const v1::ImportModelRequest* req,
                                         v1::ImportModelResponse* resp) {
  return Handle("ImportModel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    CheckName("name", req->name());
    CheckTask("task", req->task());
    if (req->onnx_model().empty()) Fail(StatusCode::INVALID_ARGUMENT, "onnx_model is required");
    if (static_cast<int64_t>(req->onnx_model().size()) > config_.max_model_bytes) {
      Fail(StatusCode::RESOURCE_EXHAUSTED,
           "onnx_model has " + std::to_string(req->onnx_model().size()) +
               " bytes, over the server's limit of " + std::to_string(config_.max_model_bytes) +
               " (--max-model-bytes or DROPNET_MAX_MODEL_BYTES raises it)");
    }
    v1::Checkpoint c = interop::ImportOnnx(req->onnx_model(), req->task());
    if (!req->description().empty()) c.mutable_spec()->set_description(req->description());
    auto snap = registry_->CreateFrom(req->name(), std::move(c), "imported from ONNX");
    log.version = snap->version;
    registry_->Describe(*snap, resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::ExportModel(grpc::ServerContext* ctx,
                                         const v1::ExportModelRequest* req,
                                         v1::ExportModelResponse* resp) {
  return Handle("ExportModel", ctx, Role::kPredict, [&](CallLog& log) {
    log.model = req->name();
    if (!v1::ModelFormat_IsValid(req->format())) {
      Fail(StatusCode::INVALID_ARGUMENT,
           "format is not a known model format: " + std::to_string(req->format()));
    }
    if (!v1::ExportMode_IsValid(req->mode())) {
      Fail(StatusCode::INVALID_ARGUMENT,
           "mode is not a known export mode: " + std::to_string(req->mode()));
    }
    const bool train = req->mode() == v1::EXPORT_MODE_TRAIN;
    log.mode = train ? "train" : "eval";
    SnapshotPtr snap = registry_->GetVersion(req->name(), req->version());
    log.version = snap->version;
    v1::Checkpoint c;
    ToCheckpoint(*snap, &c);
    try {
      interop::OnnxExport out = interop::ExportOnnx(c, train);
      resp->set_onnx_model(std::move(out.bytes));
      for (auto& w : out.warnings) resp->add_warnings(std::move(w));
    } catch (const interop::ExportRefused& e) {
      Fail(StatusCode::FAILED_PRECONDITION, e.what());
    }
    resp->set_version(snap->version);
    return grpc::Status::OK;
  });
}

}  // namespace dropnet::service
