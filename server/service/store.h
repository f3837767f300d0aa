// The model store: a directory that survives restarts and can be shared by several servers.
//
//   <root>/models/<name>/<version>/checkpoint.pb    a StoredBlob wrapping a Checkpoint
//   <root>/datasets/<name>/dataset.pb               a StoredBlob wrapping a StoredDataset
//
// Every write goes to a temporary directory next to its target, is fsynced, then renamed into
// place and the parent fsynced, so a reader (or a restart after a crash) sees a whole version or
// none. Temporary leftovers of an interrupted write start with '.' and are removed at start-up.
// Each file carries a CRC-32 of its payload; a version that fails it is skipped with an error.
#ifndef DROPNET_SERVICE_STORE_H_
#define DROPNET_SERVICE_STORE_H_

#include <cstdint>
#include <filesystem>
#include <string>
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

class ModelStore {
 public:
  // Creates the directories when `writable`; a read-only store never writes.
  ModelStore(std::filesystem::path root, bool writable);

  const std::filesystem::path& root() const { return root_; }
  bool writable() const { return writable_; }

  // Removes temporary leftovers of interrupted writes. Returns how many were removed.
  int CleanTemporaries();

  std::vector<std::string> ModelNames() const;
  std::vector<int64_t> Versions(const std::string& model) const;  // ascending
  void SaveCheckpoint(const v1::Checkpoint& checkpoint);          // atomic; throws on failure
  v1::Checkpoint LoadCheckpoint(const std::string& model, int64_t version) const;
  void DeleteModel(const std::string& model);

  std::vector<std::string> DatasetNames() const;
  void SaveDataset(const v1::StoredDataset& dataset);
  v1::StoredDataset LoadDataset(const std::string& name) const;
  void DeleteDataset(const std::string& name);

 private:
  void WriteAtomically(const std::filesystem::path& dir, const std::string& file,
                       const google::protobuf::Message& payload);
  void ReadBlob(const std::filesystem::path& file, google::protobuf::Message* payload) const;
  void RemoveTree(const std::filesystem::path& dir);

  std::filesystem::path root_;
  bool writable_;
};

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_STORE_H_
