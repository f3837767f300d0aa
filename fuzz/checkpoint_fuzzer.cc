// Fuzzes the model store's readers: bytes -> StoredBlob (format, CRC-32) -> Checkpoint or
// StoredDataset -> the snapshot or data set a server would serve; snapshots then run.
//
// The first byte says what follows. Bit 0 clear: a whole file, as the store reads it. Bit 0 set:
// payload bytes only, wrapped in a blob with the right checksum so that mutations reach the
// payload's checks. Bit 1 set: the payload is a StoredDataset, else a Checkpoint.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/exercise.h"
#include "server/service/convert.h"
#include "server/service/status.h"
#include "server/service/store.h"

namespace {

void LoadCheckpoint(const std::string& file) {
  dropnet::v1::Checkpoint checkpoint;
  dropnet::service::ParseBlob(file, "fuzz", &checkpoint);
  auto snapshot = dropnet::service::FromCheckpoint(checkpoint, dropnet::fuzz::Limits());
  dropnet::fuzz::Exercise(*snapshot);
  // What a server would write back reads back.
  dropnet::v1::Checkpoint again;
  dropnet::service::ToCheckpoint(*snapshot, &again);
  dropnet::service::FromCheckpoint(again, dropnet::fuzz::Limits());
}

void LoadDataset(const std::string& file) {
  dropnet::v1::StoredDataset stored;
  dropnet::service::ParseBlob(file, "fuzz", &stored);
  const dropnet::engine::Dataset d = dropnet::service::FromStored(stored);
  dropnet::v1::StoredDataset again;
  dropnet::service::ToStored(d, stored.name(), &again);
  dropnet::service::FromStored(again);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  dropnet::fuzz::QuietProtobuf();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  std::string file(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode & 1) file = dropnet::service::WrapBlob(std::move(file));
  try {
    if (mode & 2) {
      LoadDataset(file);
    } else {
      LoadCheckpoint(file);
    }
  } catch (const dropnet::engine::InvalidArgument&) {
  } catch (const dropnet::service::ServiceError&) {
  }
  return 0;
}
