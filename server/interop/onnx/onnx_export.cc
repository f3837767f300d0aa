// ExportOnnx: one run of ONNX nodes per layer, in order, from the input "x" to the output "y".
#include <cmath>
#include <cstdio>
#include <map>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "server/interop/onnx/onnx_model.h"
#include "server/interop/onnx/onnx_tensors.h"

namespace dropnet::interop {

namespace {

using Dims = std::vector<int64_t>;

int64_t Product(const Dims& d) {
  int64_t n = 1;
  for (int64_t v : d) n *= v;
  return n;
}

std::string Number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

class Exporter {
 public:
  Exporter(const v1::Checkpoint& c, bool train) : c_(c), train_(train) {}
  OnnxExport Run();

 private:
  const v1::Tensor& Param(int layer, const std::string& name) const;
  std::string Fresh(const std::string& what) { return "l" + std::to_string(layer_) + "_" + what; }
  std::string Init(const std::string& what, const Dims& dims, const float* values);
  std::string IntInit(const std::string& what, const Dims& dims, const std::vector<int64_t>& v);
  std::string BoolInit(const std::string& what, bool value);
  onnx::NodeProto* Node(const std::string& op, std::vector<std::string> inputs,
                        const std::string& what = "");
  void Ints(onnx::NodeProto* n, const std::string& name, const Dims& v);
  void Int(onnx::NodeProto* n, const std::string& name, int64_t v);
  void Float(onnx::NodeProto* n, const std::string& name, float v);
  void Warn(const v1::LayerSpec& l, const std::string& what);
  [[noreturn]] void Refuse(const v1::LayerSpec& l, const std::string& why) const;
  void Layer(const v1::LayerSpec& l);
  void Dense(const v1::LayerSpec& l, const std::string& activation);
  void Conv(const v1::LayerSpec& l);
  void Pool(const v1::LayerSpec& l, bool max);
  void BatchNorm(const v1::LayerSpec& l);
  void Dropout(const v1::LayerSpec& l);
  void Gelu();
  void Recurrent(const v1::LayerSpec& l, bool lstm);
  void Standardize();

  const v1::Checkpoint& c_;
  bool train_;
  onnx::ModelProto model_;
  onnx::GraphProto* g_ = nullptr;
  std::string cur_ = "x";
  Dims shape_;  // per row
  int layer_ = 0;
  std::vector<std::string> warnings_;
};

const v1::Tensor& Exporter::Param(int layer, const std::string& name) const {
  for (const auto* list : {&c_.parameters(), &c_.buffers()})
    for (const auto& t : *list)
      if (t.layer() == layer && t.name() == name) return t.value();
  throw ExportRefused("layer " + std::to_string(layer) + " has no tensor '" + name + "'");
}

std::string Exporter::Init(const std::string& what, const Dims& dims, const float* values) {
  const std::string name = Fresh(what);
  SetTensor(name, dims, values, g_->add_initializer());
  return name;
}

std::string Exporter::IntInit(const std::string& what, const Dims& dims,
                              const std::vector<int64_t>& v) {
  const std::string name = Fresh(what);
  SetIntTensor(name, dims, v, g_->add_initializer());
  return name;
}

std::string Exporter::BoolInit(const std::string& what, bool value) {
  const std::string name = Fresh(what);
  auto* t = g_->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::BOOL);
  t->add_int32_data(value ? 1 : 0);
  return name;
}

onnx::NodeProto* Exporter::Node(const std::string& op, std::vector<std::string> inputs,
                                const std::string& what) {
  auto* n = g_->add_node();
  n->set_op_type(op);
  n->set_name(Fresh(what.empty() ? op : op + "_" + what));
  for (auto& i : inputs) n->add_input(std::move(i));
  n->add_output(Fresh(what.empty() ? op : what));
  cur_ = n->output(0);
  return n;
}

void Exporter::Ints(onnx::NodeProto* n, const std::string& name, const Dims& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

void Exporter::Int(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void Exporter::Float(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

void Exporter::Warn(const v1::LayerSpec& l, const std::string& what) {
  if (train_) Refuse(l, what + " has no ONNX form in train mode; export in eval mode");
  warnings_.push_back("layers[" + std::to_string(layer_) + "] (" + l.type() + "): " + what +
                      " written in its eval form");
}

void Exporter::Refuse(const v1::LayerSpec& l, const std::string& why) const {
  throw ExportRefused("layers[" + std::to_string(layer_) + "] (" + l.type() + "): " + why);
}

void Exporter::Dense(const v1::LayerSpec& l, const std::string& activation) {
  const v1::Tensor& w = Param(layer_, "weight");
  std::vector<std::string> in{cur_, Init("weight", {w.shape(0), w.shape(1)}, w.values().data())};
  if (!l.has_use_bias() || l.use_bias()) {
    const v1::Tensor& b = Param(layer_, "bias");
    in.push_back(Init("bias", {b.shape(1)}, b.values().data()));
  }
  Node("Gemm", in);
  shape_ = {w.shape(1)};
  if (activation == "relu") Node("Relu", {cur_}, "act");
  if (activation == "sigmoid") Node("Sigmoid", {cur_}, "act");
  if (activation == "tanh") Node("Tanh", {cur_}, "act");
}

void Exporter::Conv(const v1::LayerSpec& l) {
  const v1::Tensor& w = Param(layer_, "weight");
  const int64_t k = l.kernel_size(), stride = l.stride() > 0 ? l.stride() : 1, pad = l.padding();
  const int spatial = static_cast<int>(shape_.size()) - 1;
  Dims wdims{w.shape(0), shape_[0], k};
  if (spatial == 2) wdims.push_back(k);
  std::vector<std::string> in{cur_, Init("weight", wdims, w.values().data())};
  if (!l.has_use_bias() || l.use_bias()) {
    const v1::Tensor& b = Param(layer_, "bias");
    in.push_back(Init("bias", {b.shape(1)}, b.values().data()));
  }
  auto* n = Node("Conv", in);
  Ints(n, "kernel_shape", Dims(spatial, k));
  Ints(n, "strides", Dims(spatial, stride));
  Ints(n, "pads", Dims(2 * spatial, pad));
  Ints(n, "dilations", Dims(spatial, 1));
  Int(n, "group", 1);
  Dims out{w.shape(0)};
  for (int d = 1; d <= spatial; ++d) out.push_back((shape_[d] + 2 * pad - k) / stride + 1);
  shape_ = out;
}

void Exporter::Pool(const v1::LayerSpec& l, bool max) {
  const int64_t size = l.pool_size() > 0 ? l.pool_size() : 2;
  const int64_t stride = l.stride() > 0 ? l.stride() : size, pad = l.padding();
  const int spatial = static_cast<int>(shape_.size()) - 1;
  auto* n = Node(max ? "MaxPool" : "AveragePool", {cur_});
  Ints(n, "kernel_shape", Dims(spatial, size));
  Ints(n, "strides", Dims(spatial, stride));
  Ints(n, "pads", Dims(2 * spatial, pad));
  if (!max) Int(n, "count_include_pad", 1);
  Dims out{shape_[0]};
  for (int d = 1; d <= spatial; ++d) out.push_back((shape_[d] + 2 * pad - size) / stride + 1);
  shape_ = out;
}

void Exporter::BatchNorm(const v1::LayerSpec& l) {
  const int64_t channels = shape_[0];
  std::vector<std::string> in{cur_};
  for (const char* name : {"gamma", "beta", "running_mean", "running_var"})
    in.push_back(Init(name, {channels}, Param(layer_, name).values().data()));
  auto* n = Node("BatchNormalization", in);
  Float(n, "epsilon", static_cast<float>(l.has_epsilon() ? l.epsilon() : 1e-5));
  Float(n, "momentum", static_cast<float>(1.0 - (l.has_momentum() ? l.momentum() : 0.1)));
}

void Exporter::Dropout(const v1::LayerSpec& l) {
  if (l.classic_scaling()) {
    Warn(l, "classic-scaling dropout");
    const float keep = static_cast<float>(1.0 - l.rate());
    Node("Mul", {cur_, Init("keep", {}, &keep)});
    return;
  }
  const float rate = static_cast<float>(l.rate());
  Node("Dropout", {cur_, Init("ratio", {}, &rate), BoolInit("training_mode", train_)});
}

// GELU as torch.onnx.export writes nn.GELU below opset 20 (the Gelu operator is opset 20's):
// x * 0.5 * (1 + erf(x / sqrt(2))) in five nodes, which ImportOnnx reads back as a gelu layer.
void Exporter::Gelu() {
  const std::string x = cur_;
  const float sqrt2 = std::numbers::sqrt2_v<float>, one = 1.0f, half = 0.5f;
  Node("Div", {x, Init("sqrt2", {}, &sqrt2)});
  Node("Erf", {cur_});
  Node("Add", {cur_, Init("one", {}, &one)});
  Node("Mul", {x, cur_}, "x_cdf");
  Node("Mul", {cur_, Init("half", {}, &half)}, "gelu");
}

// dropnet keeps gates i, f, g, o (LSTM) and r, z, n (GRU), weights transposed; ONNX i, o, f, c
// and z, r, h. kOnnxBlock[lstm][g]: the ONNX block of dropnet gate g.
constexpr int kOnnxBlock[2][4] = {{1, 0, 2, 0}, {0, 2, 3, 1}};

void Exporter::Recurrent(const v1::LayerSpec& l, bool lstm) {
  if (l.zoneout_cell() > 0 || l.zoneout_hidden() > 0) {
    Refuse(l, "zoneout has no ONNX form (not even in eval: ONNX's " +
                  std::string(lstm ? "LSTM" : "GRU") + " cannot mix the previous state in)");
  }
  if (l.rate() > 0 || l.recurrent_rate() > 0) Warn(l, "variational recurrent dropout");
  const int gates = lstm ? 4 : 3;
  const int64_t steps = shape_[0], f = shape_[1], h = l.units(), g = gates * h;
  const auto& wih = Param(layer_, "weight_ih").values();
  const auto& whh = Param(layer_, "weight_hh").values();
  const auto& bih = Param(layer_, "bias_ih").values();
  const auto& bhh = Param(layer_, "bias_hh").values();
  std::vector<float> w(g * f), r(g * h), b(2 * g);
  for (int gate = 0; gate < gates; ++gate) {
    const int64_t dst = kOnnxBlock[lstm ? 1 : 0][gate] * h;
    for (int64_t j = 0; j < h; ++j) {
      const int64_t col = gate * h + j;
      for (int64_t i = 0; i < f; ++i) w[(dst + j) * f + i] = wih[i * g + col];
      for (int64_t k = 0; k < h; ++k) r[(dst + j) * h + k] = whh[k * g + col];
      b[dst + j] = bih[col];
      b[g + dst + j] = bhh[col];
    }
  }
  auto* t = Node("Transpose", {cur_}, "time_major");
  Ints(t, "perm", {1, 0, 2});
  auto* n = Node(lstm ? "LSTM" : "GRU",
                 {cur_, Init("W", {1, g, f}, w.data()), Init("R", {1, g, h}, r.data()),
                  Init("B", {1, 2 * g}, b.data())},
                 "Y");
  n->add_output(Fresh("Y_h"));
  Int(n, "hidden_size", h);
  if (!lstm) Int(n, "linear_before_reset", 1);
  if (l.return_sequences()) {
    Node("Squeeze", {n->output(0), IntInit("axes", {1}, {1})}, "steps");
    auto* back = Node("Transpose", {cur_}, "batch_first");
    Ints(back, "perm", {1, 0, 2});
    shape_ = {steps, h};
  } else {
    Node("Squeeze", {n->output(1), IntInit("axes", {1}, {0})}, "last");
    shape_ = {h};
  }
}

void Exporter::Layer(const v1::LayerSpec& l) {
  const std::string& t = l.type();
  if (t == "dense") {
    Dense(l, "");
  } else if (t == "relu" || t == "tanh" || t == "sigmoid" || t == "selu") {
    Node(t == "relu" ? "Relu" : t == "tanh" ? "Tanh" : t == "sigmoid" ? "Sigmoid" : "Selu", {cur_});
  } else if (t == "gelu") {
    Gelu();
  } else if (t == "leaky_relu") {
    Float(Node("LeakyRelu", {cur_}), "alpha",
          static_cast<float>(l.has_negative_slope() ? l.negative_slope() : 0.01));
  } else if (t == "softmax") {
    Int(Node("Softmax", {cur_}), "axis", 1);
  } else if (t == "flatten") {
    if (shape_.size() > 1) Int(Node("Flatten", {cur_}), "axis", 1);
    shape_ = {Product(shape_)};
  } else if (t == "batch_norm") {
    BatchNorm(l);
  } else if (t == "dropout") {
    Dropout(l);
  } else if (t == "conv1d" || t == "conv2d") {
    Conv(l);
  } else if (t.rfind("max_pool", 0) == 0 || t.rfind("avg_pool", 0) == 0) {
    Pool(l, t[0] == 'm');
  } else if (t == "global_avg_pool") {
    Node("GlobalAveragePool", {cur_});
    Int(Node("Flatten", {cur_}), "axis", 1);
    shape_ = {shape_[0]};
  } else if (t == "lstm" || t == "gru") {
    Recurrent(l, t == "lstm");
  } else if (t.rfind("spatial_dropout", 0) == 0 || t == "gaussian_dropout" ||
             t == "alpha_dropout") {
    Warn(l, t);  // the identity in eval
  } else if (t == "drop_connect") {
    if (l.moment_matching()) Refuse(l, "moment-matching inference has no ONNX form");
    Warn(l, "DropConnect");
    Dense(l, l.activation());
  } else if (t == "concrete_dropout") {
    Warn(l, "concrete dropout");
    if (l.units() > 0) Dense(l, "");
  } else {
    Refuse(l, "has no ONNX form in opset " + std::to_string(kExportOpset));
  }
}

void Exporter::Standardize() {
  const auto& st = c_.standardization();
  if (st.mean().empty()) return;
  Node("Sub", {cur_, Init("mean", shape_, st.mean().data())});
  Node("Div", {cur_, Init("scale", shape_, st.scale().data())});
}

void SetTensorType(onnx::ValueInfoProto* v, const std::string& name, const Dims& row) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  t->mutable_shape()->add_dim()->set_dim_param("n");
  for (int64_t d : row) t->mutable_shape()->add_dim()->set_dim_value(d);
}

OnnxExport Exporter::Run() {
  const v1::ModelSpec& spec = c_.spec();
  model_.set_ir_version(8);
  model_.set_producer_name("dropnet");
  model_.set_model_version(c_.version());
  model_.set_doc_string(spec.description());
  auto* opset = model_.add_opset_import();
  opset->set_domain("");
  opset->set_version(kExportOpset);
  auto meta = [this](const std::string& k, const std::string& v) {
    auto* p = model_.add_metadata_props();
    p->set_key("dropnet." + k);
    p->set_value(v);
  };
  meta("model", c_.model());
  meta("version", std::to_string(c_.version()));
  meta("task",
       v1::Task_Name(spec.task() == v1::TASK_UNSPECIFIED ? v1::TASK_CLASSIFICATION : spec.task()));
  if (spec.loss() != v1::LOSS_UNSPECIFIED) meta("loss", v1::Loss_Name(spec.loss()));
  if (spec.tau() != 0) meta("tau", Number(spec.tau()));
  meta("description", spec.description());
  g_ = model_.mutable_graph();
  g_->set_name(c_.model().empty() ? "dropnet" : c_.model());
  for (int d : spec.input_shape()) shape_.push_back(d);
  SetTensorType(g_->add_input(), "x", shape_);
  Standardize();
  for (layer_ = 0; layer_ < spec.layers_size(); ++layer_) Layer(spec.layers(layer_));
  if (cur_ == "x") Node("Identity", {cur_});
  g_->mutable_node(g_->node_size() - 1)->set_output(0, "y");
  SetTensorType(g_->add_output(), "y", shape_);
  OnnxExport out;
  model_.SerializeToString(&out.bytes);
  out.warnings = std::move(warnings_);
  return out;
}

}  // namespace

OnnxExport ExportOnnx(const v1::Checkpoint& checkpoint, bool train_mode) {
  return Exporter(checkpoint, train_mode).Run();
}

}  // namespace dropnet::interop
