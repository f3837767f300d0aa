// The importer behind ImportOnnx (onnx_model.h), shared by its two files: onnx_import.cc (the
// walk over the graph, constants, layouts and the head) and onnx_import_layers.cc (the nodes that
// become dense, convolution, pooling, batch-norm, dropout, GELU and recurrent layers).
#ifndef DROPNET_INTEROP_ONNX_ONNX_IMPORTER_H_
#define DROPNET_INTEROP_ONNX_ONNX_IMPORTER_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "server/interop/onnx/onnx_model.h"
#include "server/interop/onnx/onnx_tensors.h"

namespace dropnet::interop::onnx_import {

// What the graph's data tensor is at a point: its per-row shape and layout.
struct DataValue {
  std::vector<int64_t> shape;  // per row (batch dimension excluded)
  bool time_major = false;     // [T, N, F] (after Transpose perm [1, 0, 2])
  int rnn_layer = -1;          // >= 0: an output of that recurrent layer, still to be reshaped
  enum Rnn { kNone, kSequence, kLastState, kSequenceSqueezed } rnn = kNone;
};

// Where the importer is inside a GELU written out as torch.onnx.export writes nn.GELU below opset
// 20: Div(x, sqrt(2)) -> Erf -> Add(., 1) -> Mul(x, .) -> Mul(., 0.5), one node per step.
struct GeluMatch {
  int step = 0;       // 0: not inside one; k: the k-th node (the Div is step 0) is next
  std::string x;      // the pattern's input, read again by its first Mul
  std::string start;  // the Div node, as error messages name it
};

class Importer {
 public:
  Importer(const onnx::ModelProto& model, v1::Task task) : model_(model), task_(task) {}
  v1::Checkpoint Run();

 private:
  [[noreturn]] void Fail(const onnx::NodeProto& node, const std::string& why) const;
  void ReadOpset();
  void ReadInput();
  void Visit(const onnx::NodeProto& node);
  void VisitData(const onnx::NodeProto& node);
  const ConstTensor& Const(const onnx::NodeProto& node, int input, const char* what) const;
  const ConstTensor* OptionalConst(const onnx::NodeProto& node, int input) const;
  int64_t IntAttr(const onnx::NodeProto& node, const char* name, int64_t dflt) const;
  float FloatAttr(const onnx::NodeProto& node, const char* name, float dflt) const;
  std::vector<int64_t> IntsAttr(const onnx::NodeProto& node, const char* name) const;
  void CheckNoOtherAttributes(const onnx::NodeProto& node,
                              const std::set<std::string>& known) const;
  // The stride and padding of a Conv or pool node, which dropnet takes as one value for every
  // dimension and side: auto_pad NOTSET, dilations 1, equal strides, equal pads.
  std::pair<int64_t, int64_t> UniformStrideAndPad(const onnx::NodeProto& node) const;
  // Adds a layer and makes `out` the data value with per-row shape `shape`.
  v1::LayerSpec* AddLayer(const std::string& type, const std::vector<int64_t>& shape);
  void AddTensor(bool buffer, const std::string& name, int64_t rows, int64_t cols,
                 std::vector<float> values);
  void Dense(const onnx::NodeProto& node, bool matmul);
  void Conv(const onnx::NodeProto& node);
  void Pool(const onnx::NodeProto& node, bool max);
  void BatchNorm(const onnx::NodeProto& node);
  void Dropout(const onnx::NodeProto& node);
  // GELU: whether a Div opens the pattern (the next node that is not a Constant is an Erf of its
  // output), the Div itself, and each following node of the pattern.
  bool OpensGelu(const onnx::NodeProto& node) const;
  void GeluStart(const onnx::NodeProto& node);
  void GeluStep(const onnx::NodeProto& node);
  bool IsScalarConst(const std::string& name, float value) const;
  void Recurrent(const onnx::NodeProto& node, bool lstm);
  void Activation(const onnx::NodeProto& node);
  void Reshape(const onnx::NodeProto& node);
  void Transpose(const onnx::NodeProto& node);
  void Standardize(const onnx::NodeProto& node, bool sub);
  void Finish();

  const onnx::ModelProto& model_;
  v1::Task task_;
  int opset_ = 0;
  v1::Checkpoint out_;
  std::map<std::string, ConstTensor> consts_;
  std::set<std::string> dynamic_;  // computed from the input's shape
  std::set<std::string> zeros_;    // ConstantOfShape(dynamic) with value 0
  std::map<std::string, DataValue> data_;
  std::string current_;  // the data tensor the next layer reads
  DataValue cur_;        // its description
  const onnx::NodeProto* node_ = nullptr;
  int node_index_ = 0;
  int matmul_layer_ = -1;  // a MatMul dense layer whose output is current_, bias still free
  int pending_pad_ = 0;    // zeros a Pad added before a pool
  GeluMatch gelu_;
  bool ends_with_softmax_ = false;
  bool any_layer_ = false;
  std::vector<float> std_mean_, std_scale_;
};

// The product of a shape's dimensions.
int64_t Product(const std::vector<int64_t>& v);

}  // namespace dropnet::interop::onnx_import

#endif  // DROPNET_INTEROP_ONNX_ONNX_IMPORTER_H_
