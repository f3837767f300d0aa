// Constant tensors of an ONNX graph (initializers, Constant nodes) as plain vectors, the few
// operations that torch.onnx.export applies to them (Slice, Concat, Unsqueeze, ...), and the
// conversion of a float32 attribute to the decimal number it was written from.
#ifndef DROPNET_INTEROP_ONNX_ONNX_TENSORS_H_
#define DROPNET_INTEROP_ONNX_ONNX_TENSORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "onnx/onnx_pb.h"

namespace dropnet::interop {

// A constant: floats or integers (bool and int32 are read as integers), row-major.
struct ConstTensor {
  std::vector<int64_t> dims;
  bool is_float = true;
  std::vector<float> f;
  std::vector<int64_t> i;

  int64_t Size() const;
  // Element k as a double, whatever the type.
  double At(int64_t k) const;
};

// Reads a TensorProto. Throws std::invalid_argument (with the reason) for external data, an
// unsupported element type or a value count that does not match the dims.
ConstTensor ReadTensor(const onnx::TensorProto& t);

// Evaluates a node whose inputs are all constants, for the ops a shape or weight computation uses:
// Identity, Cast, Slice, Concat, Unsqueeze, Squeeze, Reshape. Throws std::invalid_argument
// with the reason otherwise.
ConstTensor FoldConstant(const onnx::NodeProto& node, const std::vector<const ConstTensor*>& in,
                         int opset);

// The decimal number a float32 value was most likely written from: the shortest decimal that
// reads back as the same float (0.1f -> 0.1, not 0.10000000149011612).
double FloatToDecimal(float v);
// `v` rounded to 12 significant digits (1 - 0.9 -> 0.1).
double Tidy(double v);

// The attribute named `name`, or nullptr.
const onnx::AttributeProto* FindAttribute(const onnx::NodeProto& node, const std::string& name);

// Writers for ExportOnnx.
void SetTensor(const std::string& name, const std::vector<int64_t>& dims, const float* values,
               onnx::TensorProto* out);
void SetIntTensor(const std::string& name, const std::vector<int64_t>& dims,
                  const std::vector<int64_t>& values, onnx::TensorProto* out);

}  // namespace dropnet::interop

#endif  // DROPNET_INTEROP_ONNX_ONNX_TENSORS_H_
