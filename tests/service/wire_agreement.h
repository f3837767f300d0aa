// The invariant of request_wire.h, as a check shared by its test and its fuzz target: for any
// bytes, split into slices anywhere, ParseRequest agrees with protobuf's parser. Both fail, or
// both succeed with the same fields, the same shape, and the same matrix or the same error from
// the conversion to rows of `row_size` values.
#ifndef DROPNET_TESTS_SERVICE_WIRE_AGREEMENT_H_
#define DROPNET_TESTS_SERVICE_WIRE_AGREEMENT_H_

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/support/byte_buffer.h>

#include "server/engine/tensor.h"
#include "server/service/convert.h"
#include "server/service/request_wire.h"

namespace dropnet::service {

// `bytes` as gRPC hands a message over: slices of the given sizes in turn (the last one repeated),
// the rest in one slice.
inline grpc::ByteBuffer SplitIntoSlices(std::string_view bytes, const std::vector<size_t>& sizes) {
  std::vector<grpc::Slice> slices;
  size_t at = 0;
  for (size_t i = 0; at < bytes.size(); ++i) {
    size_t n =
        sizes.empty() ? bytes.size() : std::max<size_t>(1, sizes[std::min(i, sizes.size() - 1)]);
    n = std::min(n, bytes.size() - at);
    slices.emplace_back(bytes.data() + at, n);
    at += n;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// "" when they agree, else what differs.
template <typename Request>
std::string CompareWithProtobuf(std::string_view bytes, const std::vector<size_t>& slice_sizes,
                                int64_t row_size) {
  Request expected;
  const bool expected_ok = expected.ParseFromString(std::string(bytes));
  Request got;
  WireTensor inputs;
  const bool got_ok = ParseRequest(SplitIntoSlices(bytes, slice_sizes), &got, &inputs);
  if (expected_ok != got_ok) {
    return std::string("protobuf ") + (expected_ok ? "parses" : "rejects") + " it, ParseRequest " +
           (got_ok ? "parses" : "rejects") + " it";
  }
  if (!expected_ok) return "";
  const v1::Tensor tensor = expected.inputs();
  expected.clear_inputs();
  // Compared as bytes: the fields protobuf keeps serialise the same, NaN and unknown fields too.
  if (expected.SerializeAsString() != got.SerializeAsString()) {
    return "fields differ: protobuf {" + expected.ShortDebugString() + "}, ParseRequest {" +
           got.ShortDebugString() + "}";
  }
  if (!std::equal(tensor.shape().begin(), tensor.shape().end(), inputs.shape.begin(),
                  inputs.shape.end())) {
    return "shapes differ";
  }
  if (inputs.size() != tensor.values_size()) return "value counts differ";
  std::string expected_error, got_error;
  engine::Matrix a, b;
  try {
    a = FromTensor(tensor, row_size, "inputs");
  } catch (const engine::InvalidArgument& e) {
    expected_error = e.what();
  }
  try {
    b = inputs.ToMatrix(row_size, "inputs");
  } catch (const engine::InvalidArgument& e) {
    got_error = e.what();
  }
  if (expected_error != got_error) {
    return "errors differ: FromTensor '" + expected_error + "', ToMatrix '" + got_error + "'";
  }
  if (a.rows() != b.rows() || a.cols() != b.cols() ||
      (a.size() > 0 && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) != 0)) {
    return "matrices differ";
  }
  return "";
}

}  // namespace dropnet::service

#endif  // DROPNET_TESTS_SERVICE_WIRE_AGREEMENT_H_
