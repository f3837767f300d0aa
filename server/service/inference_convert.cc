#include "server/service/inference_convert.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string_view>

#include "server/service/convert.h"
#include "server/service/status.h"

namespace dropnet::service {

using grpc::StatusCode;
using inference::InferParameter;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

namespace {

// `s` read whole as a T (std::from_chars' format), or nothing.
template <typename T>
std::optional<T> WholeString(const std::string& s) {
  T out{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return out;
}

bool IsClassifier(const Snapshot& s) { return s.task == engine::Task::kClassification; }

std::string Join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string ShapeText(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

// `text` as a JSON string literal.
std::string JsonString(std::string_view text) {
  std::string out = "\"";
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// The input's shape in the metadata: [-1, the model's input dims...].
std::vector<int64_t> InputShape(const Snapshot& s) {
  std::vector<int64_t> dims{-1};
  for (int d : s.net.input_shape().dims) dims.push_back(d);
  return dims;
}

[[noreturn]] void Invalid(const std::string& message) {
  Fail(StatusCode::INVALID_ARGUMENT, message);
}

// An integer parameter: int64_param, uint64_param, a whole double_param or a decimal
// string_param; `name` in the error otherwise.
uint64_t UnsignedParameter(const std::string& name, const InferParameter& v) {
  switch (v.parameter_choice_case()) {
    case InferParameter::kInt64Param:
      if (v.int64_param() >= 0) return static_cast<uint64_t>(v.int64_param());
      Invalid("parameter " + name + " must be >= 0, got " + std::to_string(v.int64_param()));
    case InferParameter::kUint64Param:
      return v.uint64_param();
    case InferParameter::kDoubleParam:
      if (v.double_param() >= 0 && v.double_param() < 0x1p64 &&
          v.double_param() == static_cast<double>(static_cast<uint64_t>(v.double_param()))) {
        return static_cast<uint64_t>(v.double_param());
      }
      Invalid("parameter " + name + " must be a whole number >= 0, got " +
              std::to_string(v.double_param()));
    case InferParameter::kStringParam: {
      const std::string& s = v.string_param();
      if (auto out = WholeString<uint64_t>(s)) return *out;
      Invalid("parameter " + name + " must be a whole number >= 0, got '" + Printable(s) + "'");
    }
    default:
      Invalid("parameter " + name + " must be an integer, got a bool");
  }
}

double DoubleParameter(const std::string& name, const InferParameter& v) {
  switch (v.parameter_choice_case()) {
    case InferParameter::kDoubleParam:
      return v.double_param();
    case InferParameter::kStringParam: {
      const std::string& s = v.string_param();
      if (auto out = WholeString<double>(s)) return *out;
      Invalid("parameter " + name + " must be a number, got '" + Printable(s) + "'");
    }
    default:
      Invalid("parameter " + name + " must be a number (double_param or string_param)");
  }
}

// The request's parameters into `q`; parameters dropnet does not know are ignored, as the
// protocol allows.
void ReadParameters(const ModelInferRequest& req, PredictionQuery* q) {
  const auto& params = req.parameters();
  if (auto it = params.find("mc_samples"); it != params.end()) {
    const uint64_t t = UnsignedParameter("mc_samples", it->second);
    if (t == 0 || t > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
      Invalid("parameter mc_samples must be a positive number of Monte-Carlo samples, got " +
              std::to_string(t));
    }
    q->monte_carlo = true;
    q->samples = static_cast<int>(t);
  }
  const bool seed = params.count("seed") > 0, interval = params.count("interval") > 0;
  if (!q->monte_carlo && (seed || interval)) {
    Invalid(std::string("parameter ") + (seed ? "seed" : "interval") +
            " applies to Monte-Carlo dropout: give mc_samples too");
  }
  if (seed) q->seed = UnsignedParameter("seed", params.at("seed"));
  if (interval) {
    q->interval = DoubleParameter("interval", params.at("interval"));
    if (!(q->interval > 0 && q->interval < 1)) {
      Invalid("parameter interval must be in (0, 1), got " + std::to_string(q->interval));
    }
  }
  // A fresh seed a JSON number (a double) carries exactly.
  if (q->monte_carlo && !q->seed) q->seed = FreshSeed() >> 11;
}

// The one input tensor into plan->inputs, its values left where they are in `req`.
void ReadInput(const ModelInferRequest& req, const Snapshot& snap, InferPlan* plan) {
  if (req.inputs_size() != 1) {
    Invalid("the model takes 1 input ('" + std::string(kInputName) + "', FP32, shape " +
            ShapeText(InputShape(snap)) + "), got " + std::to_string(req.inputs_size()));
  }
  const auto& in = req.inputs(0);
  const std::string field = "inputs[0] '" + Printable(in.name()) + "'";
  if (in.datatype() != "FP32") {
    Invalid(field + " datatype must be FP32, got '" + Printable(in.datatype()) + "'");
  }
  const int64_t row_size = snap.net.input_shape().Size();
  int64_t per_row = 1;
  bool positive = in.shape_size() >= 2;
  for (int i = 0; i < in.shape_size() && positive; ++i) {
    positive = in.shape(i) > 0 && in.shape(i) <= (int64_t{1} << 40);
    if (i > 0 && positive) per_row *= in.shape(i);
    positive = positive && per_row <= (int64_t{1} << 40);
  }
  if (!positive || per_row != row_size) {
    std::vector<int64_t> got(in.shape().begin(), in.shape().end());
    Invalid(field + " shape " + ShapeText(got) + " does not fit the model: expected " +
            ShapeText(InputShape(snap)) + " or [-1, " + std::to_string(row_size) +
            "] with a positive batch");
  }
  plan->inputs.shape.assign(in.shape().begin(), in.shape().end());
  const auto& c = in.contents();
  const bool other = c.bool_contents_size() || c.int_contents_size() || c.int64_contents_size() ||
                     c.uint_contents_size() || c.uint64_contents_size() || c.fp64_contents_size() ||
                     c.bytes_contents_size();
  if (other) Invalid(field + " is FP32: its values go in contents.fp32_contents");
  if (req.raw_input_contents_size() > 0) {
    if (req.raw_input_contents_size() != 1) {
      Invalid("raw_input_contents has " + std::to_string(req.raw_input_contents_size()) +
              " entries, expected one for the one input");
    }
    if (c.fp32_contents_size() > 0) {
      Invalid(field + " has values in both contents and raw_input_contents: give one");
    }
    const std::string& raw = req.raw_input_contents(0);
    if (raw.size() % 4 != 0) {
      Invalid("raw_input_contents[0] has " + std::to_string(raw.size()) +
              " bytes, not a whole number of FP32 values (4 bytes each)");
    }
    plan->inputs.values.emplace_back(raw);
    plan->inputs.value_bytes = static_cast<int64_t>(raw.size());
    plan->raw_output = true;
  } else {
    const auto& v = c.fp32_contents();
    plan->inputs.values.emplace_back(reinterpret_cast<const char*>(v.data()),
                                     static_cast<size_t>(v.size()) * sizeof(float));
    plan->inputs.value_bytes = static_cast<int64_t>(v.size()) * 4;
  }
}

// The requested outputs, checked against those available.
void ReadOutputs(const ModelInferRequest& req, const Snapshot& snap, InferPlan* plan) {
  const bool mc = plan->query.monte_carlo;
  if (req.outputs_size() == 0) {
    plan->outputs = DefaultOutputs(snap, mc);
    return;
  }
  const auto available = AvailableOutputs(snap, mc);
  for (const auto& o : req.outputs()) {
    if (std::find(available.begin(), available.end(), o.name()) == available.end()) {
      Invalid("output '" + Printable(o.name()) + "' is not produced by " +
              (IsClassifier(snap) ? "a classifier" : "a regressor") + " in " +
              (mc ? "Monte-Carlo mode" : "eval mode (give mc_samples for uncertainty)") +
              "; available: " + Join(available));
    }
    if (std::find(plan->outputs.begin(), plan->outputs.end(), o.name()) == plan->outputs.end()) {
      plan->outputs.push_back(o.name());
    }
  }
  plan->query.keep_samples =
      std::find(plan->outputs.begin(), plan->outputs.end(), kOutSamples) != plan->outputs.end();
}

ModelInferResponse::InferOutputTensor* AddOutput(ModelInferResponse* resp, const std::string& name,
                                                 const char* datatype, std::vector<int64_t> shape) {
  auto* t = resp->add_outputs();
  t->set_name(name);
  t->set_datatype(datatype);
  t->mutable_shape()->Add(shape.begin(), shape.end());
  return t;
}

void AddFloats(ModelInferResponse* resp, const std::string& name, const engine::Matrix& m) {
  auto* t = AddOutput(resp, name, "FP32", {m.rows(), m.cols()});
  t->mutable_contents()->mutable_fp32_contents()->Add(m.data(), m.data() + m.size());
}

void AddFloats(ModelInferResponse* resp, const std::string& name, const Eigen::VectorXf& v) {
  auto* t = AddOutput(resp, name, "FP32", {v.size()});
  t->mutable_contents()->mutable_fp32_contents()->Add(v.data(), v.data() + v.size());
}

// Moves every output's values into raw_output_contents (little-endian), as Triton answers a
// request that sent raw inputs.
void MoveToRaw(ModelInferResponse* resp) {
  for (auto& t : *resp->mutable_outputs()) {
    std::string* raw = resp->add_raw_output_contents();
    const auto& c = t.contents();
    if (c.fp32_contents_size() > 0) {
      raw->assign(reinterpret_cast<const char*>(c.fp32_contents().data()),
                  c.fp32_contents_size() * sizeof(float));
    } else if (c.int64_contents_size() > 0) {
      raw->assign(reinterpret_cast<const char*>(c.int64_contents().data()),
                  c.int64_contents_size() * sizeof(int64_t));
    }
    t.clear_contents();
  }
}

void SetInt(ModelInferResponse* resp, const char* name, int64_t value) {
  (*resp->mutable_parameters())[name].set_int64_param(value);
}

}  // namespace

SnapshotPtr ResolveModelVersion(const Registry& registry, const std::string& model,
                                const std::string& version) {
  return registry.Resolve(model, version);
}

std::vector<std::string> AvailableOutputs(const Snapshot& snap, bool monte_carlo) {
  if (IsClassifier(snap)) {
    if (!monte_carlo) return {kOutProbabilities, kOutPredictedClass};
    return {kOutProbabilities,     kOutPredictedClass,  kOutStd,
            kOutPredictiveEntropy, kOutExpectedEntropy, kOutMutualInformation,
            kOutVariationRatio,    kOutSamples};
  }
  if (!monte_carlo) return {kOutMean, kOutVariance};
  return {kOutMean, kOutStd, kOutVariance, kOutIntervalLow, kOutIntervalHigh, kOutSamples};
}

std::vector<std::string> DefaultOutputs(const Snapshot& snap, bool monte_carlo) {
  if (IsClassifier(snap)) {
    if (!monte_carlo) return {kOutProbabilities, kOutPredictedClass};
    return {kOutProbabilities,     kOutPredictedClass,    kOutStd,
            kOutPredictiveEntropy, kOutMutualInformation, kOutVariationRatio};
  }
  if (!monte_carlo) {
    if (snap.loss == engine::LossKind::kGaussianNll) return {kOutMean, kOutVariance};
    return {kOutMean};
  }
  return {kOutMean, kOutStd, kOutIntervalLow, kOutIntervalHigh};
}

InferPlan ReadInferRequest(const ModelInferRequest& req, const Snapshot& snap) {
  InferPlan plan;
  plan.query.field = "inputs[0]";
  plan.query.instead = "ModelInfer without mc_samples";
  ReadParameters(req, &plan.query);
  ReadInput(req, snap, &plan);
  ReadOutputs(req, snap, &plan);
  return plan;
}

void WriteInferResponse(const ModelInferRequest& req, const InferPlan& plan, const Snapshot& snap,
                        const Prediction& p, ModelInferResponse* resp) {
  resp->set_model_name(snap.model);
  resp->set_model_version(std::to_string(snap.version));
  resp->set_id(req.id());
  SetInt(resp, "version", snap.version);
  const bool mc = plan.query.monte_carlo;
  if (mc) {
    SetInt(resp, "mc_samples", p.options.samples);
    auto& seed = (*resp->mutable_parameters())["seed"];
    if (p.options.seed <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      seed.set_int64_param(static_cast<int64_t>(p.options.seed));
    } else {
      seed.set_uint64_param(p.options.seed);
    }
  }
  const engine::Matrix& mean = mc ? p.mc.mean : p.output;
  for (const auto& name : plan.outputs) {
    if (name == kOutProbabilities || name == kOutMean) {
      AddFloats(resp, name, mean);
    } else if (name == kOutPredictedClass) {
      auto* t = AddOutput(resp, name, "INT64", {mean.rows()});
      auto* v = t->mutable_contents()->mutable_int64_contents();
      if (mc) {
        v->Add(p.mc.predicted_class.begin(), p.mc.predicted_class.end());
      } else {
        for (int64_t r = 0; r < mean.rows(); ++r) {  // as dropnet.v1 Predict chooses
          Eigen::Index arg;
          mean.row(r).maxCoeff(&arg);
          v->Add(arg);
        }
      }
    } else if (name == kOutVariance) {
      const engine::Matrix& var = mc ? p.mc.total_variance : p.variance;
      if (var.size() == 0) {
        Invalid("output variance needs a model with a Gaussian head (or mc_samples)");
      }
      AddFloats(resp, name, var);
    } else if (name == kOutStd) {
      AddFloats(resp, name, p.mc.stddev);
    } else if (name == kOutPredictiveEntropy) {
      AddFloats(resp, name, p.mc.predictive_entropy);
    } else if (name == kOutExpectedEntropy) {
      AddFloats(resp, name, p.mc.expected_entropy);
    } else if (name == kOutMutualInformation) {
      AddFloats(resp, name, p.mc.mutual_information);
    } else if (name == kOutVariationRatio) {
      AddFloats(resp, name, p.mc.variation_ratio);
    } else if (name == kOutIntervalLow) {
      AddFloats(resp, name, p.mc.lower);
    } else if (name == kOutIntervalHigh) {
      AddFloats(resp, name, p.mc.upper);
    } else if (name == kOutSamples) {
      const int64_t cols = mean.cols();
      auto* t = AddOutput(resp, name, "FP32", {p.options.samples, p.rows, cols});
      auto* v = t->mutable_contents()->mutable_fp32_contents();
      for (const auto& m : p.mc.sample_outputs) v->Add(m.data(), m.data() + m.size());
    }
  }
  if (plan.raw_output) MoveToRaw(resp);
}

void DescribeModel(const Snapshot& snap, int default_samples,
                   inference::ModelMetadataResponse* resp) {
  resp->set_name(snap.model);
  resp->add_versions(std::to_string(snap.version));
  resp->set_platform("dropnet");
  auto* in = resp->add_inputs();
  in->set_name(kInputName);
  in->set_datatype("FP32");
  for (int64_t d : InputShape(snap)) in->add_shape(d);
  const int64_t c = snap.net.output_shape().Size();
  for (const auto& name : AvailableOutputs(snap, /*monte_carlo=*/true)) {
    auto* out = resp->add_outputs();
    out->set_name(name);
    out->set_datatype(name == kOutPredictedClass ? "INT64" : "FP32");
    if (name == kOutSamples) out->add_shape(-1);
    out->add_shape(-1);
    const bool per_row = name == kOutPredictedClass || name == kOutPredictiveEntropy ||
                         name == kOutExpectedEntropy || name == kOutMutualInformation ||
                         name == kOutVariationRatio;
    if (!per_row) out->add_shape(c);
  }
  auto& params = *resp->mutable_parameters();
  params["task"].set_string_param(IsClassifier(snap) ? "classification" : "regression");
  std::string names = "[";
  for (size_t i = 0; i < snap.class_names.size(); ++i) {
    names += (i ? "," : "") + JsonString(snap.class_names[i]);
  }
  params["class_names"].set_string_param(names + "]");
  std::string layers = "[";
  for (int i = 0, n = 0; i < snap.net.size(); ++i) {
    if (!snap.net.layer(i).IsStochastic()) continue;
    layers += (n++ ? "," : "") + JsonString(std::to_string(i) + ":" + snap.net.layer(i).Type());
  }
  params["stochastic_layers"].set_string_param(layers + "]");
  params["default_mc_samples"].set_int64_param(default_samples);
}

}  // namespace dropnet::service
