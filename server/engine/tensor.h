// Dense float32 tensors for the engine.
//
// Every activation is a row-major matrix of batch x features. Images are NCHW rows
// (C*H*W features per row) and sequences batch x (time*features); a Shape records how
// the features of one row are laid out so that layers can interpret them.
#ifndef DROPNET_ENGINE_TENSOR_H_
#define DROPNET_ENGINE_TENSOR_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

namespace dropnet::engine {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowVector = Eigen::Matrix<float, 1, Eigen::Dynamic>;
using MatrixMap = Eigen::Map<Matrix>;
using ConstMatrixMap = Eigen::Map<const Matrix>;

// a * b for sizes (a, b >= 0), or INT64_MAX when the product overflows.
// The name of an enumerator, from its table of names in declaration order; "?" out of range.
template <class Enum, size_t N>
const char* EnumName(Enum value, const std::array<const char*, N>& names) {
  const auto i = static_cast<size_t>(value);
  return i < N ? names[i] : "?";
}

inline int64_t SaturatingMul(int64_t a, int64_t b) {
  int64_t p;
  return __builtin_mul_overflow(a, b, &p) ? INT64_MAX : p;
}

// a + b for sizes (a, b >= 0), or INT64_MAX when the sum overflows.
inline int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t s;
  return __builtin_add_overflow(a, b, &s) ? INT64_MAX : s;
}

// The per-row layout of a tensor: {features}, {channels, length} or {channels, height, width}.
struct Shape {
  std::vector<int> dims;

  // The product of the dims; INT64_MAX when it does not fit (a size no limit lets through).
  int64_t Size() const {
    int64_t n = 1;
    for (int d : dims) n = SaturatingMul(n, d);
    return n;
  }
  bool operator==(const Shape& other) const = default;
  std::string ToString() const;
};

// Thrown for invalid input (bad shapes, rates, options). The message names the field and value.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Thrown when a computation is asked to stop (cancellation or deadline) between steps.
class Cancelled : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_TENSOR_H_
