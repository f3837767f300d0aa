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
#include "server/interop/onnx/onnx_importer.h"
#include "server/interop/onnx/onnx_model.h"
#include "server/interop/onnx/onnx_tensors.h"

namespace dropnet::interop {

using engine::InvalidArgument;

namespace onnx_import {

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
  } else if (op == "Erf") {
    Fail(node,
         "an Erf is read only inside a GELU: Div(x, sqrt(2)) -> Erf -> Add(1) -> Mul(x) -> "
         "Mul(0.5)");
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
  } else if (op == "Div" && OpensGelu(node)) {
    GeluStart(node);
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
  if (gelu_.step > 0) {
    GeluStep(node);
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
  if (gelu_.step > 0) {
    throw InvalidArgument("the GELU that starts at node " + gelu_.start +
                          " ends before its last Mul");
  }
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

}  // namespace onnx_import

v1::Checkpoint ImportOnnx(const std::string& bytes, v1::Task task) {
  onnx::ModelProto model;
  if (!model.ParseFromString(bytes)) {
    throw InvalidArgument("the file is not an ONNX model (no ModelProto could be read)");
  }
  if (!model.has_graph()) throw InvalidArgument("the ONNX model has no graph");
  if (!model.functions().empty()) throw InvalidArgument("ONNX model functions are not supported");
  return onnx_import::Importer(model, task).Run();
}

}  // namespace dropnet::interop
