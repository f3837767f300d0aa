// Fuzzes the IDX reader (engine::ReadIdx, plain or gzipped): the first two bytes (little endian)
// are the length of the image file's bytes, which follow; the label file's bytes come last.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "server/engine/data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data + 2), size - 2);
  const size_t split = std::min<size_t>(size_t{data[0]} | size_t{data[1]} << 8, rest.size());
  try {
    dropnet::engine::ReadIdx(rest.substr(0, split), rest.substr(split));
  } catch (const dropnet::engine::InvalidArgument&) {
  }
  return 0;
}
