// The data-set calls of the Dropnet service: UploadDataset, ImportDataset, ListDatasets and
// DeleteDataset.
#include "server/service/service.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "server/service/handler_common.h"
#include "server/service/transform.h"

namespace dropnet::service {

namespace fs = std::filesystem;
using grpc::StatusCode;

namespace {

// The data set of a row upload: `features` and `targets` as the header shapes them.
engine::Dataset DatasetFromRows(const v1::DatasetHeader& header, engine::Task task,
                                const std::vector<float>& features,
                                const std::vector<float>& targets) {
  engine::Dataset d;
  if (header.input_shape().empty()) {
    Fail(StatusCode::INVALID_ARGUMENT, "header.input_shape is required for row uploads");
  }
  for (int i = 0; i < header.input_shape_size(); ++i) {
    if (header.input_shape(i) <= 0) {
      Fail(StatusCode::INVALID_ARGUMENT, "header.input_shape[" + std::to_string(i) +
                                             "] must be positive, got " +
                                             std::to_string(header.input_shape(i)));
    }
    d.input_shape.dims.push_back(header.input_shape(i));
  }
  const int64_t width = d.input_shape.Size();
  const int64_t per_row = header.targets_per_row() == 0 ? 1 : header.targets_per_row();
  if (per_row < 0) Fail(StatusCode::INVALID_ARGUMENT, "header.targets_per_row must be positive");
  if (task == engine::Task::kClassification && per_row != 1) {
    Fail(StatusCode::INVALID_ARGUMENT, "classification needs targets_per_row 1 (a class index)");
  }
  if (features.empty()) Fail(StatusCode::INVALID_ARGUMENT, "the upload has no rows");
  if (static_cast<int64_t>(features.size()) % width != 0) {
    Fail(StatusCode::INVALID_ARGUMENT, std::to_string(features.size()) +
                                           " feature values are not a whole number of rows of " +
                                           std::to_string(width));
  }
  const int64_t rows = static_cast<int64_t>(features.size()) / width;
  if (static_cast<int64_t>(targets.size()) != rows * per_row) {
    Fail(StatusCode::INVALID_ARGUMENT, "the upload has " + std::to_string(rows) + " rows but " +
                                           std::to_string(targets.size()) + " target values (" +
                                           std::to_string(per_row) + " a row expected)");
  }
  d.task = task;
  v1::Tensor t;
  t.add_shape(rows);
  t.add_shape(width);
  t.mutable_values()->Add(features.begin(), features.end());
  d.x = FromTensor(t, width, "rows.features");
  t.Clear();
  t.add_shape(rows);
  t.add_shape(per_row);
  t.mutable_values()->Add(targets.begin(), targets.end());
  d.y = FromTensor(t, per_row, "rows.targets");
  if (task == engine::Task::kClassification) {
    float max_label = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const float v = d.y(r, 0);
      if (v < 0 || v != std::floor(v) || v > 1e6) {
        Fail(StatusCode::INVALID_ARGUMENT, "rows.targets[" + std::to_string(r) +
                                               "] must be a class index >= 0, got " +
                                               std::to_string(v));
      }
      max_label = std::max(max_label, v);
    }
    d.num_classes = static_cast<int>(max_label) + 1;
  }
  return d;
}

}  // namespace

grpc::Status DropnetService::UploadDataset(grpc::ServerContext* ctx,
                                           grpc::ServerReader<v1::UploadDatasetRequest>* reader,
                                           v1::UploadDatasetResponse* resp) {
  return Handle("UploadDataset", ctx, Role::kAdmin, [&](CallLog& log) {
    ReleaseFreeMemoryOnExit release;
    v1::UploadDatasetRequest msg;
    if (!reader->Read(&msg) || !msg.has_header()) {
      Fail(StatusCode::INVALID_ARGUMENT, "the first UploadDataset message must be a header");
    }
    const v1::DatasetHeader header = msg.header();
    CheckName("header.name", header.name());
    log.model = header.name();
    CheckTask("header.task", header.task());
    const engine::Task task = ToEngine(header.task());
    std::vector<float> features, targets;
    std::string csv;
    int64_t bytes = 0;
    bool rows_mode = false, csv_mode = false;
    while (reader->Read(&msg)) {
      if (msg.has_header()) {
        Fail(StatusCode::INVALID_ARGUMENT, "only the first message may be a header");
      }
      if (msg.has_rows()) {
        rows_mode = true;
        features.insert(features.end(), msg.rows().features().begin(), msg.rows().features().end());
        targets.insert(targets.end(), msg.rows().targets().begin(), msg.rows().targets().end());
        bytes += 4 * (msg.rows().features_size() + msg.rows().targets_size());
      } else if (msg.payload_case() == v1::UploadDatasetRequest::kCsvChunk) {
        csv_mode = true;
        csv += msg.csv_chunk();
        bytes += static_cast<int64_t>(msg.csv_chunk().size());
      }
      if (rows_mode && csv_mode) {
        Fail(StatusCode::INVALID_ARGUMENT, "an upload is either rows or CSV text, not both");
      }
      if (bytes > config_.max_dataset_bytes) {
        Fail(StatusCode::RESOURCE_EXHAUSTED, "the upload exceeds the server limit of " +
                                                 std::to_string(config_.max_dataset_bytes) +
                                                 " bytes");
      }
      if (ctx->IsCancelled()) Fail(StatusCode::CANCELLED, "the upload was cancelled");
    }
    engine::Dataset d;
    if (csv_mode) {
      std::istringstream in(csv);
      engine::CsvOptions options;
      options.target = header.target_column();
      options.task = task;
      d = engine::ReadCsv(in, options);
    } else {
      d = DatasetFromRows(header, task, features, targets);
    }
    log.rows = d.rows();
    *resp->mutable_dataset() =
        registry_->PutDataset(header.name(), std::move(d), "upload", header.overwrite());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::ImportDataset(grpc::ServerContext* ctx,
                                           const v1::ImportDatasetRequest* req,
                                           v1::ImportDatasetResponse* resp) {
  return Handle("ImportDataset", ctx, Role::kAdmin, [&](CallLog& log) {
    ReleaseFreeMemoryOnExit release;
    CheckName("name", req->name());
    log.model = req->name();
    CheckTask("task", req->task());
    if (req->limit() < 0) Fail(StatusCode::INVALID_ARGUMENT, "limit must be >= 0");
    if (config_.data_root.empty()) {
      Fail(StatusCode::FAILED_PRECONDITION,
           "ImportDataset is disabled: the server has no --data-root");
    }
    // Resolve symlinks and '..' on both sides, then require the file to stay under the root.
    auto resolve = [&](const std::string& rel, const char* field) {
      if (rel.empty()) Fail(StatusCode::INVALID_ARGUMENT, std::string(field) + " is required");
      if (rel.find('\0') != std::string::npos) {
        Fail(StatusCode::INVALID_ARGUMENT, std::string(field) + " must not contain a NUL byte");
      }
      fs::path p(rel);
      if (p.is_absolute()) {
        Fail(StatusCode::INVALID_ARGUMENT,
             std::string(field) + " '" + rel + "' must be relative to the data root");
      }
      std::error_code ec;
      const fs::path root = fs::weakly_canonical(config_.data_root, ec);
      const fs::path full = fs::weakly_canonical(root / p, ec);
      auto [r, f] = std::mismatch(root.begin(), root.end(), full.begin(), full.end());
      if (ec || r != root.end()) {
        Fail(StatusCode::PERMISSION_DENIED,
             std::string(field) + " '" + rel + "' leaves the data root");
      }
      if (!fs::is_regular_file(full)) {
        Fail(StatusCode::NOT_FOUND,
             std::string(field) + " '" + rel + "' is not a file under the data root");
      }
      return full;
    };
    const fs::path file = resolve(req->path(), "path");
    engine::Dataset d;
    const std::string name = file.filename().string();
    if (name.size() >= 4 && name.substr(name.size() - 4) == ".csv") {
      engine::CsvOptions options;
      options.target = req->target_column();
      options.task = ToEngine(req->task());
      d = engine::LoadCsv(file.string(), options);
    } else {
      if (req->label_path().empty()) {
        Fail(StatusCode::INVALID_ARGUMENT,
             "path '" + req->path() + "' is not a .csv file; an IDX import needs label_path");
      }
      d = engine::LoadIdx(file.string(), resolve(req->label_path(), "label_path").string());
      KeepRawPixels(&d);
    }
    if (req->limit() > 0 && req->limit() < d.rows()) {
      std::vector<int64_t> rows(req->limit());
      for (int64_t i = 0; i < req->limit(); ++i) rows[i] = i;
      d = engine::Subset(d, rows);
    }
    log.rows = d.rows();
    *resp->mutable_dataset() =
        registry_->PutDataset(req->name(), std::move(d), req->path(), req->overwrite());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::ListDatasets(grpc::ServerContext* ctx, const v1::ListDatasetsRequest*,
                                          v1::ListDatasetsResponse* resp) {
  return Handle("ListDatasets", ctx, Role::kPredict, [&](CallLog&) {
    for (auto& info : registry_->ListDatasets()) *resp->add_datasets() = std::move(info);
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::DeleteDataset(grpc::ServerContext* ctx,
                                           const v1::DeleteDatasetRequest* req,
                                           v1::DeleteDatasetResponse*) {
  return Handle("DeleteDataset", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    registry_->DeleteDataset(req->name());
    return grpc::Status::OK;
  });
}

}  // namespace dropnet::service
