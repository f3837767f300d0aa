#include "server/http/oip_routes.h"

#include <string>
#include <utility>

#include "server/service/status.h"

namespace dropnet::http {

using grpc::StatusCode;
using nlohmann::json;

namespace {

// A JSON array of a repeated protobuf field's values.
template <typename Repeated>
json Array(const Repeated& values) {
  json out = json::array();
  for (const auto& v : values) out.push_back(v);
  return out;
}

[[noreturn]] void Invalid(const std::string& message) {
  service::Fail(StatusCode::INVALID_ARGUMENT, message);
}

inference::InferParameter ParameterFromJson(const std::string& name, const json& v) {
  inference::InferParameter p;
  if (v.is_boolean()) {
    p.set_bool_param(v.get<bool>());
  } else if (v.is_number_unsigned()) {
    p.set_uint64_param(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    p.set_int64_param(v.get<int64_t>());
  } else if (v.is_number_float()) {
    p.set_double_param(v.get<double>());
  } else if (v.is_string()) {
    p.set_string_param(v.get<std::string>());
  } else {
    Invalid("parameters." + service::Printable(name) + " must be a bool, number or string");
  }
  return p;
}

json ParameterToJson(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam:
      return p.bool_param();
    case inference::InferParameter::kInt64Param:
      return p.int64_param();
    case inference::InferParameter::kUint64Param:
      return p.uint64_param();
    case inference::InferParameter::kDoubleParam:
      return p.double_param();
    case inference::InferParameter::kStringParam:
      return p.string_param();
    default:
      return nullptr;
  }
}

template <typename Map>
void ReadParameters(const json& body, const std::string& where, Map* out) {
  if (!body.contains("parameters")) return;
  const json& params = body.at("parameters");
  if (!params.is_object()) Invalid(where + "parameters must be an object");
  for (const auto& [k, v] : params.items()) (*out)[k] = ParameterFromJson(k, v);
}

// Appends the numbers of `data` (nested arrays flattened, row-major) to `out`.
void FlattenFloats(const json& data, const std::string& field, size_t* index,
                   google::protobuf::RepeatedField<float>* out) {
  if (data.is_array()) {
    for (const auto& d : data) FlattenFloats(d, field, index, out);
    return;
  }
  if (!data.is_number()) {
    Invalid(field + ".data[" + std::to_string(*index) + "] is not a number (FP32 expected)");
  }
  out->Add(static_cast<float>(data.get<double>()));
  ++*index;
}

void ReadInput(const json& in, size_t i, inference::ModelInferRequest* req) {
  const std::string field = "inputs[" + std::to_string(i) + "]";
  if (!in.is_object()) Invalid(field + " must be an object");
  auto* t = req->add_inputs();
  if (!in.contains("name") || !in["name"].is_string()) Invalid(field + ".name must be a string");
  t->set_name(in["name"].get<std::string>());
  if (!in.contains("datatype") || !in["datatype"].is_string()) {
    Invalid(field + ".datatype must be a string (FP32)");
  }
  t->set_datatype(in["datatype"].get<std::string>());
  if (!in.contains("shape") || !in["shape"].is_array()) {
    Invalid(field + ".shape must be an array of integers");
  }
  for (const auto& d : in["shape"]) {
    if (!d.is_number_integer()) Invalid(field + ".shape must be an array of integers");
    t->add_shape(d.get<int64_t>());
  }
  if (!in.contains("data")) Invalid(field + ".data is missing");
  if (t->datatype() == "FP32") {
    size_t index = 0;
    FlattenFloats(in["data"], field, &index, t->mutable_contents()->mutable_fp32_contents());
  }  // another datatype: ReadInferRequest names what it expects
  ReadParameters(in, field + ".", t->mutable_parameters());
}

}  // namespace

inference::ModelInferRequest InferRequestFromJson(const json& body, const std::string& model,
                                                  const std::string& version) {
  if (!body.is_object()) Invalid("the body must be a JSON object with \"inputs\"");
  inference::ModelInferRequest req;
  req.set_model_name(model);
  req.set_model_version(version);
  if (body.contains("id")) {
    if (!body["id"].is_string()) Invalid("id must be a string");
    req.set_id(body["id"].get<std::string>());
  }
  ReadParameters(body, "", req.mutable_parameters());
  if (!body.contains("inputs") || !body["inputs"].is_array()) {
    Invalid("inputs must be an array of tensors");
  }
  for (size_t i = 0; i < body["inputs"].size(); ++i) ReadInput(body["inputs"][i], i, &req);
  if (body.contains("outputs")) {
    if (!body["outputs"].is_array()) Invalid("outputs must be an array");
    for (const auto& o : body["outputs"]) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) {
        Invalid("outputs[] must be objects with a \"name\"");
      }
      req.add_outputs()->set_name(o["name"].get<std::string>());
    }
  }
  return req;
}

json InferResponseToJson(const inference::ModelInferResponse& resp) {
  json out = {{"model_name", resp.model_name()}, {"model_version", resp.model_version()}};
  if (!resp.id().empty()) out["id"] = resp.id();
  json params = json::object();
  for (const auto& [k, v] : resp.parameters()) params[k] = ParameterToJson(v);
  out["parameters"] = std::move(params);
  json outputs = json::array();
  for (const auto& t : resp.outputs()) {
    json data = json::array();
    // float -> double is exact, and the shortest form of that double reads back as the float.
    for (float v : t.contents().fp32_contents()) data.push_back(static_cast<double>(v));
    for (int64_t v : t.contents().int64_contents()) data.push_back(v);
    outputs.push_back({{"name", t.name()},
                       {"datatype", t.datatype()},
                       {"shape", Array(t.shape())},
                       {"data", std::move(data)}});
  }
  out["outputs"] = std::move(outputs);
  return out;
}

json ModelMetadataToJson(const inference::ModelMetadataResponse& m) {
  auto tensors = [](const auto& list) {
    json out = json::array();
    for (const auto& t : list) {
      out.push_back({{"name", t.name()}, {"datatype", t.datatype()}, {"shape", Array(t.shape())}});
    }
    return out;
  };
  json params = json::object();
  for (const auto& [k, v] : m.parameters()) {
    params[k] = ParameterToJson(v);
    if (k == "class_names" || k == "stochastic_layers") {
      params[k] = json::parse(v.string_param(), nullptr, /*allow_exceptions=*/false);
    }
  }
  return {{"name", m.name()},
          {"versions", Array(m.versions())},
          {"platform", m.platform()},
          {"inputs", tensors(m.inputs())},
          {"outputs", tensors(m.outputs())},
          {"parameters", std::move(params)}};
}

namespace {

constexpr char kModel[] = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";

std::string VersionOf(const httplib::Request& req) {
  return req.matches.size() > 2 ? std::string(req.matches[2]) : std::string();
}

void RegisterHealthRoutes(HttpServer* http, service::InferenceService* oip) {
  http->Get("/v2/health/live", "ServerLive", Access::kOpen,
            [](const httplib::Request&, httplib::Response& res) {
              SendJson(res, {{"live", true}});
            });
  http->Get("/v2/health/ready", "ServerReady", Access::kOpen,
            [oip](const httplib::Request&, httplib::Response& res) {
              const bool ready = oip->ready();
              SendJson(res, {{"ready", ready}}, ready ? 200 : 503);
            });
  http->Get("/v2", "ServerMetadata", Access::kPredict,
            [](const httplib::Request&, httplib::Response& res) {
              inference::ServerMetadataResponse m;
              service::InferenceService::ServerMetadataSync(&m);
              SendJson(res, {{"name", m.name()},
                             {"version", m.version()},
                             {"extensions", Array(m.extensions())}});
            });
}

}  // namespace

void RegisterOipRoutes(HttpServer* http, service::Server* server) {
  service::InferenceService* oip = &server->inference();
  service::Registry* registry = &server->registry();
  RegisterHealthRoutes(http, oip);
  http->Get(kModel, "ModelMetadata", Access::kPredict,
            [oip](const httplib::Request& req, httplib::Response& res) {
              inference::ModelMetadataRequest r;
              r.set_name(req.matches[1]);
              r.set_version(VersionOf(req));
              inference::ModelMetadataResponse m;
              const grpc::Status st = oip->ModelMetadataSync(r, &m);
              if (!st.ok()) return SendStatus(res, st);
              SendJson(res, ModelMetadataToJson(m));
            });
  http->Get(std::string(kModel) + "/ready", "ModelReady", Access::kPredict,
            [oip, registry](const httplib::Request& req, httplib::Response& res) {
              const std::string name = req.matches[1];
              registry->Get(name);  // NOT_FOUND for an unknown model
              const bool ready = oip->ModelReadySync(name, VersionOf(req));
              SendJson(res, {{"name", name}, {"ready", ready}}, ready ? 200 : 503);
            });
  http->Post(std::string(kModel) + "/infer", "ModelInfer", Access::kPredict,
             [oip](const httplib::Request& req, httplib::Response& res) {
               const json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
               if (body.is_discarded()) return SendError(res, 400, "the body is not valid JSON");
               const inference::ModelInferRequest r =
                   InferRequestFromJson(body, req.matches[1], VersionOf(req));
               inference::ModelInferResponse answer;
               const grpc::Status st = oip->InferSync(r, &answer);
               if (!st.ok()) return SendStatus(res, st);
               SendJson(res, InferResponseToJson(answer));
             });
}

}  // namespace dropnet::http
