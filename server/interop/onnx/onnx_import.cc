// ImportOnnx: walks the nodes of a sequential graph in order (ONNX keeps them topologically
// sorted), with one data tensor flowing through them. Constants (initializers, Constant nodes
// and what is computed from them only) are folded; values computed from the input's shape
// (torch's zero initial states of a recurrent layer) are tracked as "dynamic"; every node on
// the data path becomes a layer, a fused part of one (MatMul + Add, Pad before a pool), or a
// change of layout (Transpose around a recurrent layer).
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "server/engine/tensor.h"
#include "server/interop/onnx/onnx_model.h"
#include "server/interop/onnx/onnx_tensors.h"

namespace dropnet::interop {

namespace {

using engine::InvalidArgument;

// What the graph's data tensor is at a point: its per-row shape and layout.
struct DataValue {
  std::vector<int64_t> shape;  // per row (batch dimension excluded)
  bool time_major = false;     // [T, N, F] (after Transpose perm [1, 0, 2])
  int rnn_layer = -1;          // >= 0: an output of that recurrent layer, still to be reshaped
  enum Rnn { kNone, kSequence, kLastState, kSequenceSqueezed } rnn = kNone;
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
  bool ends_with_softmax_ = false;
  bool any_layer_ = false;
  std::vector<float> std_mean_, std_scale_;
};

void Importer::Fail(const onnx::NodeProto& node, const std::string& why) const {
  const std::string name =
      node.name().empty() ? "#" + std::to_string(node_index_) : "'" + node.name() + "'";
  throw InvalidArgument("node " + name + " (" + node.op_type() + "): " + why);
}

void Importer::ReadOpset() {
  for (const auto& o : model_.opset_import()) {
    if (o.domain().empty() || o.domain() == "ai.onnx") opset_ = static_cast<int>(o.version());
  }
  if (opset_ < kMinImportOpset || opset_ > kMaxImportOpset) {
    throw InvalidArgument("the model's opset is " + std::to_string(opset_) + "; dropnet reads " +
                          std::to_string(kMinImportOpset) + " to " +
                          std::to_string(kMaxImportOpset));
  }
}

void Importer::ReadInput() {
  const auto& g = model_.graph();
  for (const auto& t : g.initializer()) {
    try {
      consts_[t.name()] = ReadTensor(t);
    } catch (const std::invalid_argument& e) {
      throw InvalidArgument(std::string("initializer: ") + e.what());
    }
  }
  std::vector<const onnx::ValueInfoProto*> inputs;
  for (const auto& in : g.input())
    if (!consts_.count(in.name())) inputs.push_back(&in);
  if (inputs.size() != 1) {
    throw InvalidArgument("the graph has " + std::to_string(inputs.size()) +
                          " inputs besides its initializers; dropnet models take one");
  }
  if (g.output_size() != 1) {
    throw InvalidArgument("the graph has " + std::to_string(g.output_size()) +
                          " outputs; dropnet models give one");
  }
  const auto& type = inputs[0]->type();
  if (!type.has_tensor_type() || type.tensor_type().elem_type() != onnx::TensorProto::FLOAT) {
    throw InvalidArgument("graph input '" + inputs[0]->name() + "' must be a float32 tensor");
  }
  const auto& dims = type.tensor_type().shape().dim();
  if (dims.size() < 2 || dims.size() > 4) {
    throw InvalidArgument("graph input '" + inputs[0]->name() +
                          "' must have 2 to 4 dimensions (batch first), got " +
                          std::to_string(dims.size()));
  }
  for (int d = 1; d < dims.size(); ++d) {
    if (!dims[d].has_dim_value() || dims[d].dim_value() <= 0) {
      throw InvalidArgument("graph input '" + inputs[0]->name() + "' dimension " +
                            std::to_string(d) + " must be a fixed positive size");
    }
    cur_.shape.push_back(dims[d].dim_value());
    out_.mutable_spec()->add_input_shape(static_cast<int>(dims[d].dim_value()));
  }
  current_ = inputs[0]->name();
}

const ConstTensor* Importer::OptionalConst(const onnx::NodeProto& node, int input) const {
  if (input >= node.input_size() || node.input(input).empty()) return nullptr;
  auto it = consts_.find(node.input(input));
  if (it == consts_.end()) Fail(node, "input " + std::to_string(input) + " must be a constant");
  return &it->second;
}

const ConstTensor& Importer::Const(const onnx::NodeProto& node, int input, const char* what) const {
  const ConstTensor* t = OptionalConst(node, input);
  if (!t) Fail(node, std::string("needs its ") + what + " input");
  if (!t->is_float && std::string(what) != "shape")
    Fail(node, std::string(what) + " must be float");
  return *t;
}

int64_t Importer::IntAttr(const onnx::NodeProto& node, const char* name, int64_t dflt) const {
  const auto* a = FindAttribute(node, name);
  return a ? a->i() : dflt;
}

float Importer::FloatAttr(const onnx::NodeProto& node, const char* name, float dflt) const {
  const auto* a = FindAttribute(node, name);
  return a ? a->f() : dflt;
}

std::vector<int64_t> Importer::IntsAttr(const onnx::NodeProto& node, const char* name) const {
  const auto* a = FindAttribute(node, name);
  if (!a) return {};
  return {a->ints().begin(), a->ints().end()};
}

void Importer::CheckNoOtherAttributes(const onnx::NodeProto& node,
                                      const std::set<std::string>& known) const {
  for (const auto& a : node.attribute()) {
    if (!known.count(a.name())) Fail(node, "attribute '" + a.name() + "' is not supported");
  }
}

v1::LayerSpec* Importer::AddLayer(const std::string& type, const std::vector<int64_t>& shape) {
  auto* l = out_.mutable_spec()->add_layers();
  l->set_type(type);
  cur_.shape = shape;
  any_layer_ = true;
  matmul_layer_ = -1;
  if (ends_with_softmax_) Fail(*node_, "a layer after the softmax head is not supported");
  return l;
}

void Importer::AddTensor(bool buffer, const std::string& name, int64_t rows, int64_t cols,
                         std::vector<float> values) {
  auto* t = buffer ? out_.add_buffers() : out_.add_parameters();
  t->set_layer(out_.spec().layers_size() - 1);
  t->set_name(name);
  t->mutable_value()->add_shape(rows);
  t->mutable_value()->add_shape(cols);
  t->mutable_value()->mutable_values()->Add(values.begin(), values.end());
}

int64_t Product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (int64_t d : v) n *= d;
  return n;
}

void Importer::Dense(const onnx::NodeProto& node, bool matmul) {
  if (cur_.shape.size() != 1) {
    Fail(node, "needs a flat input (a Flatten before it); its input has " +
                   std::to_string(cur_.shape.size()) + " dimensions per row");
  }
  const int64_t in = cur_.shape[0];
  const ConstTensor& w = Const(node, 1, "weight");
  bool trans_b = false;
  if (!matmul) {
    CheckNoOtherAttributes(node, {"alpha", "beta", "transA", "transB"});
    if (FloatAttr(node, "alpha", 1) != 1 || FloatAttr(node, "beta", 1) != 1 ||
        IntAttr(node, "transA", 0) != 0) {
      Fail(node, "only alpha = 1, beta = 1 and transA = 0 are supported");
    }
    trans_b = IntAttr(node, "transB", 0) != 0;
  }
  if (w.dims.size() != 2 || w.dims[trans_b ? 1 : 0] != in) {
    Fail(node, "weight of shape [" + std::to_string(w.dims.empty() ? 0 : w.dims[0]) +
                   ", ...] does not take " + std::to_string(in) + " input features");
  }
  const int64_t units = w.dims[trans_b ? 0 : 1];
  std::vector<float> weight(in * units);
  for (int64_t r = 0; r < in; ++r)
    for (int64_t c = 0; c < units; ++c)
      weight[r * units + c] = trans_b ? w.f[c * in + r] : w.f[r * units + c];
  const ConstTensor* bias = matmul ? nullptr : OptionalConst(node, 2);
  if (bias && (!bias->is_float || bias->Size() != units)) {
    Fail(node, "bias must have " + std::to_string(units) + " values");
  }
  auto* l = AddLayer("dense", {units});
  l->set_units(static_cast<int>(units));
  if (!bias) l->set_use_bias(false);
  AddTensor(false, "weight", in, units, std::move(weight));
  if (bias) AddTensor(false, "bias", 1, units, bias->f);
  if (matmul) matmul_layer_ = out_.spec().layers_size() - 1;
}

std::pair<int64_t, int64_t> Importer::UniformStrideAndPad(const onnx::NodeProto& node) const {
  const auto* auto_pad = FindAttribute(node, "auto_pad");
  if (auto_pad && auto_pad->s() != "NOTSET") Fail(node, "auto_pad must be NOTSET");
  for (int64_t d : IntsAttr(node, "dilations"))
    if (d != 1) Fail(node, "dilations other than 1 are not supported");
  const std::vector<int64_t> strides = IntsAttr(node, "strides");
  const std::vector<int64_t> pads = IntsAttr(node, "pads");
  const int64_t stride = strides.empty() ? 1 : strides[0];
  const int64_t pad = pads.empty() ? 0 : pads[0];
  for (int64_t s : strides)
    if (s != stride) Fail(node, "strides must be equal in every dimension");
  for (int64_t p : pads)
    if (p != pad) Fail(node, "pads must be equal on every side");
  return {stride, pad};
}

void Importer::Conv(const onnx::NodeProto& node) {
  CheckNoOtherAttributes(node,
                         {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"});
  const size_t spatial = cur_.shape.size() - 1;
  if (cur_.shape.size() != 2 && cur_.shape.size() != 3) {
    Fail(node, "needs [channels, length] or [channels, height, width] rows");
  }
  const ConstTensor& w = Const(node, 1, "weight");
  if (w.dims.size() != spatial + 2 || w.dims[1] != cur_.shape[0]) {
    Fail(node, "weight shape does not match " + std::to_string(cur_.shape[0]) + " input channels");
  }
  if (IntAttr(node, "group", 1) != 1) Fail(node, "grouped convolutions are not supported");
  const auto [stride, pad] = UniformStrideAndPad(node);
  const int64_t k = w.dims[2];
  for (size_t d = 2; d < w.dims.size(); ++d)
    if (w.dims[d] != k) Fail(node, "only square kernels are supported");
  const int64_t filters = w.dims[0];
  const ConstTensor* bias = OptionalConst(node, 2);
  if (bias && bias->Size() != filters) Fail(node, "bias must have one value per filter");
  std::vector<int64_t> shape{filters};
  for (size_t d = 1; d < cur_.shape.size(); ++d) {
    const int64_t o = (cur_.shape[d] + 2 * pad - k) / stride + 1;
    if (o <= 0) Fail(node, "the kernel is larger than the padded input");
    shape.push_back(o);
  }
  auto* l = AddLayer(spatial == 1 ? "conv1d" : "conv2d", shape);
  l->set_filters(static_cast<int>(filters));
  l->set_kernel_size(static_cast<int>(k));
  if (stride != 1) l->set_stride(static_cast<int>(stride));
  if (pad) l->set_padding(static_cast<int>(pad));
  if (!bias) l->set_use_bias(false);
  AddTensor(false, "weight", filters, w.Size() / filters, w.f);
  if (bias) AddTensor(false, "bias", 1, filters, bias->f);
}

void Importer::Pool(const onnx::NodeProto& node, bool max) {
  CheckNoOtherAttributes(node, {"auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                "kernel_shape", "pads", "storage_order", "strides"});
  if (cur_.shape.size() != 2 && cur_.shape.size() != 3) {
    Fail(node, "needs [channels, length] or [channels, height, width] rows");
  }
  if (IntAttr(node, "ceil_mode", 0) != 0) Fail(node, "ceil_mode = 1 is not supported");
  if (IntAttr(node, "storage_order", 0) != 0) Fail(node, "storage_order = 1 is not supported");
  const auto [stride, pad] = UniformStrideAndPad(node);
  auto kernel = IntsAttr(node, "kernel_shape");
  if (kernel.size() != cur_.shape.size() - 1) Fail(node, "kernel_shape does not match the input");
  for (int64_t v : kernel)
    if (v != kernel[0]) Fail(node, "only square windows are supported");
  if (pad && pending_pad_) Fail(node, "padding both in a Pad node and in the pool");
  if (pad && !max && IntAttr(node, "count_include_pad", 0) == 0) {
    Fail(node, "average pooling over padding must count the padding (count_include_pad = 1)");
  }
  const int64_t padding = pad + pending_pad_;
  pending_pad_ = 0;
  std::vector<int64_t> shape{cur_.shape[0]};
  for (size_t d = 1; d < cur_.shape.size(); ++d) {
    const int64_t o = (cur_.shape[d] + 2 * padding - kernel[0]) / stride + 1;
    if (o <= 0) Fail(node, "the window is larger than the padded input");
    shape.push_back(o);
  }
  auto* l = AddLayer(
      std::string(max ? "max_pool" : "avg_pool") + (cur_.shape.size() == 2 ? "1d" : "2d"), shape);
  if (kernel[0] != 2) l->set_pool_size(static_cast<int>(kernel[0]));
  if (stride != kernel[0]) l->set_stride(static_cast<int>(stride));
  if (padding) l->set_padding(static_cast<int>(padding));
}

void Importer::BatchNorm(const onnx::NodeProto& node) {
  CheckNoOtherAttributes(node, {"epsilon", "momentum", "training_mode", "spatial"});
  if (IntAttr(node, "spatial", 1) != 1) Fail(node, "spatial = 0 is not supported");
  const int64_t channels = cur_.shape[0];
  const ConstTensor* t[4];
  const char* names[4] = {"scale", "bias", "mean", "var"};
  for (int k = 0; k < 4; ++k) {
    t[k] = &Const(node, k + 1, names[k]);
    if (t[k]->Size() != channels) {
      Fail(node, std::string(names[k]) + " must have " + std::to_string(channels) + " values");
    }
  }
  for (int o = 1; o < node.output_size(); ++o) {
    for (const auto& n : model_.graph().node())
      for (const auto& i : n.input())
        if (!node.output(o).empty() && i == node.output(o))
          Fail(node, "its batch statistics outputs are used by another node");
  }
  auto* l = AddLayer("batch_norm", cur_.shape);
  const double eps = FloatToDecimal(FloatAttr(node, "epsilon", 1e-5f));
  const double momentum = Tidy(1.0 - FloatToDecimal(FloatAttr(node, "momentum", 0.9f)));
  if (eps != 1e-5) l->set_epsilon(eps);
  if (momentum != 0.1) l->set_momentum(momentum);
  AddTensor(false, "gamma", 1, channels, t[0]->f);
  AddTensor(false, "beta", 1, channels, t[1]->f);
  AddTensor(true, "running_mean", 1, channels, t[2]->f);
  AddTensor(true, "running_var", 1, channels, t[3]->f);
}

void Importer::Dropout(const onnx::NodeProto& node) {
  CheckNoOtherAttributes(node, {"ratio", "seed", "is_test"});
  double ratio = 0.5;
  if (opset_ < 12) {
    ratio = FloatToDecimal(FloatAttr(node, "ratio", 0.5f));
  } else if (const ConstTensor* r = OptionalConst(node, 1)) {
    if (r->Size() != 1 || !r->is_float) Fail(node, "ratio must be one float");
    ratio = FloatToDecimal(r->f[0]);
  }
  if (opset_ >= 12 && node.input_size() > 2 && !node.input(2).empty()) {
    const ConstTensor* mode = OptionalConst(node, 2);
    if (mode->Size() != 1) Fail(node, "training_mode must be one bool");
  }
  if (!(ratio >= 0 && ratio < 1))
    Fail(node, "ratio must be in [0, 1), got " + std::to_string(ratio));
  for (const auto& n : model_.graph().node())
    for (const auto& i : n.input())
      if (node.output_size() > 1 && !node.output(1).empty() && i == node.output(1))
        Fail(node, "its mask output is used by another node");
  auto* l = AddLayer("dropout", cur_.shape);
  if (ratio != 0) l->set_rate(ratio);
}

// ONNX keeps LSTM gates in the order i, o, f, c and GRU gates z, r, h; dropnet (PyTorch's order)
// i, f, g, o and r, z, n. kGateFrom[lstm][g]: the ONNX block of dropnet gate g.
constexpr int kGateFrom[2][4] = {{1, 0, 2, 0}, {0, 2, 3, 1}};

void Importer::Recurrent(const onnx::NodeProto& node, bool lstm) {
  CheckNoOtherAttributes(node, {"activations", "direction", "hidden_size", "layout",
                                "linear_before_reset", "activation_alpha", "activation_beta"});
  if (!cur_.time_major || cur_.shape.size() != 2) {
    Fail(node,
         "needs [steps, batch, features] input (a Transpose with perm [1, 0, 2] of "
         "batch-first sequences)");
  }
  const auto* dir = FindAttribute(node, "direction");
  if (dir && dir->s() != "forward") Fail(node, "only direction 'forward' is supported");
  if (IntAttr(node, "layout", 0) != 0) Fail(node, "layout = 1 is not supported");
  if (!lstm && IntAttr(node, "linear_before_reset", 0) != 1) {
    Fail(node, "only linear_before_reset = 1 (PyTorch's GRU) is supported");
  }
  if (const auto* a = FindAttribute(node, "activations")) {
    const char* want[3] = {"Sigmoid", "Tanh", "Tanh"};
    for (int k = 0; k < a->strings_size(); ++k)
      if (a->strings(k) != want[k]) Fail(node, "only the default activations are supported");
  }
  const int gates = lstm ? 4 : 3;
  const int64_t steps = cur_.shape[0], features = cur_.shape[1];
  const int64_t h = IntAttr(node, "hidden_size", 0);
  const ConstTensor& w = Const(node, 1, "W");
  const ConstTensor& r = Const(node, 2, "R");
  const ConstTensor* b = OptionalConst(node, 3);
  if (w.Size() != gates * h * features || r.Size() != gates * h * h ||
      (b && b->Size() != 2 * gates * h) || h <= 0) {
    Fail(node, "W, R or B does not match hidden_size " + std::to_string(h) + " and " +
                   std::to_string(features) + " input features");
  }
  if (node.input_size() > 4 && !node.input(4).empty()) Fail(node, "sequence_lens is not supported");
  for (int k = 5; k < node.input_size(); ++k) {
    if (node.input(k).empty() || zeros_.count(node.input(k))) continue;
    const ConstTensor* s = OptionalConst(node, k);
    for (int64_t e = 0; e < s->Size(); ++e)
      if (s->At(e) != 0) Fail(node, "initial states and peepholes must be zero or absent");
  }
  auto* l = AddLayer(lstm ? "lstm" : "gru", {h});
  l->set_units(static_cast<int>(h));
  const int64_t g = gates * h;
  std::vector<float> wih(features * g), whh(h * g), bih(g, 0.f), bhh(g, 0.f);
  for (int gate = 0; gate < gates; ++gate) {
    const int64_t src = kGateFrom[lstm ? 1 : 0][gate] * h;
    for (int64_t j = 0; j < h; ++j) {
      const int64_t col = gate * h + j;
      for (int64_t f = 0; f < features; ++f) wih[f * g + col] = w.f[(src + j) * features + f];
      for (int64_t k = 0; k < h; ++k) whh[k * g + col] = r.f[(src + j) * h + k];
      if (b) {
        bih[col] = b->f[src + j];
        bhh[col] = b->f[g + src + j];
      }
    }
  }
  AddTensor(false, "weight_ih", features, g, std::move(wih));
  AddTensor(false, "weight_hh", h, g, std::move(whh));
  AddTensor(false, "bias_ih", 1, g, std::move(bih));
  AddTensor(false, "bias_hh", 1, g, std::move(bhh));
  // The outputs: Y [T, 1, N, H] (every step) and Y_h [1, N, H] (the last state).
  const int layer = out_.spec().layers_size() - 1;
  if (node.output_size() > 0 && !node.output(0).empty())
    data_[node.output(0)] = DataValue{{steps, h}, true, layer, DataValue::kSequence};
  if (node.output_size() > 1 && !node.output(1).empty())
    data_[node.output(1)] = DataValue{{h}, false, layer, DataValue::kLastState};
  if (node.output_size() > 2 && !node.output(2).empty())
    data_[node.output(2)] = DataValue{{h}, false, layer, DataValue::kNone};  // Y_c: not usable
  current_.clear();
}

void Importer::Activation(const onnx::NodeProto& node) {
  const std::string& op = node.op_type();
  if (op == "Relu" || op == "Tanh" || op == "Sigmoid") {
    CheckNoOtherAttributes(node, {});
    AddLayer(op == "Relu" ? "relu" : op == "Tanh" ? "tanh" : "sigmoid", cur_.shape);
  } else if (op == "LeakyRelu") {
    CheckNoOtherAttributes(node, {"alpha"});
    auto* l = AddLayer("leaky_relu", cur_.shape);
    l->set_negative_slope(FloatToDecimal(FloatAttr(node, "alpha", 0.01f)));
  } else if (op == "Selu") {
    CheckNoOtherAttributes(node, {"alpha", "gamma"});
    if (std::abs(FloatAttr(node, "alpha", 1.67326319f) - 1.67326319f) > 1e-6f ||
        std::abs(FloatAttr(node, "gamma", 1.05070102f) - 1.05070102f) > 1e-6f) {
      Fail(node, "only the standard SELU constants are supported");
    }
    AddLayer("selu", cur_.shape);
  } else if (op == "Softmax" || op == "LogSoftmax") {
    CheckNoOtherAttributes(node, {"axis"});
    const int64_t axis = IntAttr(node, "axis", opset_ < 13 ? 1 : -1);
    if (cur_.shape.size() != 1 || (axis != 1 && axis != -1)) {
      Fail(node, "only a softmax over the features of flat rows is supported");
    }
    if (node.output(0) != model_.graph().output(0).name()) {
      Fail(node, "a softmax is supported only as the last node (the classification head)");
    }
    AddLayer("softmax", cur_.shape);
    ends_with_softmax_ = true;
  } else {
    Fail(node, "this operator has no dropnet layer");
  }
}

void Importer::Reshape(const onnx::NodeProto& node) {
  const std::string& op = node.op_type();
  const int64_t width = Product(cur_.shape);
  if (op == "Flatten") {
    CheckNoOtherAttributes(node, {"axis"});
    if (IntAttr(node, "axis", 1) != 1) Fail(node, "only axis = 1 (keep the batch) is supported");
  } else {
    CheckNoOtherAttributes(node, {"allowzero"});
    const auto* shape = OptionalConst(node, 1);
    if (!shape) Fail(node, "the target shape must be a constant");
    if (shape->dims.size() != 1 || shape->Size() != 2 ||
        !(shape->At(1) == width || (shape->At(1) == -1 && shape->At(0) != -1)) ||
        !(shape->At(0) == 0 || shape->At(0) == -1 || shape->At(1) == width)) {
      Fail(node, "only a reshape to [batch, " + std::to_string(width) +
                     "] (flattening the features) is supported");
    }
  }
  if (cur_.shape.size() > 1) AddLayer("flatten", {width});
}

void Importer::Transpose(const onnx::NodeProto& node) {
  const auto perm = IntsAttr(node, "perm");
  if (perm == std::vector<int64_t>{1, 0, 2} && cur_.shape.size() == 2) {
    cur_.time_major = !cur_.time_major;  // batch-first <-> time-major sequences
    return;
  }
  Fail(node, "only perm [1, 0, 2] on sequences (around a recurrent layer) is supported");
}

void Importer::Standardize(const onnx::NodeProto& node, bool sub) {
  const ConstTensor* c = OptionalConst(node, 1);
  const int64_t width = Product(cur_.shape);
  if (any_layer_ || !c || c->Size() != width || (sub ? !std_mean_.empty() : !std_scale_.empty()) ||
      (!sub && std_mean_.empty())) {
    Fail(node,
         "supported only as the input standardisation: Sub of per-feature means, then "
         "Div by per-feature scales, before the first layer");
  }
  (sub ? std_mean_ : std_scale_) = c->f;
}

void Importer::VisitData(const onnx::NodeProto& node) {
  const std::string& op = node.op_type();
  if (op == "Dropout") {
    Dropout(node);
  } else if (op == "Gemm") {
    Dense(node, false);
  } else if (op == "MatMul") {
    Dense(node, true);
  } else if (op == "Add") {
    const ConstTensor* b = OptionalConst(node, 1);
    auto* layers = out_.mutable_spec()->mutable_layers();
    if (matmul_layer_ < 0 || !b || b->Size() != cur_.shape[0]) {
      Fail(node, "only the bias of a MatMul (a constant of one value per output) is supported");
    }
    layers->Mutable(matmul_layer_)->clear_use_bias();
    AddTensor(false, "bias", 1, cur_.shape[0], b->f);
    matmul_layer_ = -1;
  } else if (op == "Conv") {
    Conv(node);
  } else if (op == "MaxPool" || op == "AveragePool") {
    Pool(node, op == "MaxPool");
  } else if (op == "GlobalAveragePool") {
    if (cur_.shape.size() < 2) Fail(node, "needs [channels, ...] rows");
    AddLayer("global_avg_pool", {cur_.shape[0]});
  } else if (op == "Pad") {
    const ConstTensor* pads = opset_ < 11 ? nullptr : OptionalConst(node, 1);
    std::vector<int64_t> p = pads ? std::vector<int64_t>{} : IntsAttr(node, "pads");
    if (pads)
      for (int64_t k = 0; k < pads->Size(); ++k) p.push_back(static_cast<int64_t>(pads->At(k)));
    const auto* mode = FindAttribute(node, "mode");
    if (mode && mode->s() != "constant") Fail(node, "only constant padding is supported");
    const ConstTensor* value = OptionalConst(node, 2);
    if (value && value->Size() && value->At(0) != 0) Fail(node, "only zero padding is supported");
    const size_t rank = cur_.shape.size() + 1;
    if (p.size() != 2 * rank) Fail(node, "pads must give two values per dimension");
    for (size_t d = 0; d < 2 * rank; ++d) {
      const bool spatial = d % rank >= 2;
      if ((!spatial && p[d] != 0) || (spatial && p[d] != p[2])) {
        Fail(node, "only equal padding of the spatial dimensions (before a pool) is supported");
      }
    }
    pending_pad_ = p[2];
  } else if (op == "BatchNormalization") {
    BatchNorm(node);
  } else if (op == "LSTM" || op == "GRU") {
    Recurrent(node, op == "LSTM");
  } else if (op == "Flatten" || op == "Reshape") {
    Reshape(node);
  } else if (op == "Transpose") {
    Transpose(node);
  } else if (op == "Identity") {
  } else if (op == "Sub" || op == "Div") {
    Standardize(node, op == "Sub");
  } else {
    Activation(node);
  }
}

void Importer::Visit(const onnx::NodeProto& node) {
  node_ = &node;
  const std::string& op = node.op_type();
  if (!node.domain().empty() && node.domain() != "ai.onnx") {
    Fail(node, "operators of domain '" + node.domain() + "' are not supported");
  }
  if (op == "Constant") {
    const auto* v = FindAttribute(node, "value");
    if (!v || !v->has_t()) Fail(node, "only a tensor 'value' is supported");
    try {
      consts_[node.output(0)] = ReadTensor(v->t());
    } catch (const std::invalid_argument& e) {
      Fail(node, e.what());
    }
    return;
  }
  // Which inputs are what.
  int data_input = -1;
  bool dynamic = false, all_const = true;
  for (int k = 0; k < node.input_size(); ++k) {
    const std::string& in = node.input(k);
    if (in.empty()) continue;
    if (in == current_ || data_.count(in)) {
      if (data_input >= 0) Fail(node, "reads the data tensor twice (a branching graph)");
      data_input = k;
      all_const = false;
    } else if (zeros_.count(in) && (op == "LSTM" || op == "GRU") && k >= 5) {
      continue;  // a zero initial state, checked by Recurrent
    } else if (dynamic_.count(in) || zeros_.count(in)) {
      dynamic = true;
      all_const = false;
    } else if (!consts_.count(in)) {
      Fail(node, "input '" + in +
                     "' is neither the data tensor of a sequential graph nor a "
                     "constant (a branching graph is not supported)");
    }
  }
  if (data_input < 0 && all_const) {
    std::vector<const ConstTensor*> in;
    for (const auto& name : node.input()) in.push_back(name.empty() ? nullptr : &consts_[name]);
    try {
      consts_[node.output(0)] = FoldConstant(node, in, opset_);
    } catch (const std::invalid_argument& e) {
      Fail(node, e.what());
    }
    return;
  }
  if (data_input < 0) {  // computed from the input's shape
    if (op == "ConstantOfShape") {
      const auto* v = FindAttribute(node, "value");
      if (v && v->has_t() && ReadTensor(v->t()).At(0) != 0)
        Fail(node, "only zero-filled tensors are supported");
      zeros_.insert(node.output(0));
    } else {
      for (const auto& o : node.output()) dynamic_.insert(o);
    }
    return;
  }
  if (op == "Shape") {
    dynamic_.insert(node.output(0));
    return;
  }
  if (dynamic) {
    Fail(node, "a data operation whose parameters depend on the input's shape");
  }
  if (data_input != 0) Fail(node, "the data tensor must be its first input");
  // A recurrent layer's output is first brought back to [batch, ...].
  if (node.input(0) != current_) {
    DataValue v = data_.at(node.input(0));
    auto* layer = out_.mutable_spec()->mutable_layers(v.rnn_layer);
    const bool squeeze = op == "Squeeze" || op == "Gather";
    if (v.rnn == DataValue::kLastState && squeeze) {
      if (op == "Gather") {
        const ConstTensor* index = OptionalConst(node, 1);
        if (!index || index->Size() != 1 || (index->At(0) != 0 && index->At(0) != -1) ||
            IntAttr(node, "axis", 0) != 0) {
          Fail(node, "only the last state of the one direction ([0] or [-1]) is supported");
        }
      }
      cur_ = DataValue{v.shape};
    } else if (v.rnn == DataValue::kSequence && op == "Squeeze") {
      layer->set_return_sequences(true);
      cur_ = DataValue{v.shape, true};
    } else {
      Fail(node,
           "only the last state (Y_h, squeezed) or every step (Y, squeezed and transposed) "
           "of a recurrent layer is supported");
    }
    data_.clear();
    current_ = node.output(0);
    return;
  }
  VisitData(node);
  if (op != "LSTM" && op != "GRU") current_ = node.output(0);  // those leave their outputs in data_
}

void Importer::Finish() {
  const auto& g = model_.graph();
  if (current_ != g.output(0).name()) {
    throw InvalidArgument("the graph output '" + g.output(0).name() +
                          "' is not the end of its sequence of layers");
  }
  if (cur_.time_major) throw InvalidArgument("the graph output is a time-major sequence");
  if (!any_layer_) throw InvalidArgument("the graph has no layer");
  if (pending_pad_) throw InvalidArgument("a Pad node is not followed by a pool");
  if (!std_mean_.empty()) {
    if (std_scale_.empty()) throw InvalidArgument("a Sub of means without a Div by scales");
    auto* st = out_.mutable_standardization();
    st->mutable_mean()->Add(std_mean_.begin(), std_mean_.end());
    st->mutable_scale()->Add(std_scale_.begin(), std_scale_.end());
  }
  auto* spec = out_.mutable_spec();
  std::map<std::string, std::string> meta;
  for (const auto& p : model_.metadata_props()) meta[p.key()] = p.value();
  v1::Task task = task_;
  if (task == v1::TASK_UNSPECIFIED && meta.count("dropnet.task")) {
    v1::Task_Parse(meta["dropnet.task"], &task);
  }
  if (task == v1::TASK_UNSPECIFIED)
    task = ends_with_softmax_ ? v1::TASK_CLASSIFICATION : v1::TASK_REGRESSION;
  spec->set_task(task);
  v1::Loss loss = v1::LOSS_UNSPECIFIED;
  if (meta.count("dropnet.loss") && v1::Loss_Parse(meta["dropnet.loss"], &loss)) {
    spec->set_loss(loss);
  }
  if (meta.count("dropnet.tau")) spec->set_tau(std::strtod(meta["dropnet.tau"].c_str(), nullptr));
  if (meta.count("dropnet.description")) {
    spec->set_description(meta["dropnet.description"]);
  } else {
    std::string d = "imported from ONNX";
    if (!model_.producer_name().empty()) {
      d += " (" + model_.producer_name() + " " + model_.producer_version() + ")";
    }
    spec->set_description(d);
  }
}

v1::Checkpoint Importer::Run() {
  ReadOpset();
  ReadInput();
  for (const auto& node : model_.graph().node()) {
    Visit(node);
    ++node_index_;
  }
  Finish();
  return std::move(out_);
}

}  // namespace

v1::Checkpoint ImportOnnx(const std::string& bytes, v1::Task task) {
  onnx::ModelProto model;
  if (!model.ParseFromString(bytes)) {
    throw InvalidArgument("the file is not an ONNX model (no ModelProto could be read)");
  }
  if (!model.has_graph()) throw InvalidArgument("the ONNX model has no graph");
  if (!model.functions().empty()) throw InvalidArgument("ONNX model functions are not supported");
  return Importer(model, task).Run();
}

}  // namespace dropnet::interop
