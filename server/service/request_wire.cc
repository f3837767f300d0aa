#include "server/service/request_wire.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

#include "server/service/convert.h"

namespace dropnet::service {

static_assert(std::endian::native == std::endian::little,
              "the wire's floats are little-endian and are copied as they are");

namespace {

// Field numbers and wire types (https://protobuf.dev/programming-guides/encoding/).
constexpr uint32_t kInputsField = 2;  // PredictRequest and PredictUncertaintyRequest
constexpr uint32_t kShapeField = 1;   // Tensor
constexpr uint32_t kValuesField = 2;  // Tensor
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLength = 2, kFixed32 = 5 };

// A cursor over a message's bytes, split across slices. Every read fails past `limit`.
class SliceReader {
 public:
  explicit SliceReader(const std::vector<grpc::Slice>& slices) {
    for (const auto& s : slices) {
      if (s.size() == 0) continue;
      chunks_.emplace_back(reinterpret_cast<const char*>(s.begin()), s.size());
      limit_ += s.size();
    }
  }
  size_t position() const { return position_; }
  size_t limit() const { return limit_; }
  void set_limit(size_t limit) { limit_ = limit; }
  bool AtLimit() const { return position_ == limit_; }

  // A tag in its shortest form (longer forms, like invalid field numbers, are left to protobuf).
  bool ReadTag(uint32_t* field, uint32_t* wire_type) {
    uint64_t tag;
    int bytes;
    if (!ReadVarint(&tag, &bytes) || bytes > 5 || tag > UINT32_MAX || bytes != VarintSize(tag) ||
        (tag >> 3) == 0) {
      return false;
    }
    *field = static_cast<uint32_t>(tag >> 3);
    *wire_type = static_cast<uint32_t>(tag & 7);
    return true;
  }
  // A length-delimited field's size: at most 5 bytes, as protobuf reads it, and within the limit.
  bool ReadLength(size_t* length) {
    uint64_t v;
    int bytes;
    if (!ReadVarint(&v, &bytes) || bytes > 5 || v > limit_ - position_) return false;
    *length = static_cast<size_t>(v);
    return true;
  }
  bool ReadVarint(uint64_t* value) {
    int bytes;
    return ReadVarint(value, &bytes);
  }
  // Skips a field's value (not groups).
  bool SkipValue(uint32_t wire_type) {
    uint64_t v;
    size_t n;
    switch (wire_type) {
      case kVarint:
        return ReadVarint(&v);
      case kFixed64:
        return Take(8, nullptr);
      case kLength:
        return ReadLength(&n) && Take(n, nullptr);
      case kFixed32:
        return Take(4, nullptr);
      default:
        return false;
    }
  }
  // Passes over n bytes, appending them to `pieces` unless it is null.
  bool Take(size_t n, std::vector<std::string_view>* pieces) {
    if (n > limit_ - position_) return false;
    position_ += n;
    while (n > 0) {
      const std::string_view& c = chunks_[chunk_];
      const size_t k = std::min(n, c.size() - offset_);
      if (pieces) pieces->push_back(c.substr(offset_, k));
      if (copy_) copy_->append(c.data() + offset_, k);
      n -= k;
      offset_ += k;
      if (offset_ == c.size()) ++chunk_, offset_ = 0;
    }
    return true;
  }
  // While set, every byte passed over is also appended to *out.
  void CopyTo(std::string* out) { copy_ = out; }

 private:
  static int VarintSize(uint64_t v) {
    int n = 1;
    while (v >= 0x80) v >>= 7, ++n;
    return n;
  }

  bool ReadVarint(uint64_t* value, int* bytes) {
    uint64_t v = 0;
    for (int i = 0; i < 10; ++i) {
      if (position_ == limit_) return false;
      const uint8_t b = static_cast<uint8_t>(chunks_[chunk_][offset_]);
      Take(1, nullptr);
      v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if (!(b & 0x80)) {
        *value = v;
        *bytes = i + 1;
        return true;
      }
    }
    return false;
  }

  std::vector<std::string_view> chunks_;
  size_t chunk_ = 0, offset_ = 0, position_ = 0, limit_ = 0;
  std::string* copy_ = nullptr;
};

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// One occurrence of `inputs`, `length` bytes from the reader's position, added to `t` as protobuf
// merges it. False for anything this reader leaves to protobuf.
bool ReadTensor(SliceReader& r, size_t length, WireTensor* t) {
  const size_t outer_limit = r.limit();
  r.set_limit(r.position() + length);
  while (!r.AtLimit()) {
    uint32_t field, wire_type;
    if (!r.ReadTag(&field, &wire_type)) return false;
    uint64_t v;
    size_t n;
    if (field == kShapeField && wire_type == kVarint) {
      if (!r.ReadVarint(&v)) return false;
      t->shape.push_back(static_cast<int64_t>(v));
    } else if (field == kShapeField && wire_type == kLength) {
      if (!r.ReadLength(&n)) return false;
      const size_t end = r.position() + n, limit = r.limit();
      r.set_limit(end);
      while (!r.AtLimit()) {
        if (!r.ReadVarint(&v)) return false;
        t->shape.push_back(static_cast<int64_t>(v));
      }
      r.set_limit(limit);
    } else if (field == kValuesField && wire_type == kFixed32) {
      if (!r.Take(4, &t->values)) return false;
      t->value_bytes += 4;
    } else if (field == kValuesField && wire_type == kLength) {
      if (!r.ReadLength(&n) || n % 4 != 0 || !r.Take(n, &t->values)) return false;
      t->value_bytes += static_cast<int64_t>(n);
    } else if (!r.SkipValue(wire_type)) {
      return false;
    }
  }
  r.set_limit(outer_limit);
  return true;
}

// The request's fields but `inputs` are copied, as they are, into `rest` for protobuf.
bool WalkRequest(const std::vector<grpc::Slice>& slices, std::string* rest, WireTensor* t) {
  SliceReader r(slices);
  while (!r.AtLimit()) {
    uint32_t field, wire_type;
    if (!r.ReadTag(&field, &wire_type)) return false;
    if (field == kInputsField && wire_type == kLength) {
      size_t n;
      if (!r.ReadLength(&n) || !ReadTensor(r, n, t)) return false;
      continue;
    }
    AppendVarint((field << 3) | wire_type, rest);
    r.CopyTo(rest);
    const bool ok = r.SkipValue(wire_type);
    r.CopyTo(nullptr);
    if (!ok) return false;
  }
  return true;
}

}  // namespace

engine::Matrix WireTensor::ToMatrix(int64_t row_size, const char* field) const {
  const int64_t rows = CheckBatchShape(shape, size(), row_size, field);
  engine::Matrix m(rows, row_size);
  float* dst = m.data();
  bool finite = true;
  char carry[4];
  size_t carried = 0;  // bytes of a float split between two pieces
  for (std::string_view piece : values) {
    if (carried > 0) {
      const size_t k = std::min(4 - carried, piece.size());
      std::memcpy(carry + carried, piece.data(), k);
      piece.remove_prefix(k);
      carried += k;
      if (carried < 4) continue;
      finite = CopyFinite(carry, dst++, 1) && finite;
      carried = 0;
    }
    const int64_t whole = static_cast<int64_t>(piece.size() / 4);
    finite = CopyFinite(piece.data(), dst, whole) && finite;
    dst += whole;
    carried = piece.size() % 4;
    std::memcpy(carry, piece.data() + 4 * whole, carried);
  }
  if (!finite) FailNonFinite(m, field);
  return m;
}

template <typename Request>
bool ParseRequest(const grpc::ByteBuffer& buffer, Request* request, WireTensor* inputs) {
  request->Clear();
  *inputs = WireTensor();
  if (!buffer.Dump(&inputs->slices).ok()) return false;
  std::string rest;
  if (WalkRequest(inputs->slices, &rest, inputs) && request->ParseFromString(rest)) return true;

  // Bytes the walk leaves to protobuf: it parses the whole request, and decides.
  std::string all;
  for (const auto& s : inputs->slices) {
    all.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  *inputs = WireTensor();
  request->Clear();
  if (!request->ParseFromString(all)) return false;
  inputs->parsed = std::make_unique<v1::Tensor>(std::move(*request->mutable_inputs()));
  request->clear_inputs();
  const v1::Tensor& t = *inputs->parsed;
  inputs->shape.assign(t.shape().begin(), t.shape().end());
  inputs->value_bytes = 4 * static_cast<int64_t>(t.values_size());
  if (t.values_size() > 0) {
    inputs->values.emplace_back(reinterpret_cast<const char*>(t.values().data()),
                                static_cast<size_t>(inputs->value_bytes));
  }
  return true;
}

template bool ParseRequest(const grpc::ByteBuffer&, v1::PredictRequest*, WireTensor*);
template bool ParseRequest(const grpc::ByteBuffer&, v1::PredictUncertaintyRequest*, WireTensor*);

}  // namespace dropnet::service
