// ExportModel end to end: models of every exportable layer family are created on a real server,
// exported, imported back and compared (spec, parameters and outputs, bit for bit). The exported
// files, with inputs and dropnet's eval outputs, are left in DROPNET_ONNX_EXPORT_DIR for the
// checker (onnx_export_check.py) and ONNX Runtime (onnx_runtime_check.js) tests.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "onnx/onnx_pb.h"
#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

using json = nlohmann::json;

struct Case {
  std::string name;
  v1::ModelSpec spec;
};

v1::ModelSpec Spec(std::vector<int> input, v1::Task task = v1::TASK_CLASSIFICATION) {
  v1::ModelSpec s;
  for (int d : input) s.add_input_shape(d);
  s.set_task(task);
  s.set_seed(3);
  return s;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  {
    v1::ModelSpec s = Spec({6});
    AddLayer(&s, "dense", 16);
    AddLayer(&s, "leaky_relu")->set_negative_slope(0.2);
    AddLayer(&s, "dropout", 0, 0.3);
    AddLayer(&s, "dense", 8);
    AddLayer(&s, "selu");
    AddLayer(&s, "dropout", 0, 0.1);
    AddLayer(&s, "dense", 3)->set_use_bias(false);
    AddLayer(&s, "softmax");
    cases.push_back({"mlp", s});
  }
  {
    v1::ModelSpec s = Spec({2, 9, 9});
    auto* conv = AddLayer(&s, "conv2d");
    conv->set_filters(4);
    conv->set_kernel_size(3);
    conv->set_padding(1);
    conv->set_stride(2);
    auto* bn = AddLayer(&s, "batch_norm");
    bn->set_momentum(0.2);
    bn->set_epsilon(1e-3);
    AddLayer(&s, "tanh");
    AddLayer(&s, "max_pool2d");
    auto* conv2 = AddLayer(&s, "conv2d");
    conv2->set_filters(3);
    conv2->set_kernel_size(1);
    AddLayer(&s, "avg_pool2d");
    AddLayer(&s, "flatten");
    AddLayer(&s, "dropout", 0, 0.25);
    AddLayer(&s, "dense", 2);
    cases.push_back({"cnn", s});
  }
  {
    v1::ModelSpec s = Spec({3, 12}, v1::TASK_REGRESSION);
    s.set_tau(2.5);
    auto* conv = AddLayer(&s, "conv1d");
    conv->set_filters(4);
    conv->set_kernel_size(3);
    AddLayer(&s, "sigmoid");
    AddLayer(&s, "global_avg_pool");
    AddLayer(&s, "dense", 1);
    cases.push_back({"cnn1d", s});
  }
  {
    v1::ModelSpec s = Spec({5, 3});
    AddLayer(&s, "lstm", 6)->set_return_sequences(true);
    AddLayer(&s, "gru", 4);
    AddLayer(&s, "dropout", 0, 0.2);
    AddLayer(&s, "dense", 3);
    cases.push_back({"rnn", s});
  }
  {
    v1::ModelSpec s = Spec({5}, v1::TASK_REGRESSION);
    AddLayer(&s, "dense", 8);
    AddLayer(&s, "gelu");
    AddLayer(&s, "dropout", 0, 0.2);
    AddLayer(&s, "dense", 2);
    cases.push_back({"gelu", s});
  }
  return cases;
}

// Deterministic inputs for a model: rows x product(input_shape).
v1::Tensor InputsFor(const v1::ModelSpec& spec, int rows) {
  std::vector<int64_t> shape{rows};
  int64_t width = 1;
  for (int d : spec.input_shape()) {
    shape.push_back(d);
    width *= d;
  }
  Rng rng(11);
  std::vector<float> v(rows * width);
  for (auto& x : v) x = 2 * rng.Symmetric();
  return Batch(v, shape);
}

class OnnxExportTest : public ServiceTest {
 protected:
  void SetUp() override { StartServer(); }

  grpc::Status Export(const std::string& name, v1::ExportMode mode, v1::ExportModelResponse* resp,
                      int64_t version = 0) {
    v1::ExportModelRequest req;
    req.set_name(name);
    req.set_mode(mode);
    req.set_version(version);
    Ctx ctx;
    return stub_->ExportModel(&ctx, req, resp);
  }
};

// The model without what names it (its model name, the graph's name): what must survive a trip.
std::string Canonical(const std::string& bytes) {
  onnx::ModelProto m;
  EXPECT_TRUE(m.ParseFromString(bytes));
  m.mutable_graph()->clear_name();
  for (auto& p : *m.mutable_metadata_props())
    if (p.key() == "dropnet.model") p.clear_value();
  return m.SerializeAsString();
}

TEST_F(OnnxExportTest, ExportedModelsImportBackBitIdentically) {
  const std::filesystem::path out_dir = DROPNET_ONNX_EXPORT_DIR;
  std::filesystem::create_directories(out_dir);
  json manifest = json::array();
  for (const auto& c : Cases()) {
    ASSERT_OK(CreateModel(c.name, c.spec));
    for (auto mode : {v1::EXPORT_MODE_EVAL, v1::EXPORT_MODE_TRAIN}) {
      const std::string tag = c.name + (mode == v1::EXPORT_MODE_TRAIN ? "_train" : "_eval");
      v1::ExportModelResponse exported;
      ASSERT_OK(Export(c.name, mode, &exported));
      EXPECT_EQ(exported.version(), 1);
      EXPECT_TRUE(exported.warnings().empty()) << tag << ": " << exported.warnings(0);
      ASSERT_OK(ImportModel(tag, exported.onnx_model()));
      const v1::ModelInfo back = GetModel(tag);
      v1::ModelSpec want = c.spec;
      want.clear_seed();  // the initialisation seed is not part of a trained model
      v1::ModelSpec got = back.spec();
      got.clear_seed();
      EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString())
          << tag << "\ngot  " << got.ShortDebugString() << "\nwant " << want.ShortDebugString();
      v1::ExportModelResponse again;
      ASSERT_OK(Export(tag, mode, &again));
      EXPECT_EQ(Canonical(again.onnx_model()), Canonical(exported.onnx_model())) << tag;
      const v1::Tensor inputs = InputsFor(c.spec, 4);
      v1::PredictResponse a, b;
      ASSERT_OK(Predict(c.name, inputs, &a));
      ASSERT_OK(Predict(tag, inputs, &b));
      EXPECT_TRUE(SameBits(a.outputs(), b.outputs())) << tag;
      // For the checker and ONNX Runtime: the file, its inputs and dropnet's raw eval outputs
      // (probabilities: the models whose spec has no softmax are compared after one).
      std::ofstream(out_dir / (tag + ".onnx"), std::ios::binary) << exported.onnx_model();
      manifest.push_back({{"file", tag + ".onnx"},
                          {"mode", mode == v1::EXPORT_MODE_TRAIN ? "train" : "eval"},
                          {"stochastic", back.stochastic()},
                          {"input_shape", inputs.shape()},
                          {"input", inputs.values()},
                          {"softmax_after", c.spec.task() == v1::TASK_CLASSIFICATION &&
                                                c.spec.layers().rbegin()->type() != "softmax"},
                          {"expected", a.outputs().values()}});
    }
  }
  std::ofstream(out_dir / "manifest.json") << manifest.dump(1);
}

TEST_F(OnnxExportTest, LayersWithoutOnnxFormWarnInEvalAndAreRefusedInTrain) {
  v1::ModelSpec s = Spec({4});
  AddLayer(&s, "dense", 8);
  AddLayer(&s, "gaussian_dropout", 0, 0.2);
  auto* dc = AddLayer(&s, "drop_connect", 5, 0.3);
  dc->set_activation("relu");
  AddLayer(&s, "dense", 2);
  ASSERT_OK(CreateModel("exotic", s));
  v1::ExportModelResponse eval;
  ASSERT_OK(Export("exotic", v1::EXPORT_MODE_EVAL, &eval));
  ASSERT_EQ(eval.warnings_size(), 2);
  EXPECT_NE(eval.warnings(0).find("layers[1] (gaussian_dropout)"), std::string::npos);
  EXPECT_NE(eval.warnings(1).find("layers[2] (drop_connect)"), std::string::npos);
  // The eval form computes what Predict does.
  ASSERT_OK(ImportModel("exotic-eval", eval.onnx_model()));
  v1::PredictResponse a, b;
  ASSERT_OK(Predict("exotic", InputsFor(s, 3), &a));
  ASSERT_OK(Predict("exotic-eval", InputsFor(s, 3), &b));
  ASSERT_EQ(a.outputs().values_size(), b.outputs().values_size());
  for (int k = 0; k < a.outputs().values_size(); ++k)
    EXPECT_NEAR(a.outputs().values(k), b.outputs().values(k), 1e-6);
  v1::ExportModelResponse train;
  const grpc::Status refused = Export("exotic", v1::EXPORT_MODE_TRAIN, &train);
  EXPECT_CODE(refused, grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find("gaussian_dropout"), std::string::npos);
}

TEST_F(OnnxExportTest, UnknownModelsAndVersionsAreNotFound) {
  v1::ExportModelResponse resp;
  EXPECT_CODE(Export("nope", v1::EXPORT_MODE_EVAL, &resp), grpc::StatusCode::NOT_FOUND);
  ASSERT_OK(CreateModel("one", ClassifierSpec()));
  EXPECT_CODE(Export("one", v1::EXPORT_MODE_EVAL, &resp, 7), grpc::StatusCode::NOT_FOUND);
  ASSERT_OK(Export("one", v1::EXPORT_MODE_EVAL, &resp, 1));
  EXPECT_EQ(resp.version(), 1);
}

}  // namespace
}  // namespace dropnet::service
