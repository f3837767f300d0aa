// The model store: a directory that survives restarts and can be shared by several servers.
//
//   <root>/models/<name>/<version>/checkpoint.pb    a StoredBlob wrapping a Checkpoint
//   <root>/models/<name>/labels.pb                  a StoredBlob wrapping ModelSettings (labels,
//                                                   serving label, retention); replaced atomically
//   <root>/models/<name>/history.log                the model's epochs, one record appended per
//                                                   epoch (see HistoryRecord)
//   <root>/datasets/<name>/dataset.pb               a StoredBlob wrapping a StoredDataset
//
// Every new version or data set goes to a temporary directory next to its target, is fsynced,
// then renamed into place and the parent fsynced, so a reader (or a restart after a crash) sees a
// whole version or none. A data set that is overwritten keeps its directory: the new file is
// written and fsynced beside the old one and renamed over it, so a crash at any point leaves the
// old or the new copy whole. Temporary leftovers of an interrupted write start with '.' and are
// removed at start-up. Each file carries a CRC-32 of its payload; a version that fails it is
// skipped with an error.
//
// The directory is the truth: a checkpoint whose model name or version differs from the
// directory it was read from is refused as corrupt (a file copied between models is never served
// under the wrong name).
//
// One writer at a time: a writable store holds an exclusive lock (flock) on <root>/writer.lock,
// with the holder's pid in it, for its lifetime; a second writer is refused, naming that pid.
// Read-only stores (serving replicas) take no lock.
#ifndef DROPNET_SERVICE_STORE_H_
#define DROPNET_SERVICE_STORE_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "dropnet/v1/model.pb.h"

namespace dropnet::service {

// A file's bytes: a StoredBlob (format, CRC-32, payload) wrapping `payload`, or payload bytes
// already serialised.
std::string SerializeBlob(const google::protobuf::Message& payload);
std::string WrapBlob(std::string payload_bytes);
// Checks a file's bytes and parses its payload. Throws DATA_LOSS naming `source` when the bytes
// are not a stored blob, the checksum does not match or the payload does not parse.
void ParseBlob(const std::string& bytes, const std::string& source,
               google::protobuf::Message* payload);

// Called at every step of a store write that a crash could interrupt ("fsync", "rename", ...,
// with the path), before the step; tests use it to stop the process or to hold a write at that
// point. Empty (the default): nothing is called. Not thread-safe to change while writes run.
using StoreStepHook = std::function<void(std::string_view step, const std::filesystem::path&)>;
void SetStoreStepHookForTesting(StoreStepHook hook);

class ModelStore {
 public:
  // Bytes given in pieces: a Producer calls its Sink with each piece in order, and gives the same
  // bytes each time it is called.
  using Sink = std::function<void(const char* data, size_t size)>;
  using Producer = std::function<void(const Sink&)>;

  // Creates the directories and takes the writer lock when `writable` (FAILED_PRECONDITION when
  // another process or store object holds it); a read-only store never writes.
  ModelStore(std::filesystem::path root, bool writable);
  ~ModelStore();
  ModelStore(const ModelStore&) = delete;
  ModelStore& operator=(const ModelStore&) = delete;

  const std::filesystem::path& root() const { return root_; }
  bool writable() const { return writable_; }

  // Removes temporary leftovers of interrupted writes. Returns how many were removed.
  int CleanTemporaries();

  std::vector<std::string> ModelNames() const;
  std::vector<int64_t> Versions(const std::string& model) const;  // ascending
  void SaveCheckpoint(const v1::Checkpoint& checkpoint);          // atomic; throws on failure
  // DATA_LOSS when the file is damaged or names another model or version than its directory.
  v1::Checkpoint LoadCheckpoint(const std::string& model, int64_t version) const;
  void DeleteModel(const std::string& model);
  // Removes one version (retention). A missing version is not an error.
  void DeleteVersion(const std::string& model, int64_t version);
  // Bytes of a version's checkpoint file; 0 when it is missing.
  int64_t VersionSize(const std::string& model, int64_t version) const;

  // A model's labels and settings; empty settings when the model has none. DATA_LOSS when the
  // file is damaged.
  v1::ModelSettings LoadSettings(const std::string& model) const;
  // Replaces them atomically (the model's directory is created when missing).
  void SaveSettings(const std::string& model, const v1::ModelSettings& settings);
  // The model's history file, in the order appended; a torn last record is ignored.
  std::vector<v1::EpochRecord> LoadHistory(const std::string& model) const;
  // Appends one record and fsyncs it; a torn record left by a crash is cut off first.
  void AppendHistory(const std::string& model, const v1::EpochRecord& record);
  // Bytes of the model's files outside its versions (labels and history).
  int64_t ModelFilesSize(const std::string& model) const;

  std::vector<std::string> DatasetNames() const;
  void SaveDataset(const v1::StoredDataset& dataset);
  // SaveDataset for a data set too large to hold twice: `meta` has everything but x's and y's
  // values (their shapes set), which `x_values` and `y_values` give as little-endian floats,
  // twice (once for the checksum, once for the file). The file is what SaveDataset writes.
  void SaveDatasetStreamed(const v1::StoredDataset& meta, const Producer& x_values,
                           const Producer& y_values);
  v1::StoredDataset LoadDataset(const std::string& name) const;
  void DeleteDataset(const std::string& name);

 private:
  void TakeWriterLock();
  void WriteAtomically(const std::filesystem::path& dir, const std::string& file,
                       const google::protobuf::Message& payload);
  void WriteAtomically(const std::filesystem::path& dir, const std::string& file,
                       const Producer& bytes);
  void ReplaceFile(const std::filesystem::path& dir, const std::string& file,
                   const Producer& bytes);
  void ReadBlob(const std::filesystem::path& file, google::protobuf::Message* payload) const;
  void RemoveTree(const std::filesystem::path& dir);

  std::filesystem::path root_;
  bool writable_;
  int lock_fd_ = -1;
};

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_STORE_H_
