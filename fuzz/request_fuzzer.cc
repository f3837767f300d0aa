// Fuzzes the reading of Predict and PredictUncertainty requests from their bytes
// (service::ParseRequest) against protobuf's parser: any disagreement aborts
// (tests/service/wire_agreement.h says what must agree).
//
// Byte 0: bit 0 picks PredictUncertaintyRequest over PredictRequest, bits 1-7 the size of the
// first slice (1 to 128); byte 1: the size of the others (1 to 256); byte 2: the row size the
// tensor is converted to (1 to 8). The rest is the message.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fuzz/exercise.h"
#include "tests/service/wire_agreement.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = (dropnet::fuzz::QuietProtobuf(), true);
  (void)quiet;
  if (size < 3) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data + 3), size - 3);
  const std::vector<size_t> split = {size_t{1} + (data[0] >> 1), size_t{1} + data[1]};
  const int64_t row_size = 1 + data[2] % 8;
  const std::string diff =
      data[0] & 1 ? dropnet::service::CompareWithProtobuf<dropnet::v1::PredictUncertaintyRequest>(
                        bytes, split, row_size)
                  : dropnet::service::CompareWithProtobuf<dropnet::v1::PredictRequest>(bytes, split,
                                                                                       row_size);
  if (!diff.empty()) {
    std::fprintf(stderr, "ParseRequest and protobuf disagree: %s\n", diff.c_str());
    std::abort();
  }
  return 0;
}
