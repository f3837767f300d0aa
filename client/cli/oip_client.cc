#include "client/cli/oip_client.h"

#include <cstring>
#include <vector>

#include "inference/grpc_predict_v2.grpc.pb.h"

namespace dropnet::cli {

namespace dc = dropnet::client;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

namespace {

void Check(const grpc::Status& s) {
  if (!s.ok()) throw dc::ClientError(s.error_code(), s.error_message());
}

inference::ModelMetadataResponse Metadata(const dc::Client& c, const std::string& model) {
  auto stub = inference::GRPCInferenceService::NewStub(c.channel());
  grpc::ClientContext ctx;
  c.PrepareContext(&ctx);
  inference::ModelMetadataRequest req;
  req.set_name(model);
  inference::ModelMetadataResponse resp;
  Check(stub->ModelMetadata(&ctx, req, &resp));
  return resp;
}

ModelInferResponse Infer(const dc::Client& c, const ModelInferRequest& req) {
  auto stub = inference::GRPCInferenceService::NewStub(c.channel());
  grpc::ClientContext ctx;
  c.PrepareContext(&ctx);
  ModelInferResponse resp;
  Check(stub->ModelInfer(&ctx, req, &resp));
  return resp;
}

// A request for the rows of x, sent as raw little-endian floats.
ModelInferRequest Request(const std::string& model, const std::string& version,
                          const dc::Matrix& x) {
  ModelInferRequest req;
  req.set_model_name(model);
  req.set_model_version(version);
  auto* in = req.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  in->add_shape(x.rows());
  in->add_shape(x.cols());
  req.add_raw_input_contents(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float));
  return req;
}

// Output `name` of `resp` (raw contents) as a dropnet.v1 tensor, or its values.
template <typename T>
std::vector<T> Values(const ModelInferResponse& resp, const std::string& name,
                      std::vector<int64_t>* shape = nullptr) {
  for (int i = 0; i < resp.outputs_size(); ++i) {
    if (resp.outputs(i).name() != name) continue;
    if (shape) shape->assign(resp.outputs(i).shape().begin(), resp.outputs(i).shape().end());
    const std::string& raw = resp.raw_output_contents(i);
    std::vector<T> v(raw.size() / sizeof(T));
    std::memcpy(v.data(), raw.data(), v.size() * sizeof(T));
    return v;
  }
  throw dc::ClientError(grpc::StatusCode::INTERNAL, "the answer has no output '" + name + "'");
}

void ToTensor(const ModelInferResponse& resp, const std::string& name, v1::Tensor* t) {
  std::vector<int64_t> shape;
  const auto v = Values<float>(resp, name, &shape);
  t->mutable_shape()->Add(shape.begin(), shape.end());
  t->mutable_values()->Add(v.begin(), v.end());
}

template <typename Field>
void AddTo(const ModelInferResponse& resp, const std::string& name, Field* field) {
  for (auto v : Values<typename Field::value_type>(resp, name)) field->Add(v);
}

bool IsRegression(const inference::ModelMetadataResponse& m) {
  auto it = m.parameters().find("task");
  return it != m.parameters().end() && it->second.string_param() == "regression";
}

int64_t Version(const ModelInferResponse& resp) { return std::stoll(resp.model_version()); }

}  // namespace

v1::PredictResponse PredictV2(const dc::Client& c, const std::string& model,
                              const std::string& version, const dc::Matrix& x) {
  const bool regression = IsRegression(Metadata(c, model));
  ModelInferRequest req = Request(model, version, x);
  if (!regression) req.add_outputs()->set_name("predicted_class");
  req.add_outputs()->set_name(regression ? "mean" : "probabilities");
  const ModelInferResponse resp = Infer(c, req);
  v1::PredictResponse out;
  out.set_version(Version(resp));
  out.set_task(regression ? v1::TASK_REGRESSION : v1::TASK_CLASSIFICATION);
  ToTensor(resp, regression ? "mean" : "probabilities", out.mutable_outputs());
  if (!regression) {
    for (int64_t k : Values<int64_t>(resp, "predicted_class")) out.add_predicted_class(k);
  }
  return out;
}

v1::PredictUncertaintyResponse UncertaintyV2(const dc::Client& c, const std::string& model,
                                             const std::string& version, const dc::Matrix& x,
                                             int samples, std::optional<uint64_t> seed) {
  const auto meta = Metadata(c, model);
  const bool regression = IsRegression(meta);
  ModelInferRequest req = Request(model, version, x);
  auto& params = *req.mutable_parameters();
  params["mc_samples"].set_int64_param(
      samples > 0 ? samples : meta.parameters().at("default_mc_samples").int64_param());
  if (seed) params["seed"].set_uint64_param(*seed);
  const std::vector<std::string> names =
      regression
          ? std::vector<std::string>{"mean", "std", "variance", "interval_low", "interval_high"}
          : std::vector<std::string>{"probabilities",      "predicted_class",  "std",
                                     "predictive_entropy", "expected_entropy", "mutual_information",
                                     "variation_ratio"};
  for (const auto& n : names) req.add_outputs()->set_name(n);
  const ModelInferResponse resp = Infer(c, req);
  v1::PredictUncertaintyResponse out;
  out.set_version(Version(resp));
  out.set_num_samples(static_cast<int32_t>(resp.parameters().at("mc_samples").int64_param()));
  const auto& s = resp.parameters().at("seed");
  out.set_seed(s.has_uint64_param() ? s.uint64_param() : static_cast<uint64_t>(s.int64_param()));
  out.set_task(regression ? v1::TASK_REGRESSION : v1::TASK_CLASSIFICATION);
  ToTensor(resp, regression ? "mean" : "probabilities", out.mutable_mean());
  ToTensor(resp, "std", out.mutable_stddev());
  if (regression) {
    ToTensor(resp, "variance", out.mutable_total_variance());
    ToTensor(resp, "interval_low", out.mutable_lower());
    ToTensor(resp, "interval_high", out.mutable_upper());
  } else {
    for (int64_t k : Values<int64_t>(resp, "predicted_class")) out.add_predicted_class(k);
    AddTo(resp, "predictive_entropy", out.mutable_predictive_entropy());
    AddTo(resp, "expected_entropy", out.mutable_expected_entropy());
    AddTo(resp, "mutual_information", out.mutable_mutual_information());
    AddTo(resp, "variation_ratio", out.mutable_variation_ratio());
  }
  return out;
}

}  // namespace dropnet::cli
