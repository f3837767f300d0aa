#include "server/service/store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "server/service/status.h"

namespace dropnet::service {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kFormat = 1;
constexpr char kWriterLock[] = "writer.lock";
constexpr char kSettingsFile[] = "labels.pb";
constexpr char kHistoryFile[] = "history.log";

StoreStepHook& StepHook() {
  static StoreStepHook hook;
  return hook;
}

// A step of a write that a crash could interrupt: the test hook sees it first.
void Step(std::string_view step, const fs::path& path) {
  if (StepHook()) StepHook()(step, path);
}

[[noreturn]] void IoFail(const std::string& what, const fs::path& path, int err) {
  // A full disk or a read-only file system is a resource problem of the server, not a bug.
  const auto code = (err == ENOSPC || err == EROFS || err == EDQUOT || err == EACCES)
                        ? grpc::StatusCode::RESOURCE_EXHAUSTED
                        : grpc::StatusCode::INTERNAL;
  Fail(code, "model store: cannot " + what + " '" + path.string() + "': " + std::strerror(err));
}

void FsyncPath(const fs::path& path, bool directory) {
  Step(directory ? "fsync directory" : "fsync file", path);
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) IoFail("open", path, errno);
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    IoFail("fsync", path, err);
  }
  ::close(fd);
}

// Writes what `produce` gives to a new file at `path` and fsyncs it.
void WriteFile(const fs::path& path, const ModelStore::Producer& produce) {
  Step("write", path);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) IoFail("create", path, errno);
  try {
    produce([&](const char* data, size_t size) {
      size_t done = 0;
      while (done < size) {
        ssize_t n = ::write(fd, data + done, size - done);
        if (n < 0) {
          if (errno == EINTR) continue;
          IoFail("write", path, errno);
        }
        done += static_cast<size_t>(n);
      }
    });
  } catch (...) {
    ::close(fd);
    throw;
  }
  Step("fsync file", path);
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    IoFail("fsync", path, err);
  }
  if (::close(fd) != 0) IoFail("close", path, errno);
}

ModelStore::Producer BytesOf(const std::string& bytes) {
  return [&bytes](const ModelStore::Sink& sink) { sink(bytes.data(), bytes.size()); };
}

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void Rename(const fs::path& from, const fs::path& to, const char* what) {
  Step("rename", to);
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) IoFail(what, to, ec.value());
}

std::string TempName(const std::string& base) {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  std::ostringstream s;
  s << "." << base << ".tmp-" << ::getpid() << "-" << counter++ << "-" << rd();
  return s.str();
}

bool IsTemporary(const std::string& name) { return !name.empty() && name[0] == '.'; }

std::vector<std::string> ListDirs(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!IsTemporary(name) && e.is_directory()) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

uint32_t Crc32(const std::string& bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t done = 0; done < bytes.size();) {
    const uInt n = static_cast<uInt>(std::min<size_t>(bytes.size() - done, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + done), n);
    done += n;
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace

void SetStoreStepHookForTesting(StoreStepHook hook) { StepHook() = std::move(hook); }

std::string SerializeBlob(const google::protobuf::Message& payload) {
  std::string bytes;
  if (!payload.SerializeToString(&bytes)) {
    Fail(grpc::StatusCode::RESOURCE_EXHAUSTED, "model store: payload too large to serialise");
  }
  return WrapBlob(std::move(bytes));
}

std::string WrapBlob(std::string payload_bytes) {
  v1::StoredBlob blob;
  blob.set_format(kFormat);
  blob.set_crc32(Crc32(payload_bytes));
  blob.set_payload(std::move(payload_bytes));
  std::string out;
  if (!blob.SerializeToString(&out)) {
    Fail(grpc::StatusCode::RESOURCE_EXHAUSTED, "model store: payload too large to serialise");
  }
  return out;
}

void ParseBlob(const std::string& bytes, const std::string& source,
               google::protobuf::Message* payload) {
  v1::StoredBlob blob;
  if (!blob.ParseFromString(bytes) || blob.format() != kFormat) {
    Fail(grpc::StatusCode::DATA_LOSS, "model store: '" + source + "' is not a stored blob");
  }
  if (Crc32(blob.payload()) != blob.crc32()) {
    Fail(grpc::StatusCode::DATA_LOSS, "model store: checksum mismatch in '" + source + "'");
  }
  if (!payload->ParseFromString(blob.payload())) {
    Fail(grpc::StatusCode::DATA_LOSS, "model store: cannot parse '" + source + "'");
  }
}

ModelStore::ModelStore(fs::path root, bool writable) : root_(std::move(root)), writable_(writable) {
  if (writable_) {
    std::error_code ec;
    fs::create_directories(root_ / "models", ec);
    if (ec) IoFail("create", root_ / "models", ec.value());
    fs::create_directories(root_ / "datasets", ec);
    if (ec) IoFail("create", root_ / "datasets", ec.value());
    TakeWriterLock();
  }
}

ModelStore::~ModelStore() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the writer lock
}

void ModelStore::TakeWriterLock() {
  const fs::path path = root_ / kWriterLock;
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) IoFail("open", path, errno);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char pid[32] = {};
    const ssize_t n = ::pread(lock_fd_, pid, sizeof(pid) - 1, 0);
    ::close(lock_fd_);
    lock_fd_ = -1;
    if (err != EWOULDBLOCK) IoFail("lock", path, err);
    std::string holder(pid, n > 0 ? static_cast<size_t>(n) : 0);
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    Fail(grpc::StatusCode::FAILED_PRECONDITION,
         "model store '" + root_.string() + "' is in use by another writer (" +
             (holder.empty() ? std::string("a process") : "pid " + holder) +
             "); stop it, or start this server with --read-only to serve from the same store");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    IoFail("write", path, errno);
  }
}

int ModelStore::CleanTemporaries() {
  if (!writable_) return 0;
  int removed = 0;
  std::error_code ec;
  std::vector<fs::path> dirs = {root_ / "models", root_ / "datasets"};
  for (const auto& m : ListDirs(root_ / "models")) dirs.push_back(root_ / "models" / m);
  // A data set overwritten in place leaves its new file's temporary beside the old one.
  for (const auto& d : ListDirs(root_ / "datasets")) dirs.push_back(root_ / "datasets" / d);
  for (const auto& d : dirs) {
    for (const auto& e : fs::directory_iterator(d, ec)) {
      if (IsTemporary(e.path().filename().string())) {
        fs::remove_all(e.path(), ec);
        ++removed;
      }
    }
  }
  return removed;
}

void ModelStore::WriteAtomically(const fs::path& dir, const std::string& file,
                                 const google::protobuf::Message& payload) {
  if (!writable_) Fail(grpc::StatusCode::FAILED_PRECONDITION, "the model store is read-only");
  const std::string out = SerializeBlob(payload);
  WriteAtomically(dir, file, BytesOf(out));
}

void ModelStore::WriteAtomically(const fs::path& dir, const std::string& file,
                                 const Producer& out) {
  if (!writable_) Fail(grpc::StatusCode::FAILED_PRECONDITION, "the model store is read-only");
  // Replacing (a data set with overwrite): the directory stays, its file is replaced by one
  // rename, which leaves either file whole whatever moment a crash comes.
  if (fs::exists(dir / file)) return ReplaceFile(dir, file, out);

  const fs::path parent = dir.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) IoFail("create", parent, ec.value());
  const fs::path tmp = parent / TempName(dir.filename().string());
  fs::create_directory(tmp, ec);
  if (ec) IoFail("create", tmp, ec.value());
  try {
    WriteFile(tmp / file, out);
    FsyncPath(tmp, true);
    // A directory left without its file (not something this store writes) is replaced whole.
    if (fs::exists(dir)) RemoveTree(dir);
    Rename(tmp, dir, "rename into");
    FsyncPath(parent, true);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

void ModelStore::ReplaceFile(const fs::path& dir, const std::string& file, const Producer& bytes) {
  const fs::path tmp = dir / TempName(file);
  try {
    WriteFile(tmp, bytes);
    Rename(tmp, dir / file, "replace");
    FsyncPath(dir, true);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

void ModelStore::ReadBlob(const fs::path& file, google::protobuf::Message* payload) const {
  std::ifstream in(file, std::ios::binary);
  if (!in) Fail(grpc::StatusCode::NOT_FOUND, "model store: no file '" + file.string() + "'");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ParseBlob(bytes, file.string(), payload);
}

void ModelStore::RemoveTree(const fs::path& dir) {
  if (!writable_) Fail(grpc::StatusCode::FAILED_PRECONDITION, "the model store is read-only");
  std::error_code ec;
  if (!fs::exists(dir)) return;
  // Rename first so that no reader sees a half-deleted tree.
  const fs::path doomed = dir.parent_path() / TempName(dir.filename().string() + "-deleted");
  Rename(dir, doomed, "delete");
  Step("remove", doomed);
  fs::remove_all(doomed, ec);
}

std::vector<std::string> ModelStore::ModelNames() const { return ListDirs(root_ / "models"); }

std::vector<int64_t> ModelStore::Versions(const std::string& model) const {
  std::vector<int64_t> out;
  for (const auto& d : ListDirs(root_ / "models" / model)) {
    char* end = nullptr;
    long long v = std::strtoll(d.c_str(), &end, 10);
    if (end && *end == '\0' && v > 0 &&
        fs::exists(root_ / "models" / model / d / "checkpoint.pb")) {
      out.push_back(v);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

void ModelStore::SaveCheckpoint(const v1::Checkpoint& c) {
  WriteAtomically(root_ / "models" / c.model() / std::to_string(c.version()), "checkpoint.pb", c);
}

v1::Checkpoint ModelStore::LoadCheckpoint(const std::string& model, int64_t version) const {
  v1::Checkpoint c;
  const fs::path file = root_ / "models" / model / std::to_string(version) / "checkpoint.pb";
  ReadBlob(file, &c);
  if (c.model() != model || c.version() != version) {
    Fail(grpc::StatusCode::DATA_LOSS,
         "model store: '" + file.string() + "' holds model '" + c.model().substr(0, 64) +
             "' version " + std::to_string(c.version()) + ", not its directory's '" + model +
             "' version " + std::to_string(version) + " (copied from elsewhere?); refused");
  }
  return c;
}

void ModelStore::DeleteModel(const std::string& model) { RemoveTree(root_ / "models" / model); }

void ModelStore::DeleteVersion(const std::string& model, int64_t version) {
  RemoveTree(root_ / "models" / model / std::to_string(version));
}

int64_t ModelStore::VersionSize(const std::string& model, int64_t version) const {
  std::error_code ec;
  const auto n =
      fs::file_size(root_ / "models" / model / std::to_string(version) / "checkpoint.pb", ec);
  return ec ? 0 : static_cast<int64_t>(n);
}

v1::ModelSettings ModelStore::LoadSettings(const std::string& model) const {
  v1::ModelSettings settings;
  const fs::path file = root_ / "models" / model / kSettingsFile;
  if (fs::exists(file)) ReadBlob(file, &settings);
  return settings;
}

void ModelStore::SaveSettings(const std::string& model, const v1::ModelSettings& settings) {
  if (!writable_) Fail(grpc::StatusCode::FAILED_PRECONDITION, "the model store is read-only");
  const fs::path dir = root_ / "models" / model;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) IoFail("create", dir, ec.value());
  const std::string bytes = SerializeBlob(settings);
  ReplaceFile(dir, kSettingsFile, BytesOf(bytes));
}

namespace {

// The records of a history file and the length of its whole-record prefix.
std::vector<v1::EpochRecord> ReadHistoryRecords(const fs::path& file, int64_t* valid_bytes) {
  std::vector<v1::EpochRecord> out;
  *valid_bytes = 0;
  std::ifstream in(file, std::ios::binary);
  if (!in) return out;
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t at = 0;
  while (at + 4 <= bytes.size()) {
    uint32_t n = 0;
    for (int i = 3; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[at + i]);
    if (at + 4 + n > bytes.size()) break;
    v1::HistoryRecord record;
    try {
      ParseBlob(bytes.substr(at + 4, n), file.string(), &record);
    } catch (const ServiceError&) {
      break;  // a torn or damaged record: everything from here is dropped
    }
    out.push_back(record.epoch());
    at += 4 + n;
  }
  *valid_bytes = static_cast<int64_t>(at);
  return out;
}

}  // namespace

std::vector<v1::EpochRecord> ModelStore::LoadHistory(const std::string& model) const {
  int64_t valid = 0;
  return ReadHistoryRecords(root_ / "models" / model / kHistoryFile, &valid);
}

void ModelStore::AppendHistory(const std::string& model, const v1::EpochRecord& record) {
  if (!writable_) Fail(grpc::StatusCode::FAILED_PRECONDITION, "the model store is read-only");
  const fs::path file = root_ / "models" / model / kHistoryFile;
  std::error_code ec;
  fs::create_directories(file.parent_path(), ec);
  if (ec) IoFail("create", file.parent_path(), ec.value());
  int64_t valid = 0;
  ReadHistoryRecords(file, &valid);
  v1::HistoryRecord wrapped;
  *wrapped.mutable_epoch() = record;
  const std::string blob = SerializeBlob(wrapped);
  std::string bytes(4, '\0');
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>((blob.size() >> (8 * i)) & 0xff);
  bytes += blob;
  const bool created = !fs::exists(file);
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) IoFail("open", file, errno);
  // A crash in a previous append may have left part of a record: cut it off.
  if (::ftruncate(fd, valid) != 0 || ::lseek(fd, valid, SEEK_SET) < 0) {
    const int err = errno;
    ::close(fd);
    IoFail("truncate", file, err);
  }
  Step("append", file);
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      IoFail("write", file, err);
    }
    done += static_cast<size_t>(n);
  }
  Step("fsync file", file);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    IoFail("fsync", file, err);
  }
  if (::close(fd) != 0) IoFail("close", file, errno);
  if (created) FsyncPath(file.parent_path(), true);
}

int64_t ModelStore::ModelFilesSize(const std::string& model) const {
  int64_t total = 0;
  for (const char* name : {kSettingsFile, kHistoryFile}) {
    std::error_code ec;
    const auto n = fs::file_size(root_ / "models" / model / name, ec);
    if (!ec) total += static_cast<int64_t>(n);
  }
  return total;
}

std::vector<std::string> ModelStore::DatasetNames() const { return ListDirs(root_ / "datasets"); }

void ModelStore::SaveDataset(const v1::StoredDataset& d) {
  WriteAtomically(root_ / "datasets" / d.name(), "dataset.pb", d);
}

void ModelStore::SaveDatasetStreamed(const v1::StoredDataset& meta, const Producer& x_values,
                                     const Producer& y_values) {
  if (!writable_) Fail(grpc::StatusCode::FAILED_PRECONDITION, "the model store is read-only");
  // The payload is `meta` serialised, then x and y again holding only their values: a parser
  // merges a message field that appears twice, so it reads one StoredDataset with both.
  const int64_t x_bytes = 4 * meta.x().shape(0) * meta.x().shape(1);
  const int64_t y_bytes = 4 * meta.y().shape(0) * meta.y().shape(1);
  auto tensor_header = [](int field, int64_t value_bytes) {
    std::string values_tag;
    values_tag.push_back(static_cast<char>((2 << 3) | 2));  // Tensor.values, packed
    AppendVarint(static_cast<uint64_t>(value_bytes), &values_tag);
    std::string h;
    h.push_back(static_cast<char>((field << 3) | 2));
    AppendVarint(values_tag.size() + static_cast<uint64_t>(value_bytes), &h);
    return h + values_tag;
  };
  const std::string head = meta.SerializeAsString();
  const std::string x_head = tensor_header(4, x_bytes), y_head = tensor_header(5, y_bytes);
  const Producer payload = [&](const Sink& sink) {
    sink(head.data(), head.size());
    sink(x_head.data(), x_head.size());
    x_values(sink);
    sink(y_head.data(), y_head.size());
    y_values(sink);
  };
  // A first pass for the checksum, which the envelope holds before the payload.
  uLong crc = crc32(0L, Z_NULL, 0);
  int64_t size = 0;
  payload([&](const char* data, size_t n) {
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data), static_cast<uInt>(n));
    size += static_cast<int64_t>(n);
  });
  if (size !=
      static_cast<int64_t>(head.size() + x_head.size() + y_head.size()) + x_bytes + y_bytes) {
    Fail(grpc::StatusCode::INTERNAL, "model store: a data set's values do not match its shapes");
  }
  std::string envelope;
  envelope.push_back(static_cast<char>((1 << 3) | 0));  // StoredBlob.format
  AppendVarint(kFormat, &envelope);
  envelope.push_back(static_cast<char>((2 << 3) | 5));  // StoredBlob.crc32, fixed32
  for (int i = 0; i < 4; ++i) envelope.push_back(static_cast<char>((crc >> (8 * i)) & 0xff));
  envelope.push_back(static_cast<char>((3 << 3) | 2));  // StoredBlob.payload
  AppendVarint(static_cast<uint64_t>(size), &envelope);
  WriteAtomically(root_ / "datasets" / meta.name(), "dataset.pb", [&](const Sink& sink) {
    sink(envelope.data(), envelope.size());
    payload(sink);
  });
}

v1::StoredDataset ModelStore::LoadDataset(const std::string& name) const {
  v1::StoredDataset d;
  const fs::path file = root_ / "datasets" / name / "dataset.pb";
  ReadBlob(file, &d);
  if (d.name() != name) {
    Fail(grpc::StatusCode::DATA_LOSS, "model store: '" + file.string() + "' holds data set '" +
                                          d.name().substr(0, 64) + "', not its directory's '" +
                                          name + "' (copied from elsewhere?); refused");
  }
  return d;
}

void ModelStore::DeleteDataset(const std::string& name) { RemoveTree(root_ / "datasets" / name); }

}  // namespace dropnet::service
