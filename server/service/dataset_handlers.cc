// The data-set calls of the Dropnet service: UploadDataset, ImportDataset, ListDatasets and
// DeleteDataset.
#include "server/service/service.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "server/service/handler_common.h"
#include "server/service/transform.h"

namespace dropnet::service {

namespace fs = std::filesystem;
using grpc::StatusCode;

namespace {

// A temporary file an upload streams into (in the store's data-set directory, where a restart
// removes what a crash left, as it does any temporary that starts with '.'), removed when done.
class SpoolFile {
 public:
  explicit SpoolFile(const fs::path& dir) {
    static std::atomic<uint64_t> counter{0};
    path_ = dir / (".upload-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ < 0) {
      Fail(StatusCode::INTERNAL, "cannot create the upload's temporary file '" + path_.string() +
                                     "': " + std::strerror(errno));
    }
  }
  ~SpoolFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  SpoolFile(const SpoolFile&) = delete;
  SpoolFile& operator=(const SpoolFile&) = delete;

  void Append(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        Fail(errno == ENOSPC ? StatusCode::RESOURCE_EXHAUSTED : StatusCode::INTERNAL,
             "cannot write the upload's temporary file: " + std::string(std::strerror(errno)));
      }
      p += w;
      n -= static_cast<size_t>(w);
      size_ += w;
    }
  }
  // Reads `n` bytes from `offset` into `out`.
  void Read(int64_t offset, void* out, size_t n) const {
    char* p = static_cast<char*>(out);
    while (n > 0) {
      const ssize_t r = ::pread(fd_, p, n, offset);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) Fail(StatusCode::INTERNAL, "cannot read the upload's temporary file");
      p += r;
      n -= static_cast<size_t>(r);
      offset += r;
    }
  }
  int64_t size() const { return size_; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  int fd_ = -1;
  int64_t size_ = 0;
};

constexpr size_t kSpoolChunkFloats = 1 << 18;  // 1 MiB read at a time

// Calls `each(values, count, first_index)` on a spool file's floats, a chunk at a time.
template <typename Each>
void ForEachChunk(const SpoolFile& file, Each&& each) {
  std::vector<float> chunk(kSpoolChunkFloats);
  const int64_t total = file.size() / 4;
  for (int64_t at = 0; at < total; at += static_cast<int64_t>(kSpoolChunkFloats)) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(total - at, kSpoolChunkFloats));
    file.Read(at * 4, chunk.data(), n * sizeof(float));
    each(chunk.data(), n, at);
  }
}

// The spool file's bytes for the store, a chunk at a time.
ModelStore::Producer SpoolProducer(const SpoolFile& file) {
  return [&file](const ModelStore::Sink& sink) {
    ForEachChunk(file, [&](const float* v, size_t n, int64_t) {
      sink(reinterpret_cast<const char*>(v), n * sizeof(float));
    });
  };
}

// Checks every spooled value of `field` (`cols` a row) finite; for class labels, also a class
// index, and returns the class count.
int CheckSpooled(const SpoolFile& file, int64_t cols, const char* field, bool labels) {
  float max_label = 0;
  ForEachChunk(file, [&](const float* v, size_t n, int64_t first) {
    for (size_t i = 0; i < n; ++i) {
      const int64_t at = first + static_cast<int64_t>(i);
      if (!std::isfinite(v[i])) {
        Fail(StatusCode::INVALID_ARGUMENT,
             std::string(field) + " has a non-finite value (" + std::to_string(v[i]) + ") at row " +
                 std::to_string(at / cols) + ", column " + std::to_string(at % cols));
      }
      if (labels && (v[i] < 0 || v[i] != std::floor(v[i]) || v[i] > 1e6)) {
        Fail(StatusCode::INVALID_ARGUMENT, std::string(field) + "[" + std::to_string(at) +
                                               "] must be a class index >= 0, got " +
                                               std::to_string(v[i]));
      }
      max_label = std::max(max_label, v[i]);
    }
  });
  return labels ? static_cast<int>(max_label) + 1 : 0;
}

// The stored form of a row upload, without its values (they stay in the spool files): checks
// the header's shapes against what was spooled, and every value.
v1::StoredDataset RowUploadMeta(const v1::DatasetHeader& header, engine::Task task,
                                const SpoolFile& features, const SpoolFile& targets) {
  if (header.input_shape().empty()) {
    Fail(StatusCode::INVALID_ARGUMENT, "header.input_shape is required for row uploads");
  }
  v1::StoredDataset meta;
  int64_t width = 1;
  for (int i = 0; i < header.input_shape_size(); ++i) {
    if (header.input_shape(i) <= 0) {
      Fail(StatusCode::INVALID_ARGUMENT, "header.input_shape[" + std::to_string(i) +
                                             "] must be positive, got " +
                                             std::to_string(header.input_shape(i)));
    }
    meta.add_input_shape(header.input_shape(i));
    width = engine::SaturatingMul(width, header.input_shape(i));
  }
  const int64_t per_row = header.targets_per_row() == 0 ? 1 : header.targets_per_row();
  if (per_row < 0) Fail(StatusCode::INVALID_ARGUMENT, "header.targets_per_row must be positive");
  const bool classify = task == engine::Task::kClassification;
  if (classify && per_row != 1) {
    Fail(StatusCode::INVALID_ARGUMENT, "classification needs targets_per_row 1 (a class index)");
  }
  const int64_t feature_values = features.size() / 4, target_values = targets.size() / 4;
  if (feature_values == 0) Fail(StatusCode::INVALID_ARGUMENT, "the upload has no rows");
  if (feature_values % width != 0) {
    Fail(StatusCode::INVALID_ARGUMENT, std::to_string(feature_values) +
                                           " feature values are not a whole number of rows of " +
                                           std::to_string(width));
  }
  const int64_t rows = feature_values / width;
  if (target_values != rows * per_row) {
    Fail(StatusCode::INVALID_ARGUMENT, "the upload has " + std::to_string(rows) + " rows but " +
                                           std::to_string(target_values) + " target values (" +
                                           std::to_string(per_row) + " a row expected)");
  }
  CheckSpooled(features, width, "rows.features", false);
  meta.set_num_classes(CheckSpooled(targets, per_row, "rows.targets", classify));
  meta.set_name(header.name());
  meta.set_task(ToProto(task));
  meta.mutable_x()->add_shape(rows);
  meta.mutable_x()->add_shape(width);
  meta.mutable_y()->add_shape(rows);
  meta.mutable_y()->add_shape(per_row);
  meta.set_source("upload");
  return meta;
}

// Appends a repeated float field's values to a spool file.
void Spool(const google::protobuf::RepeatedField<float>& values, SpoolFile* file) {
  if (!values.empty()) file->Append(values.data(), sizeof(float) * values.size());
}

// Floats appended to a spool file through a buffer, not a write a row.
class SpoolWriter {
 public:
  explicit SpoolWriter(SpoolFile* file) : file_(file) { buffer_.reserve(kSpoolChunkFloats); }
  void Add(const float* values, size_t n) {
    if (buffer_.size() + n > kSpoolChunkFloats) Flush();
    buffer_.insert(buffer_.end(), values, values + n);
  }
  void Flush() {
    file_->Append(buffer_.data(), buffer_.size() * sizeof(float));
    buffer_.clear();
  }

 private:
  SpoolFile* file_;
  std::vector<float> buffer_;
};

// Stores the CSV data set in `in` (as engine::ReadCsv reads it) as `meta` names it, keeping at
// most the first `limit` rows when `limit` > 0. The rows go to the spool files `features` and
// `targets` as they are read and from there to the store a chunk at a time: only a row, the
// buffers and the distinct class labels are in memory, never the data set.
v1::DatasetInfo PutCsvStreamed(Registry* registry, std::istream& in,
                               const engine::CsvOptions& options, v1::StoredDataset meta,
                               int64_t limit, bool overwrite, SpoolFile* features,
                               SpoolFile* targets, const std::function<bool()>& should_stop) {
  SpoolWriter x(features), y(targets);
  int64_t kept = 0;
  const engine::CsvStream csv = engine::StreamCsv(
      in, options,
      [&](const float* f, size_t width, float target) {
        if (limit > 0 && kept == limit) return;
        ++kept;
        x.Add(f, width);
        y.Add(&target, 1);
      },
      should_stop);
  x.Flush();
  y.Flush();
  const auto width = static_cast<int64_t>(csv.feature_names.size());
  meta.set_task(ToProto(options.task));
  meta.add_input_shape(static_cast<int32_t>(width));
  meta.mutable_x()->add_shape(kept);
  meta.mutable_x()->add_shape(width);
  meta.mutable_y()->add_shape(kept);
  meta.mutable_y()->add_shape(1);
  meta.set_num_classes(csv.num_classes);
  for (const auto& f : csv.feature_names) meta.add_feature_names(f);
  for (const auto& c : csv.class_names) meta.add_class_names(c);
  // Classification targets are label texts' indices until here: their classes go to the store.
  const ModelStore::Producer y_values = [&](const ModelStore::Sink& sink) {
    std::vector<float> classes;
    ForEachChunk(*targets, [&](const float* v, size_t n, int64_t) {
      if (!csv.class_of.empty()) {
        classes.resize(n);
        for (size_t i = 0; i < n; ++i) classes[i] = csv.class_of[static_cast<size_t>(v[i])];
        v = classes.data();
      }
      sink(reinterpret_cast<const char*>(v), n * sizeof(float));
    });
  };
  return registry->PutDatasetStreamed(std::move(meta), SpoolProducer(*features), y_values,
                                      overwrite);
}

// True when the call behind `ctx` was cancelled or its deadline passed.
std::function<bool()> CallEnded(const grpc::ServerContext* ctx) {
  return [ctx] { return ctx->IsCancelled() || DeadlinePassed(ctx); };
}

}  // namespace

grpc::Status DropnetService::UploadDataset(grpc::ServerContext* ctx,
                                           grpc::ServerReader<v1::UploadDatasetRequest>* reader,
                                           v1::UploadDatasetResponse* resp) {
  // The token is checked (Handle) before any of the body is read.
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
    // The body goes to temporary files as it arrives: one message in memory at a time.
    const fs::path spool_dir = registry_->store()->root() / "datasets";
    SpoolFile features(spool_dir), targets(spool_dir), csv(spool_dir);
    bool rows_mode = false, csv_mode = false;
    while (reader->Read(&msg)) {
      if (msg.has_header()) {
        Fail(StatusCode::INVALID_ARGUMENT, "only the first message may be a header");
      }
      if (msg.has_rows()) {
        rows_mode = true;
        Spool(msg.rows().features(), &features);
        Spool(msg.rows().targets(), &targets);
      } else if (msg.payload_case() == v1::UploadDatasetRequest::kCsvChunk) {
        csv_mode = true;
        csv.Append(msg.csv_chunk().data(), msg.csv_chunk().size());
      }
      if (rows_mode && csv_mode) {
        Fail(StatusCode::INVALID_ARGUMENT, "an upload is either rows or CSV text, not both");
      }
      if (features.size() + targets.size() + csv.size() > config_.max_dataset_bytes) {
        Fail(StatusCode::RESOURCE_EXHAUSTED, "the upload exceeds the server limit of " +
                                                 std::to_string(config_.max_dataset_bytes) +
                                                 " bytes (--max-upload)");
      }
      if (ctx->IsCancelled()) Fail(StatusCode::CANCELLED, "the upload was cancelled");
    }
    if (csv_mode) {
      engine::CsvOptions options;
      options.target = header.target_column();
      options.task = task;
      std::ifstream in(csv.path(), std::ios::binary);
      v1::StoredDataset meta;
      meta.set_name(header.name());
      meta.set_source("upload");
      *resp->mutable_dataset() =
          PutCsvStreamed(registry_, in, options, std::move(meta), 0, header.overwrite(), &features,
                         &targets, CallEnded(ctx));
      log.rows = resp->dataset().rows();
      return grpc::Status::OK;
    }
    // Rows go from the spool files to the store a chunk at a time, never whole in memory.
    v1::StoredDataset meta = RowUploadMeta(header, task, features, targets);
    log.rows = meta.x().shape(0);
    *resp->mutable_dataset() = registry_->PutDatasetStreamed(
        std::move(meta), SpoolProducer(features), SpoolProducer(targets), header.overwrite());
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
    const std::string name = file.filename().string();
    if (name.size() >= 4 && name.substr(name.size() - 4) == ".csv") {
      engine::CsvOptions options;
      options.target = req->target_column();
      options.task = ToEngine(req->task());
      std::ifstream in(file, std::ios::binary);
      if (!in) Fail(StatusCode::NOT_FOUND, "path '" + req->path() + "' cannot be opened");
      // Rows go through temporary files to the store, as an upload's do.
      const fs::path spool_dir = registry_->store()->root() / "datasets";
      SpoolFile features(spool_dir), targets(spool_dir);
      v1::StoredDataset meta;
      meta.set_name(req->name());
      meta.set_source(req->path());
      *resp->mutable_dataset() =
          PutCsvStreamed(registry_, in, options, std::move(meta), req->limit(), req->overwrite(),
                         &features, &targets, CallEnded(ctx));
      log.rows = resp->dataset().rows();
      return grpc::Status::OK;
    }
    if (req->label_path().empty()) {
      Fail(StatusCode::INVALID_ARGUMENT,
           "path '" + req->path() + "' is not a .csv file; an IDX import needs label_path");
    }
    engine::Dataset d =
        engine::LoadIdx(file.string(), resolve(req->label_path(), "label_path").string());
    KeepRawPixels(&d);
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
