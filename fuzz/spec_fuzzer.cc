// Fuzzes the spec-to-network path: bytes -> dropnet.v1.ModelSpec (its JSON mapping when the
// input starts with '{', else the binary encoding) -> validation and the engine Network, then a
// forward pass, Monte-Carlo passes and a training epoch on every network that builds.
#include <cstddef>
#include <cstdint>
#include <string>

#include <google/protobuf/util/json_util.h>

#include "fuzz/exercise.h"
#include "server/service/convert.h"
#include "server/service/status.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  dropnet::fuzz::QuietProtobuf();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  dropnet::v1::ModelSpec spec;
  if (!bytes.empty() && bytes[0] == '{') {
    if (!google::protobuf::util::JsonStringToMessage(bytes, &spec).ok()) return 0;
  } else if (!spec.ParseFromString(bytes)) {
    return 0;
  }
  std::shared_ptr<dropnet::service::Snapshot> snapshot;
  try {
    snapshot = dropnet::service::NewSnapshot("fuzz", spec, dropnet::fuzz::Limits());
  } catch (const dropnet::engine::InvalidArgument&) {
    return 0;
  } catch (const dropnet::service::ServiceError&) {
    return 0;
  }
  dropnet::fuzz::Exercise(*snapshot);
  return 0;
}
