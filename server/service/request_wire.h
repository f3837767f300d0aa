// Predict and PredictUncertainty requests read from their wire bytes, so that the inputs' values
// are copied once: from gRPC's receive buffers straight into the input matrix, by the call that
// computes. Protobuf's parser would first copy them into the message (800 KB for 256
// Fashion-MNIST rows), on the thread that receives, and the conversion to a matrix would copy
// them again.
//
// Only the `inputs` tensor is read here; every other field goes to protobuf's parser, and the
// result is what protobuf would parse: `inputs` sent more than once merges (shapes and values
// concatenate), values and shape may be packed or not, unknown fields are skipped. Bytes this
// reader does not walk (groups, invalid wire types, truncated fields) are given to protobuf
// whole, which then decides.
#ifndef DROPNET_SERVICE_REQUEST_WIRE_H_
#define DROPNET_SERVICE_REQUEST_WIRE_H_

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include "dropnet/v1/service.pb.h"
#include "server/engine/tensor.h"

namespace dropnet::service {

// A v1.Tensor whose values stay where they arrived.
struct WireTensor {
  std::vector<int64_t> shape;
  std::vector<std::string_view> values;  // little-endian floats in order, split anywhere
  int64_t value_bytes = 0;
  std::vector<grpc::Slice> slices;     // what `values` points into
  std::unique_ptr<v1::Tensor> parsed;  // or this, when protobuf parsed the whole request

  // Number of float values.
  int64_t size() const { return value_bytes / 4; }
  // rows x row_size, with FromTensor's checks and messages (convert.h), in one pass.
  engine::Matrix ToMatrix(int64_t row_size, const char* field) const;
};

// Parses a serialised PredictRequest or PredictUncertaintyRequest into `request` (all but its
// inputs, which stay empty) and `inputs`. False when the bytes are not a valid message.
template <typename Request>
bool ParseRequest(const grpc::ByteBuffer& buffer, Request* request, WireTensor* inputs);

extern template bool ParseRequest(const grpc::ByteBuffer&, v1::PredictRequest*, WireTensor*);
extern template bool ParseRequest(const grpc::ByteBuffer&, v1::PredictUncertaintyRequest*,
                                  WireTensor*);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_REQUEST_WIRE_H_
