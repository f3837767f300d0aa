// The ONNX nodes that become dropnet layers with parameters or a rate: Gemm and MatMul (+ Add),
// Conv, the pools, BatchNormalization, Dropout, LSTM and GRU; and the five nodes of a GELU.
#include <cmath>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "server/engine/tensor.h"
#include "server/interop/onnx/onnx_importer.h"

namespace dropnet::interop::onnx_import {

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

bool Importer::IsScalarConst(const std::string& name, float value) const {
  auto it = consts_.find(name);
  return it != consts_.end() && it->second.is_float && it->second.Size() == 1 &&
         std::abs(it->second.f[0] - value) <= 1e-6f * std::abs(value);
}

bool Importer::OpensGelu(const onnx::NodeProto& node) const {
  const auto& nodes = model_.graph().node();
  for (int k = node_index_ + 1; k < nodes.size(); ++k) {
    if (nodes[k].op_type() == "Constant") continue;
    return nodes[k].op_type() == "Erf" && nodes[k].input_size() > 0 &&
           nodes[k].input(0) == node.output(0);
  }
  return false;
}

void Importer::GeluStart(const onnx::NodeProto& node) {
  CheckNoOtherAttributes(node, {});
  if (node.input_size() != 2 || !IsScalarConst(node.input(1), std::numbers::sqrt2_v<float>)) {
    Fail(node, "a Div before an Erf is read as the start of a GELU and must divide by sqrt(2)");
  }
  gelu_.step = 1;
  gelu_.x = current_;
  gelu_.start = node.name().empty() ? "#" + std::to_string(node_index_) : "'" + node.name() + "'";
}

// The steps after the Div. Add and Mul may take their operands in either order.
void Importer::GeluStep(const onnx::NodeProto& node) {
  static const char* const kStep[] = {"", "Erf(Div output)", "Add(Erf output, 1)",
                                      "Mul(GELU input, Add output)", "Mul(previous Mul, 0.5)"};
  const std::string& prev = current_;
  auto wired = [&](const std::string& other) {
    return node.input_size() == 2 && ((node.input(0) == prev && node.input(1) == other) ||
                                      (node.input(1) == prev && node.input(0) == other));
  };
  auto scalar = [&](float value) {
    if (node.input_size() != 2) return false;
    const std::string& other = node.input(0) == prev ? node.input(1) : node.input(0);
    return wired(other) && IsScalarConst(other, value);
  };
  bool ok = node.attribute().empty() && node.output_size() == 1;
  switch (gelu_.step) {
    case 1:
      ok = ok && node.op_type() == "Erf" && node.input_size() == 1 && node.input(0) == prev;
      break;
    case 2:
      ok = ok && node.op_type() == "Add" && scalar(1.0f);
      break;
    case 3:
      ok = ok && node.op_type() == "Mul" && wired(gelu_.x);
      break;
    default:
      ok = ok && node.op_type() == "Mul" && scalar(0.5f);
      break;
  }
  if (!ok) {
    Fail(node, "the GELU that starts at node " + gelu_.start + " needs " + kStep[gelu_.step] +
                   " here: Div(x, sqrt(2)) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)");
  }
  current_ = node.output(0);
  if (++gelu_.step < 5) return;
  gelu_ = GeluMatch{};
  AddLayer("gelu", cur_.shape);
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

}  // namespace dropnet::interop::onnx_import
