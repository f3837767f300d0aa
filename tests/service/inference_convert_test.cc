// The Open Inference Protocol conversions (inference_convert.h): a ModelInferRequest read against
// a model (shapes, datatypes, raw contents, parameters, requested outputs, their errors), the
// response written from the prediction core's result, the model's metadata and the resolution of
// a version string.
#include "server/service/inference_convert.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>

#include "server/service/convert.h"
#include "server/service/service.h"
#include "server/service/status.h"

namespace dropnet::service {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;

// input [2, 2] -> flatten -> dense 8 -> relu -> dropout 0.5 -> dense 3 (or 1 for regression).
std::shared_ptr<Snapshot> MakeSnapshot(bool classifier) {
  const std::string json = std::string(R"({"inputShape": [2, 2], "seed": 3, "task": ")") +
                           (classifier ? "TASK_CLASSIFICATION" : "TASK_REGRESSION") +
                           R"(", "layers": [{"type": "flatten"}, {"type": "dense", "units": 8},
      {"type": "relu"}, {"type": "dropout", "rate": 0.5},
      {"type": "dense", "units": )" +
                           (classifier ? "3" : "1") + "}]}";
  v1::ModelSpec spec;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json, &spec).ok());
  auto snap = NewSnapshot("m", spec, SpecLimits{});
  if (classifier) snap->class_names = {"cat", "dog \"big\"", "owl"};
  return snap;
}

ModelInferRequest Request(std::vector<int64_t> shape, std::vector<float> values) {
  ModelInferRequest req;
  req.set_model_name("m");
  req.set_id("req-1");
  auto* in = req.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  in->mutable_shape()->Add(shape.begin(), shape.end());
  in->mutable_contents()->mutable_fp32_contents()->Add(values.begin(), values.end());
  return req;
}

std::string ErrorOf(const ModelInferRequest& req, const Snapshot& snap) {
  try {
    ReadInferRequest(req, snap);
  } catch (const ServiceError& e) {
    EXPECT_EQ(e.code(), grpc::StatusCode::INVALID_ARGUMENT) << e.what();
    return e.what();
  }
  return "";
}

ModelInferResponse Answer(const ModelInferRequest& req, const Snapshot& snap) {
  const InferPlan plan = ReadInferRequest(req, snap);
  const Prediction p = RunPrediction(snap, plan.inputs, plan.query, ServiceConfig{}, 1, nullptr);
  ModelInferResponse resp;
  WriteInferResponse(req, plan, snap, p, &resp);
  return resp;
}

const ModelInferResponse::InferOutputTensor* Output(const ModelInferResponse& r,
                                                    const std::string& name) {
  for (const auto& o : r.outputs())
    if (o.name() == name) return &o;
  return nullptr;
}

TEST(InferConvertTest, ReadsFp32ContentsWithAnyBatchAndShape) {
  auto snap = MakeSnapshot(true);
  for (auto shape : {std::vector<int64_t>{3, 4}, std::vector<int64_t>{3, 2, 2}}) {
    std::vector<float> v(12);
    for (int i = 0; i < 12; ++i) v[i] = 0.25f * i;
    const InferPlan plan = ReadInferRequest(Request(shape, v), *snap);
    EXPECT_FALSE(plan.query.monte_carlo);
    EXPECT_FALSE(plan.raw_output);
    const engine::Matrix x = plan.inputs.ToMatrix(4, "inputs[0]");
    ASSERT_EQ(x.rows(), 3);
    EXPECT_EQ(x(2, 3), 0.25f * 11);
    EXPECT_EQ(plan.outputs, (std::vector<std::string>{"probabilities", "predicted_class"}));
  }
}

TEST(InferConvertTest, RawInputsAnswerRawAndMatchContents) {
  auto snap = MakeSnapshot(true);
  const std::vector<float> v{1, -2, 3.5f, 0.125f, 7, 8, -9, 10};
  ModelInferRequest with_contents = Request({2, 4}, v);
  ModelInferRequest raw = Request({2, 4}, {});
  raw.add_raw_input_contents(std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
  const ModelInferResponse a = Answer(with_contents, *snap), b = Answer(raw, *snap);
  ASSERT_EQ(b.raw_output_contents_size(), 2);
  EXPECT_EQ(a.raw_output_contents_size(), 0);
  const auto& probs = Output(a, "probabilities")->contents().fp32_contents();
  ASSERT_EQ(probs.size(), 6);
  EXPECT_EQ(std::memcmp(probs.data(), b.raw_output_contents(0).data(), 24), 0);
  EXPECT_EQ(Output(b, "probabilities")->contents().fp32_contents_size(), 0);
  EXPECT_EQ(b.raw_output_contents(1).size(), 2 * sizeof(int64_t));  // predicted_class INT64
  EXPECT_EQ(a.model_version(), "1");
  EXPECT_EQ(a.id(), "req-1");
  EXPECT_EQ(a.parameters().at("version").int64_param(), 1);
}

TEST(InferConvertTest, ShapeAndDatatypeErrorsSayWhatWasExpected) {
  auto snap = MakeSnapshot(true);
  EXPECT_EQ(ErrorOf(Request({2, 3}, std::vector<float>(6)), *snap),
            "inputs[0] 'input' shape [2, 3] does not fit the model: expected [-1, 2, 2] or "
            "[-1, 4] with a positive batch");
  EXPECT_EQ(ErrorOf(Request({4}, std::vector<float>(4)), *snap),
            "inputs[0] 'input' shape [4] does not fit the model: expected [-1, 2, 2] or [-1, 4] "
            "with a positive batch");
  auto fp64 = Request({1, 4}, {});
  fp64.mutable_inputs(0)->set_datatype("FP64");
  EXPECT_EQ(ErrorOf(fp64, *snap), "inputs[0] 'input' datatype must be FP32, got 'FP64'");
  auto both = Request({1, 4}, {1, 2, 3, 4});
  both.add_raw_input_contents(std::string(16, '\0'));
  EXPECT_EQ(ErrorOf(both, *snap),
            "inputs[0] 'input' has values in both contents and raw_input_contents: give one");
  auto odd = Request({1, 4}, {});
  odd.add_raw_input_contents(std::string(10, '\0'));
  EXPECT_EQ(ErrorOf(odd, *snap),
            "raw_input_contents[0] has 10 bytes, not a whole number of FP32 values (4 bytes each)");
  auto two = Request({1, 4}, {1, 2, 3, 4});
  *two.add_inputs() = two.inputs(0);
  EXPECT_EQ(ErrorOf(two, *snap),
            "the model takes 1 input ('input', FP32, shape [-1, 2, 2]), got 2");
  // Too few values for the shape: the core's check, naming the input.
  auto few = Request({2, 4}, {1, 2, 3});
  const InferPlan plan = ReadInferRequest(few, *snap);
  try {
    RunPrediction(*snap, plan.inputs, plan.query, ServiceConfig{}, 1, nullptr);
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_EQ(std::string(e.what()), "inputs[0] has 3 values, its shape needs 8");
  }
}

TEST(InferConvertTest, ParametersAndRequestedOutputs) {
  auto snap = MakeSnapshot(true);
  auto req = Request({1, 4}, {1, 2, 3, 4});
  (*req.mutable_parameters())["mc_samples"].set_int64_param(20);
  (*req.mutable_parameters())["seed"].set_string_param("42");
  req.add_outputs()->set_name("mutual_information");
  req.add_outputs()->set_name("samples");
  const InferPlan plan = ReadInferRequest(req, *snap);
  EXPECT_TRUE(plan.query.monte_carlo);
  EXPECT_EQ(plan.query.samples, 20);
  EXPECT_EQ(*plan.query.seed, 42u);
  EXPECT_TRUE(plan.query.keep_samples);
  const ModelInferResponse r = Answer(req, *snap);
  ASSERT_EQ(r.outputs_size(), 2);
  EXPECT_EQ(r.outputs(0).name(), "mutual_information");
  EXPECT_EQ(r.outputs(1).name(), "samples");
  EXPECT_EQ(std::vector<int64_t>(r.outputs(1).shape().begin(), r.outputs(1).shape().end()),
            (std::vector<int64_t>{20, 1, 3}));
  EXPECT_EQ(r.parameters().at("seed").int64_param(), 42);
  EXPECT_EQ(r.parameters().at("mc_samples").int64_param(), 20);

  auto bad = Request({1, 4}, {1, 2, 3, 4});
  bad.add_outputs()->set_name("std");
  EXPECT_EQ(ErrorOf(bad, *snap),
            "output 'std' is not produced by a classifier in eval mode (give mc_samples for "
            "uncertainty); available: probabilities, predicted_class");
  auto seed_only = Request({1, 4}, {1, 2, 3, 4});
  (*seed_only.mutable_parameters())["seed"].set_int64_param(1);
  EXPECT_EQ(ErrorOf(seed_only, *snap),
            "parameter seed applies to Monte-Carlo dropout: give mc_samples too");
  auto zero = Request({1, 4}, {1, 2, 3, 4});
  (*zero.mutable_parameters())["mc_samples"].set_int64_param(0);
  EXPECT_EQ(ErrorOf(zero, *snap),
            "parameter mc_samples must be a positive number of Monte-Carlo samples, got 0");
  auto text = Request({1, 4}, {1, 2, 3, 4});
  (*text.mutable_parameters())["mc_samples"].set_string_param("many");
  EXPECT_EQ(ErrorOf(text, *snap), "parameter mc_samples must be a whole number >= 0, got 'many'");
  auto interval = Request({1, 4}, {1, 2, 3, 4});
  (*interval.mutable_parameters())["mc_samples"].set_int64_param(5);
  (*interval.mutable_parameters())["interval"].set_double_param(1.5);
  EXPECT_EQ(ErrorOf(interval, *snap), "parameter interval must be in (0, 1), got 1.500000");
}

TEST(InferConvertTest, FreshSeedsFitAJsonNumberAndAreEchoed) {
  auto snap = MakeSnapshot(true);
  auto req = Request({1, 4}, {1, 2, 3, 4});
  (*req.mutable_parameters())["mc_samples"].set_int64_param(3);
  const ModelInferResponse r = Answer(req, *snap);
  const int64_t seed = r.parameters().at("seed").int64_param();
  EXPECT_GE(seed, 0);
  EXPECT_LT(seed, int64_t{1} << 53);
  // The echoed seed gives the same answer again.
  (*req.mutable_parameters())["seed"].set_int64_param(seed);
  const ModelInferResponse again = Answer(req, *snap);
  const auto& a = Output(r, "std")->contents().fp32_contents();
  const auto& b = Output(again, "std")->contents().fp32_contents();
  ASSERT_EQ(a.size(), 3);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), 12), 0);
}

TEST(InferConvertTest, RegressorOutputs) {
  auto snap = MakeSnapshot(false);
  auto req = Request({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
  (*req.mutable_parameters())["mc_samples"].set_int64_param(10);
  (*req.mutable_parameters())["seed"].set_int64_param(7);
  (*req.mutable_parameters())["interval"].set_string_param("0.5");
  const ModelInferResponse r = Answer(req, *snap);
  std::vector<std::string> names;
  for (const auto& o : r.outputs()) names.push_back(o.name());
  EXPECT_EQ(names, (std::vector<std::string>{"mean", "std", "interval_low", "interval_high"}));
  const float mean = Output(r, "mean")->contents().fp32_contents(0);
  const float low = Output(r, "interval_low")->contents().fp32_contents(0);
  const float high = Output(r, "interval_high")->contents().fp32_contents(0);
  EXPECT_LT(low, mean);
  EXPECT_GT(high, mean);
  auto cls = Request({1, 4}, {1, 2, 3, 4});
  cls.add_outputs()->set_name("predicted_class");
  EXPECT_EQ(ErrorOf(cls, *snap),
            "output 'predicted_class' is not produced by a regressor in eval mode (give "
            "mc_samples for uncertainty); available: mean, variance");
}

TEST(InferConvertTest, ResolvesVersionStrings) {
  // A directory of this process's own (other checkouts may run the suite at the same time).
  const std::string root =
      testing::TempDir() + "/infer-convert-store-" + std::to_string(::getpid());
  std::filesystem::remove_all(root);  // a store left by an earlier run
  ModelStore store(root, true);
  Registry registry(&store, SpecLimits{});
  v1::ModelSpec spec;
  spec.add_input_shape(2);
  auto* l = spec.add_layers();
  l->set_type("dense");
  l->set_units(2);
  registry.Create("m", spec);
  EXPECT_EQ(ResolveModelVersion(registry, "m", "")->version, 1);
  EXPECT_EQ(ResolveModelVersion(registry, "m", "1")->version, 1);
  registry.SetLabel("m", "stable", 1);
  EXPECT_EQ(ResolveModelVersion(registry, "m", "stable")->version, 1);
  // The code and a part of the message of resolving `version` of `model`.
  const auto expect_error = [&](const std::string& model, const std::string& version,
                                grpc::StatusCode code, const std::string& part) {
    try {
      ResolveModelVersion(registry, model, version);
      ADD_FAILURE() << model << " '" << version << "' resolved";
    } catch (const ServiceError& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error("m", "7", grpc::StatusCode::NOT_FOUND, "has no version 7");
  expect_error("m", "latest", grpc::StatusCode::NOT_FOUND, "label 'latest'");
  expect_error("nope", "", grpc::StatusCode::NOT_FOUND, "nope");
}

TEST(InferConvertTest, MetadataDescribesInputsOutputsAndStochasticLayers) {
  auto snap = MakeSnapshot(true);
  inference::ModelMetadataResponse m;
  DescribeModel(*snap, 50, &m);
  EXPECT_EQ(m.name(), "m");
  EXPECT_EQ(m.versions(0), "1");
  ASSERT_EQ(m.inputs_size(), 1);
  EXPECT_EQ(m.inputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(m.inputs(0).shape().begin(), m.inputs(0).shape().end()),
            (std::vector<int64_t>{-1, 2, 2}));
  EXPECT_EQ(m.outputs(0).name(), "probabilities");
  EXPECT_EQ(std::vector<int64_t>(m.outputs(0).shape().begin(), m.outputs(0).shape().end()),
            (std::vector<int64_t>{-1, 3}));
  EXPECT_EQ(m.outputs(1).datatype(), "INT64");
  EXPECT_EQ(m.parameters().at("class_names").string_param(), R"(["cat","dog \"big\"","owl"])");
  EXPECT_EQ(m.parameters().at("stochastic_layers").string_param(), R"(["3:dropout"])");
  EXPECT_EQ(m.parameters().at("task").string_param(), "classification");
}

}  // namespace
}  // namespace dropnet::service
