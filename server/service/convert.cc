#include "server/service/convert.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <vector>

#include "server/engine/layer_types.h"
#include "server/service/status.h"

namespace dropnet::service {

using engine::InvalidArgument;

engine::Task ToEngine(v1::Task task) {
  return task == v1::TASK_REGRESSION ? engine::Task::kRegression : engine::Task::kClassification;
}

void CheckTask(const char* field, v1::Task task) {
  if (task != v1::TASK_UNSPECIFIED && !v1::Task_IsValid(task)) {
    throw InvalidArgument(std::string(field) + " is not a known task: " + std::to_string(task));
  }
}

v1::Task ToProto(engine::Task task) {
  return task == engine::Task::kRegression ? v1::TASK_REGRESSION : v1::TASK_CLASSIFICATION;
}

engine::LossKind ResolveLoss(const v1::ModelSpec& spec) {
  switch (spec.loss()) {
    case v1::LOSS_CROSS_ENTROPY:
      return engine::LossKind::kCrossEntropy;
    case v1::LOSS_MSE:
      return engine::LossKind::kMse;
    case v1::LOSS_GAUSSIAN_NLL:
      return engine::LossKind::kGaussianNll;
    default:
      return spec.task() == v1::TASK_REGRESSION ? engine::LossKind::kMse
                                                : engine::LossKind::kCrossEntropy;
  }
}

namespace {

// The engine's configuration of one layer: the fields of the message, with the engine's defaults
// for the optional ones that are not set.
engine::LayerConfig ToLayerConfig(const v1::LayerSpec& l, const std::string& where) {
  engine::LayerConfig c;
  c.type = l.type();
  c.units = l.units();
  c.init = l.init();
  c.use_bias = l.has_use_bias() ? l.use_bias() : true;
  c.rate = l.rate();
  c.classic_scaling = l.classic_scaling();
  if (l.has_negative_slope()) c.negative_slope = l.negative_slope();
  if (l.has_momentum()) c.momentum = l.momentum();
  if (l.has_epsilon()) c.epsilon = l.epsilon();
  c.return_sequences = l.return_sequences();
  c.recurrent_rate = l.recurrent_rate();
  c.zoneout_cell = l.zoneout_cell();
  c.zoneout_hidden = l.zoneout_hidden();
  c.per_unit = l.per_unit();
  if (l.has_init_rate()) c.init_rate = l.init_rate();
  if (l.has_temperature()) c.temperature = l.temperature();
  if (l.has_weight_regularizer()) c.weight_regularizer = l.weight_regularizer();
  if (l.has_dropout_regularizer()) c.dropout_regularizer = l.dropout_regularizer();
  if (l.has_length_scale()) c.length_scale = l.length_scale();
  if (l.has_log_sigma2_init()) c.log_sigma2_init = l.log_sigma2_init();
  if (l.has_prune_threshold()) c.prune_threshold = l.prune_threshold();
  if (l.has_kl_weight()) c.kl_weight = l.kl_weight();
  c.filters = l.filters();
  c.kernel_size = l.kernel_size();
  c.stride = l.stride();
  c.padding = l.padding();
  c.pool_size = l.pool_size();
  c.drop_connect_shared = l.drop_connect_shared();
  c.moment_matching = l.moment_matching();
  c.activation = l.activation();
  // The engine reads a negative regulariser as "derive it from the data": one that is set must
  // not be negative, or it would silently mean that.
  if ((l.has_weight_regularizer() && !(c.weight_regularizer >= 0)) ||
      (l.has_dropout_regularizer() && !(c.dropout_regularizer >= 0))) {
    throw InvalidArgument(where + ": weight_regularizer and dropout_regularizer must be >= 0");
  }
  return c;
}

std::string LayerField(int index) { return "spec.layers[" + std::to_string(index) + "]"; }

// A field that the layer's type does not read would be stored and shown while doing nothing:
// refuse every set field (a proto3 scalar that is not its default, an optional that is present)
// other than the type's own options. An unknown type is left to the planner, which names it.
void CheckOptionsRead(const v1::LayerSpec& l, int index) {
  const engine::LayerType* type = engine::FindLayerType(l.type());
  if (!type) return;
  std::vector<const google::protobuf::FieldDescriptor*> set;
  l.GetReflection()->ListFields(l, &set);
  for (const auto* field : set) {
    if (field->number() == v1::LayerSpec::kTypeFieldNumber || type->Reads(field->name())) continue;
    throw InvalidArgument(LayerField(index) + " (" + l.type() + "): field '" + field->name() +
                          "' does not apply to a " + l.type() + " layer; remove it");
  }
}

// The server's limits, imposed in layer order while the engine plans the network: the size
// options a layer reads before its checks, its parameters and output width after them.
engine::PlanHooks LimitHooks(const SpecLimits& limits, int64_t* params) {
  engine::PlanHooks hooks;
  hooks.before = [&limits](int i, const engine::LayerConfig& c, const engine::Shape&) {
    for (const auto& [field, value] : engine::SizeOptions(c)) {
      if (value > limits.max_width) {
        Fail(grpc::StatusCode::RESOURCE_EXHAUSTED,
             LayerField(i) + "." + field + " " + std::to_string(value) + " exceeds the limit " +
                 std::to_string(limits.max_width));
      }
    }
  };
  hooks.after = [&limits, params](int i, const engine::LayerConfig&,
                                  const engine::LayerPlan& plan) {
    *params = engine::SaturatingAdd(*params, plan.parameters);
    if (*params > limits.max_parameters) {
      Fail(grpc::StatusCode::RESOURCE_EXHAUSTED, "the model would have more than " +
                                                     std::to_string(limits.max_parameters) +
                                                     " parameters (at " + LayerField(i) + ")");
    }
    if (plan.output.Size() > limits.max_width) {
      Fail(grpc::StatusCode::RESOURCE_EXHAUSTED,
           LayerField(i) + " output " + plan.output.ToString() +
               " exceeds the width limit: more than " + std::to_string(limits.max_width) +
               " features");
    }
  };
  return hooks;
}

// The input shape, with its width limit.
engine::Shape ToInputShape(const v1::ModelSpec& spec, const SpecLimits& limits) {
  if (spec.input_shape().empty() || spec.input_shape_size() > 3) {
    throw InvalidArgument("spec.input_shape must have 1 to 3 dimensions, got " +
                          std::to_string(spec.input_shape_size()));
  }
  engine::Shape shape;
  int64_t width = 1;
  for (int i = 0; i < spec.input_shape_size(); ++i) {
    const int d = spec.input_shape(i);
    if (d <= 0) {
      throw InvalidArgument("spec.input_shape[" + std::to_string(i) + "] must be positive, got " +
                            std::to_string(d));
    }
    width *= d;
    if (width > limits.max_width) {
      Fail(grpc::StatusCode::RESOURCE_EXHAUSTED,
           "spec.input_shape has more than " + std::to_string(limits.max_width) + " features");
    }
    shape.dims.push_back(d);
  }
  return shape;
}

}  // namespace

engine::NetworkSpec ToNetworkSpec(const v1::ModelSpec& spec, const SpecLimits& limits) {
  engine::NetworkSpec out;
  out.input = ToInputShape(spec, limits);
  if (spec.layers().empty()) throw InvalidArgument("spec.layers must not be empty");
  if (spec.layers_size() > limits.max_layers) {
    Fail(grpc::StatusCode::RESOURCE_EXHAUSTED,
         "spec.layers has " + std::to_string(spec.layers_size()) + " layers, the limit is " +
             std::to_string(limits.max_layers));
  }
  CheckTask("spec.task", spec.task());
  if (!v1::Loss_IsValid(spec.loss())) {
    throw InvalidArgument("spec.loss is not a known loss: " + std::to_string(spec.loss()));
  }
  if (!std::isfinite(spec.tau()) || spec.tau() < 0) {
    throw InvalidArgument("spec.tau must be finite and >= 0, got " + std::to_string(spec.tau()));
  }
  for (int i = 0; i < spec.layers_size(); ++i) {
    CheckOptionsRead(spec.layers(i), i);
    out.layers.push_back(ToLayerConfig(spec.layers(i), LayerField(i)));
  }
  out.seed = spec.seed();
  // The engine validates every layer and gives the shapes and parameter counts, allocating
  // nothing: "spec.layers[1].rate must be in [0, 1), got 1.5".
  int64_t params = 0;
  try {
    engine::PlanNetwork(out, LimitHooks(limits, &params));
  } catch (const engine::LayerSpecError& e) {
    const std::string field = e.FieldMessage();
    throw InvalidArgument(LayerField(e.index()) +
                          (field.empty() ? ": " + e.message() : "." + field));
  }
  return out;
}

int64_t UnixMillisNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

void CheckHeadFor(const v1::ModelSpec& spec, const engine::Network& net) {
  const engine::Task task = ToEngine(spec.task());
  const engine::LossKind loss = ResolveLoss(spec);
  const int64_t outputs = net.output_shape().Size();
  const int64_t targets = task == engine::Task::kClassification
                              ? outputs
                              : (loss == engine::LossKind::kGaussianNll ? outputs / 2 : outputs);
  try {
    engine::CheckHead(task, loss, outputs, targets);
    if (loss == engine::LossKind::kGaussianNll && outputs % 2) {
      throw InvalidArgument(
          "gaussian_nll needs an even number of outputs (means, then "
          "log-variances), the network has " +
          std::to_string(outputs));
    }
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("spec: ") + e.what());
  }
}

}  // namespace

std::shared_ptr<Snapshot> NewSnapshot(const std::string& name, const v1::ModelSpec& spec,
                                      const SpecLimits& limits) {
  engine::NetworkSpec ns = ToNetworkSpec(spec, limits);
  auto s = std::make_shared<Snapshot>(engine::Network(ns));
  CheckHeadFor(spec, s->net);
  s->model = name;
  s->version = 1;
  s->spec = spec;
  s->task = ToEngine(spec.task());
  s->loss = ResolveLoss(spec);
  s->tau = spec.tau();
  s->created_unix_ms = UnixMillisNow();
  s->note = "created";
  return s;
}

void ToTensor(const engine::Matrix& m, v1::Tensor* out) {
  out->Clear();
  out->add_shape(m.rows());
  out->add_shape(m.cols());
  out->mutable_values()->Add(m.data(), m.data() + m.size());
}

void ToTensor(const Eigen::VectorXf& v, v1::Tensor* out) {
  out->Clear();
  out->add_shape(v.size());
  out->mutable_values()->Add(v.data(), v.data() + v.size());
}

// 0 * v is 0 for a finite v and NaN for an infinite or NaN one; eight independent sums let the
// compiler vectorise the loop (memcpy loads compile to unaligned vector loads).
bool CopyFinite(const char* src, float* dst, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) {
      float v;
      std::memcpy(&v, src + 4 * (i + k), 4);
      dst[i + k] = v;
      acc[k] += v * 0.0f;
    }
  }
  float sum = 0;
  for (; i < n; ++i) {
    float v;
    std::memcpy(&v, src + 4 * i, 4);
    dst[i] = v;
    sum += v * 0.0f;
  }
  for (float a : acc) sum += a;
  return sum == 0.0f;
}

namespace {

template <typename... Parts>
[[noreturn]] void FailField(const char* field, Parts&&... parts) {
  std::ostringstream msg;
  msg << field;
  (msg << ... << parts);
  throw InvalidArgument(msg.str());
}

}  // namespace

int64_t CheckBatchShape(std::span<const int64_t> shape, int64_t value_count, int64_t row_size,
                        const char* field) {
  if (shape.empty()) {
    FailField(field, ".shape is empty: expected [rows, ...] with ", row_size, " values a row");
  }
  int64_t rows = shape[0], per_row = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] <= 0) FailField(field, ".shape[", i, "] must be positive, got ", shape[i]);
    if (i > 0 &&
        (__builtin_mul_overflow(per_row, shape[i], &per_row) || per_row > (int64_t{1} << 40))) {
      FailField(field, ".shape is too large");
    }
  }
  if (shape.size() == 1) per_row = value_count / rows;
  if (per_row != row_size) {
    FailField(field, " rows have ", per_row, " values, the model expects ", row_size);
  }
  int64_t needed;
  if (__builtin_mul_overflow(rows, per_row, &needed)) {
    FailField(field, " has ", value_count, " values, its shape needs ", rows, " x ", per_row);
  }
  if (value_count != needed) {
    FailField(field, " has ", value_count, " values, its shape needs ", needed);
  }
  return rows;
}

void FailNonFinite(const engine::Matrix& m, const char* field) {
  for (int64_t r = 0; r < m.rows(); ++r)
    for (int64_t c = 0; c < m.cols(); ++c)
      if (!std::isfinite(m(r, c))) {
        FailField(field, " has a non-finite value (", m(r, c), ") at row ", r, ", column ", c);
      }
  throw std::logic_error("FailNonFinite: every value is finite");
}

engine::Matrix FromTensor(const v1::Tensor& t, int64_t row_size, const char* field) {
  const int64_t rows = CheckBatchShape({t.shape().data(), static_cast<size_t>(t.shape_size())},
                                       t.values_size(), row_size, field);
  engine::Matrix m(rows, row_size);
  if (!CopyFinite(reinterpret_cast<const char*>(t.values().data()), m.data(), m.size())) {
    FailNonFinite(m, field);
  }
  return m;
}

void ToStandardization(const engine::Standardizer& s, v1::Standardization* out) {
  out->Clear();
  if (s.empty()) return;
  out->mutable_mean()->Add(s.mean.data(), s.mean.data() + s.mean.size());
  out->mutable_scale()->Add(s.scale.data(), s.scale.data() + s.scale.size());
}

engine::Standardizer FromStandardization(const v1::Standardization& st, int64_t width,
                                         const std::string& field) {
  engine::Standardizer s;
  if (st.mean_size() == 0 && st.scale_size() == 0) return s;
  const int64_t n = st.mean_size();
  if (st.scale_size() != n || (width >= 0 && n != width)) {
    throw InvalidArgument("checkpoint " + field + " does not match the " +
                          (width >= 0 ? "input" : "target") + " width");
  }
  s.mean = Eigen::Map<const engine::RowVector>(st.mean().data(), n);
  s.scale = Eigen::Map<const engine::RowVector>(st.scale().data(), n);
  if (!s.mean.allFinite() || !s.scale.allFinite() || !(s.scale.array() > 0).all()) {
    throw InvalidArgument("checkpoint " + field + " needs finite means and positive scales");
  }
  return s;
}

void ToCheckpoint(const Snapshot& s, v1::Checkpoint* out) {
  out->Clear();
  out->set_model(s.model);
  out->set_version(s.version);
  *out->mutable_spec() = s.spec;
  for (int i = 0; i < s.net.size(); ++i) {
    for (const auto& p : s.net.layer(i).params()) {
      auto* t = out->add_parameters();
      t->set_layer(i);
      t->set_name(p.name);
      ToTensor(p.value, t->mutable_value());
    }
    for (const auto& p : s.net.layer(i).buffers()) {
      auto* t = out->add_buffers();
      t->set_layer(i);
      t->set_name(p.name);
      ToTensor(p.value, t->mutable_value());
    }
  }
  ToStandardization(s.standardizer, out->mutable_standardization());
  if (s.input_scale != 1.0f) out->set_input_scale(s.input_scale);
  ToStandardization(s.target_standardizer, out->mutable_target_standardization());
  out->set_steps(s.steps);
  for (const auto& h : s.history) *out->add_history() = h;
  out->set_created_unix_ms(s.created_unix_ms);
  out->set_note(s.note);
  for (const auto& c : s.class_names) out->add_class_names(c);
}

namespace {

void LoadTensors(const google::protobuf::RepeatedPtrField<v1::NamedTensor>& tensors,
                 engine::Network* net, bool buffers) {
  size_t expected = 0;
  for (int i = 0; i < net->size(); ++i)
    expected += buffers ? net->layer(i).buffers().size() : net->layer(i).params().size();
  if (static_cast<size_t>(tensors.size()) != expected) {
    throw InvalidArgument("checkpoint has " + std::to_string(tensors.size()) +
                          (buffers ? " buffers" : " parameters") + ", the spec needs " +
                          std::to_string(expected));
  }
  for (const auto& t : tensors) {
    if (t.layer() < 0 || t.layer() >= net->size()) {
      throw InvalidArgument("checkpoint tensor for layer " + std::to_string(t.layer()) +
                            " outside the network");
    }
    auto& list = buffers ? net->layer(t.layer()).buffers() : net->layer(t.layer()).params();
    engine::Parameter* target = nullptr;
    for (auto& p : list)
      if (p.name == t.name()) target = &p;
    if (!target) {
      throw InvalidArgument("checkpoint tensor '" + t.name() + "' of layer " +
                            std::to_string(t.layer()) + " is not in the spec");
    }
    const auto& v = t.value();
    if (v.shape_size() != 2 || v.shape(0) != target->value.rows() ||
        v.shape(1) != target->value.cols() ||
        static_cast<int64_t>(v.values_size()) != target->value.size()) {
      throw InvalidArgument("checkpoint tensor '" + t.name() + "' of layer " +
                            std::to_string(t.layer()) + " has the wrong shape");
    }
    target->value =
        engine::ConstMatrixMap(v.values().data(), target->value.rows(), target->value.cols());
    if (!target->value.allFinite()) {
      throw InvalidArgument("checkpoint tensor '" + t.name() + "' of layer " +
                            std::to_string(t.layer()) + " has non-finite values");
    }
  }
}

}  // namespace

std::shared_ptr<Snapshot> FromCheckpoint(const v1::Checkpoint& c, const SpecLimits& limits) {
  auto s = NewSnapshot(c.model(), c.spec(), limits);
  LoadTensors(c.parameters(), &s->net, false);
  LoadTensors(c.buffers(), &s->net, true);
  s->version = c.version();
  s->standardizer =
      FromStandardization(c.standardization(), s->net.input_shape().Size(), "standardization");
  s->target_standardizer =
      FromStandardization(c.target_standardization(), -1, "target_standardization");
  if (c.input_scale() != 0) {
    if (!(std::isfinite(c.input_scale()) && c.input_scale() > 0)) {
      throw InvalidArgument("checkpoint input_scale must be finite and positive, got " +
                            std::to_string(c.input_scale()));
    }
    s->input_scale = c.input_scale();
  }
  s->steps = c.steps();
  s->history.assign(c.history().begin(), c.history().end());
  s->created_unix_ms = c.created_unix_ms();
  s->note = c.note();
  s->class_names.assign(c.class_names().begin(), c.class_names().end());
  return s;
}

void ToStored(const engine::Dataset& d, const std::string& name, v1::StoredDataset* out) {
  out->Clear();
  out->set_name(name);
  out->set_task(ToProto(d.task));
  for (int v : d.input_shape.dims) out->add_input_shape(v);
  ToTensor(d.x, out->mutable_x());
  ToTensor(d.y, out->mutable_y());
  out->set_num_classes(d.num_classes);
  for (const auto& f : d.feature_names) out->add_feature_names(f);
  for (const auto& c : d.class_names) out->add_class_names(c);
  if (d.input_scale != 1.0f) out->set_input_scale(d.input_scale);
}

engine::Dataset FromStored(const v1::StoredDataset& s) {
  auto bad = [&](const std::string& why) {
    throw InvalidArgument("stored data set '" + s.name() + "' " + why);
  };
  if (s.task() != v1::TASK_UNSPECIFIED && !v1::Task_IsValid(s.task())) bad("has an unknown task");
  engine::Dataset d;
  d.task = ToEngine(s.task());
  for (int v : s.input_shape()) {
    if (v <= 0) bad("has a non-positive input_shape dimension");
    d.input_shape.dims.push_back(v);
  }
  const v1::Tensor& x = s.x();
  const v1::Tensor& y = s.y();
  if (x.shape_size() != 2 || y.shape_size() != 2 || x.shape(0) <= 0 || x.shape(0) != y.shape(0) ||
      x.shape(1) <= 0 || y.shape(1) <= 0 || x.shape(1) != d.input_shape.Size() ||
      x.values_size() != engine::SaturatingMul(x.shape(0), x.shape(1)) ||
      y.values_size() != engine::SaturatingMul(y.shape(0), y.shape(1))) {
    bad("has inconsistent shapes");
  }
  d.x = engine::ConstMatrixMap(x.values().data(), x.shape(0), x.shape(1));
  d.y = engine::ConstMatrixMap(y.values().data(), y.shape(0), y.shape(1));
  if (!d.x.allFinite() || !d.y.allFinite()) bad("has non-finite values");
  d.num_classes = s.num_classes();
  if (d.task == engine::Task::kClassification) {
    // Labels index the model's outputs: each must be a class below num_classes.
    if (d.y.cols() != 1) bad("has more than one label a row");
    for (int64_t r = 0; r < d.y.rows(); ++r) {
      const float v = d.y(r, 0);
      if (!(v >= 0 && v < d.num_classes && v == std::floor(v))) {
        bad("has label " + std::to_string(v) + " outside its " + std::to_string(d.num_classes) +
            " classes");
      }
    }
  }
  d.feature_names.assign(s.feature_names().begin(), s.feature_names().end());
  d.class_names.assign(s.class_names().begin(), s.class_names().end());
  if (s.input_scale() != 0) {
    if (!(std::isfinite(s.input_scale()) && s.input_scale() > 0)) bad("has a bad input_scale");
    d.input_scale = s.input_scale();
  }
  return d;
}

}  // namespace dropnet::service
