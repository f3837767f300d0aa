// Tests for reading Predict and PredictUncertainty requests from their bytes (request_wire.h):
// agreement with protobuf's parser for generated messages, every encoding protobuf accepts for a
// tensor, malformed bytes and bytes mutated at random, each split into slices anywhere.
#include "server/service/request_wire.h"

#include <google/protobuf/stubs/logging.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tests/service/wire_agreement.h"

namespace dropnet::service {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::string Varint(uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s;
}
std::string Tag(int field, int wire_type) { return Varint((field << 3) | wire_type); }
std::string Len(int field, const std::string& payload) {
  return Tag(field, 2) + Varint(payload.size()) + payload;
}
std::string Floats(const std::vector<float>& v) {
  std::string s(4 * v.size(), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}
std::string PackedShape(const std::vector<int64_t>& shape) {
  std::string s;
  for (int64_t d : shape) s += Varint(static_cast<uint64_t>(d));
  return Len(1, s);
}

// Slice sizes to try: whole, one byte at a time, and sizes that split floats and varints.
const std::vector<std::vector<size_t>> kSplits = {{}, {1}, {3}, {5, 2}, {7, 1, 13}, {64}};

template <typename Request>
void ExpectAgreement(const std::string& bytes, int64_t row_size, const std::string& what) {
  for (const auto& split : kSplits) {
    EXPECT_EQ(CompareWithProtobuf<Request>(bytes, split, row_size), "")
        << what << ", slices of " << (split.empty() ? 0 : split[0]);
  }
}

TEST(RequestWireTest, GeneratedRequestsReadAsProtobufReadsThem) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (int i = 0; i < 60; ++i) {
    const int rows = 1 + i % 5, cols = 3;
    v1::PredictUncertaintyRequest r;
    std::string name = "m";
    name += std::to_string(i);
    r.set_model(name);
    if (i % 2) r.set_samples(i);
    if (i % 3) r.set_seed(1000 + i);
    r.set_return_samples(i % 4 == 0);
    if (i % 5) r.set_interval(i % 13 == 0 ? std::numeric_limits<double>::quiet_NaN() : 0.5);
    r.mutable_inputs()->add_shape(rows);
    if (i % 3) r.mutable_inputs()->add_shape(cols);
    for (int k = 0; k < rows * cols; ++k) r.mutable_inputs()->add_values(normal(rng));
    if (i % 7 == 0) r.mutable_inputs()->set_values(i % rows * cols, kNaN);
    if (i % 11 == 0) r.mutable_inputs()->add_values(1.0f);  // one value too many
    ExpectAgreement<v1::PredictUncertaintyRequest>(r.SerializeAsString(), cols, r.model());

    v1::PredictRequest p;
    p.set_model(r.model());
    *p.mutable_inputs() = r.inputs();
    ExpectAgreement<v1::PredictRequest>(p.SerializeAsString(), cols, p.model());
  }
}

TEST(RequestWireTest, ValuesAreReadWhereTheyArriveWithoutProtobuf) {
  v1::PredictRequest p;
  p.set_model("m");
  p.mutable_inputs()->add_shape(2);
  p.mutable_inputs()->add_shape(3);
  for (int k = 0; k < 6; ++k) p.mutable_inputs()->add_values(static_cast<float>(k) + 0.5f);
  const std::string bytes = p.SerializeAsString();
  for (const auto& split : kSplits) {
    v1::PredictRequest got;
    WireTensor inputs;
    ASSERT_TRUE(ParseRequest(SplitIntoSlices(bytes, split), &got, &inputs));
    EXPECT_EQ(inputs.parsed, nullptr) << "protobuf parsed a plain request";
    EXPECT_EQ(got.model(), "m");
    EXPECT_FALSE(got.has_inputs());
    const engine::Matrix m = inputs.ToMatrix(3, "inputs");
    ASSERT_EQ(m.rows(), 2);
    for (int k = 0; k < 6; ++k) EXPECT_EQ(m.data()[k], static_cast<float>(k) + 0.5f);
  }
}

TEST(RequestWireTest, EveryTensorEncodingProtobufAccepts) {
  const std::string model = Len(1, "m");
  const std::vector<float> v = {1, 2, 3, 4, 5, 6};
  // Unpacked values: one fixed32 record each.
  std::string unpacked = PackedShape({2, 3});
  for (float x : v) unpacked += Tag(2, 5) + Floats({x});
  ExpectAgreement<v1::PredictRequest>(model + Len(2, unpacked), 3, "unpacked values");
  // Unpacked shape: one varint record each, after the values.
  ExpectAgreement<v1::PredictRequest>(
      model + Len(2, Len(2, Floats(v)) + Tag(1, 0) + Varint(2) + Tag(1, 0) + Varint(3)), 3,
      "unpacked shape");
  // Unknown fields of every wire type inside the tensor and beside it.
  const std::string unknown = Tag(7, 0) + Varint(300) + Len(8, "xyz") + Tag(9, 1) +
                              std::string(8, '\x01') + Tag(10, 5) + std::string(4, '\x02');
  ExpectAgreement<v1::PredictRequest>(
      Tag(99, 0) + Varint(5) + model + Len(2, unknown + PackedShape({2, 3}) + Len(2, Floats(v))), 3,
      "unknown fields");
  // The tensor's field numbers with other wire types are unknown fields to protobuf.
  ExpectAgreement<v1::PredictRequest>(
      model + Tag(2, 0) + Varint(1) +
          Len(2, PackedShape({2, 3}) + Tag(2, 0) + Varint(9) + Len(2, Floats(v))),
      3, "fields with other wire types");
  // A group inside the tensor: left to protobuf.
  ExpectAgreement<v1::PredictRequest>(
      model + Len(2, Tag(11, 3) + Tag(12, 0) + Varint(1) + Tag(11, 4) + PackedShape({2, 3}) +
                         Len(2, Floats(v))),
      3, "a group");
  // A negative dimension, as ten bytes.
  ExpectAgreement<v1::PredictRequest>(model + Len(2, PackedShape({-2, 3}) + Len(2, Floats(v))), 3,
                                      "a negative dimension");
  // Empty request.
  ExpectAgreement<v1::PredictRequest>("", 3, "empty");
}

TEST(RequestWireTest, InputsSentTwiceMergeAsProtobufMergesThem) {
  const std::string bytes = Len(2, PackedShape({2}) + Len(2, Floats({1, 2, 3}))) + Len(1, "m") +
                            Len(2, PackedShape({3}) + Len(2, Floats({4, 5, 6})));
  ExpectAgreement<v1::PredictRequest>(bytes, 3, "two inputs");
  v1::PredictRequest got;
  WireTensor inputs;
  ASSERT_TRUE(ParseRequest(SplitIntoSlices(bytes, {5}), &got, &inputs));
  EXPECT_EQ(inputs.shape, (std::vector<int64_t>{2, 3}));
  const engine::Matrix m = inputs.ToMatrix(3, "inputs");
  ASSERT_EQ(m.rows(), 2);
  EXPECT_EQ(m(1, 0), 4.0f);
  EXPECT_EQ(m(1, 2), 6.0f);
}

TEST(RequestWireTest, MalformedBytesAreRejectedAsProtobufRejectsThem) {
  const std::string good = Len(1, "m") + Len(2, PackedShape({1, 3}) + Len(2, Floats({1, 2, 3})));
  for (size_t cut = 1; cut < good.size(); ++cut) {
    ExpectAgreement<v1::PredictRequest>(good.substr(0, cut), 3, "cut at " + std::to_string(cut));
  }
  // Packed floats whose length is not a multiple of 4.
  ExpectAgreement<v1::PredictRequest>(Len(2, Len(2, std::string(5, '\0'))), 1, "5 value bytes");
  // A tag in a longer form than it needs, field number 0, wire types 6 and 7.
  ExpectAgreement<v1::PredictRequest>(std::string("\x92\x00", 2) + Varint(0), 1, "long tag");
  ExpectAgreement<v1::PredictRequest>(Tag(0, 0) + Varint(1), 1, "field 0");
  ExpectAgreement<v1::PredictRequest>(Tag(3, 6) + Varint(1), 1, "wire type 6");
  ExpectAgreement<v1::PredictRequest>(Len(2, Tag(3, 7)), 1, "wire type 7 in the tensor");
  // A packed shape whose last varint runs past its length.
  ExpectAgreement<v1::PredictRequest>(Len(2, Tag(1, 2) + Varint(1) + "\x80\x01"), 1,
                                      "varint past a packed field");
  // A model name that is not UTF-8.
  ExpectAgreement<v1::PredictRequest>(Len(1, "\xff\xfe"), 1, "not UTF-8");
  v1::PredictRequest got;
  WireTensor inputs;
  EXPECT_FALSE(ParseRequest(SplitIntoSlices(good.substr(0, good.size() - 1), {}), &got, &inputs));
}

TEST(RequestWireTest, ANonFiniteValueSplitAcrossSlicesIsNamed) {
  std::vector<float> v(12, 0.25f);
  v[5] = -std::numeric_limits<float>::infinity();
  const std::string bytes = Len(1, "m") + Len(2, PackedShape({4, 3}) + Len(2, Floats(v)));
  for (const auto& split : kSplits) {
    v1::PredictRequest got;
    WireTensor inputs;
    ASSERT_TRUE(ParseRequest(SplitIntoSlices(bytes, split), &got, &inputs));
    try {
      inputs.ToMatrix(3, "inputs");
      ADD_FAILURE() << "no error";
    } catch (const engine::InvalidArgument& e) {
      EXPECT_STREQ(e.what(), "inputs has a non-finite value (-inf) at row 1, column 2");
    }
  }
}

TEST(RequestWireTest, BytesMutatedAtRandomReadAsProtobufReadsThem) {
  v1::PredictUncertaintyRequest r;
  r.set_model("model");
  r.set_samples(10);
  r.set_seed(3);
  r.mutable_inputs()->add_shape(2);
  r.mutable_inputs()->add_shape(2);
  for (float x : {1.0f, -2.0f, 3.5f, 0.0f}) r.mutable_inputs()->add_values(x);
  const std::string good = r.SerializeAsString();
  google::protobuf::SetLogHandler(nullptr);  // a line for each invalid UTF-8 name it meets
  std::mt19937 rng(11);
  int parsed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string bytes = good;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0:
          bytes[at] = static_cast<char>(rng());
          break;
        case 1:
          bytes.erase(at, 1 + rng() % 3);
          break;
        default:
          bytes.insert(at, 1, static_cast<char>(rng()));
          break;
      }
      if (bytes.empty()) bytes = good;
    }
    const std::vector<size_t> split = {1 + rng() % 9, 1 + rng() % 9};
    const std::string diff = CompareWithProtobuf<v1::PredictUncertaintyRequest>(bytes, split, 2);
    ASSERT_EQ(diff, "") << "mutation " << i;
    parsed += v1::PredictUncertaintyRequest().ParseFromString(bytes);
  }
  // Both outcomes were exercised.
  EXPECT_GT(parsed, 300);
  EXPECT_LT(parsed, 2700);
}

}  // namespace
}  // namespace dropnet::service
