// ImportModel end to end: ONNX files written by PyTorch 1.13 (tests/interop/make_onnx_fixtures.py)
// imported through a real server, then Predict compared with PyTorch's eval outputs and
// PredictUncertainty with PyTorch's train-mode (Monte-Carlo dropout) sample moments.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "client/client.h"
#include "onnx/onnx_pb.h"
#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

using json = nlohmann::json;

const std::string kFixtures = DROPNET_ONNX_FIXTURES;
constexpr int kMcSamples = 4000;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

json Reference(const std::string& model) {
  return json::parse(ReadBytes(kFixtures + "/" + model + ".json"));
}

v1::Tensor Inputs(const json& ref) {
  std::vector<int64_t> shape{ref["rows"].get<int64_t>()};
  for (const auto& d : ref["input_shape"]) shape.push_back(d.get<int64_t>());
  return Batch(ref["input"].get<std::vector<float>>(), shape);
}

class OnnxImportTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServerConfig c = Config();
    c.service.max_samples = kMcSamples;
    StartServer(c);
  }

  // Imports fixtures/<file>.onnx as model `file` and checks Predict against PyTorch's eval
  // outputs to 1e-5 relative.
  v1::ModelInfo ImportAndCheckEval(const std::string& model, const std::string& file) {
    v1::ImportModelResponse resp;
    EXPECT_TRUE(ImportModel(file, ReadBytes(kFixtures + "/" + file + ".onnx"), &resp).ok());
    const json ref = Reference(model);
    v1::PredictResponse out;
    EXPECT_TRUE(Predict(file, Inputs(ref), &out).ok()) << file;
    const auto want = ref["eval_output"].get<std::vector<double>>();
    EXPECT_EQ(out.outputs().values_size(), static_cast<int>(want.size())) << file;
    for (int k = 0; k < out.outputs().values_size() && k < static_cast<int>(want.size()); ++k) {
      EXPECT_NEAR(out.outputs().values(k), want[k], 1e-5 * std::abs(want[k]) + 1e-7)
          << file << " output " << k;
    }
    return resp.model();
  }

  // The layer types of a model, in order.
  static std::vector<std::string> Types(const v1::ModelInfo& m) {
    std::vector<std::string> types;
    for (const auto& l : m.spec().layers()) types.push_back(l.type());
    return types;
  }

  // The drop rates of the model's dropout layers, in order.
  static std::vector<double> Rates(const v1::ModelInfo& m) {
    std::vector<double> rates;
    for (const auto& l : m.spec().layers())
      if (l.type() == "dropout") rates.push_back(l.rate());
    return rates;
  }

  // PredictUncertainty with T samples against PyTorch's T' train-mode samples: every mean and
  // variance within 5 standard errors of the difference of two independent estimates.
  void CheckMonteCarlo(const std::string& model, const std::string& file) {
    const json ref = Reference(model);
    const json& mc = ref["mc"];
    const double torch_t = mc["samples"].get<double>();
    const auto mean = mc["mean"].get<std::vector<double>>();
    const auto var = mc["var"].get<std::vector<double>>();
    const auto m4 = mc["m4"].get<std::vector<double>>();
    v1::PredictUncertaintyResponse out;
    ASSERT_OK(Uncertainty(UncertaintyRequest(file, Inputs(ref), kMcSamples, 7), &out));
    ASSERT_EQ(out.mean().values_size(), static_cast<int>(mean.size()));
    double largest_var = 0;
    for (size_t k = 0; k < mean.size(); ++k) {
      const double m = out.mean().values(k);
      const double v = std::pow(out.stddev().values(k), 2);
      const double mean_se = std::sqrt(var[k] / torch_t + var[k] / kMcSamples);
      const double var_se =
          std::sqrt(std::max(m4[k] - var[k] * var[k], 0.0) * (1 / torch_t + 1.0 / kMcSamples));
      EXPECT_NEAR(m, mean[k], 5 * mean_se + 1e-6) << file << " mean " << k;
      EXPECT_NEAR(v, var[k], 5 * var_se + 1e-7) << file << " variance " << k;
      largest_var = std::max(largest_var, var[k]);
    }
    EXPECT_GT(largest_var, 1e-4) << "the reference samples do not vary: nothing was tested";
  }

  // Imports `model`'s training-mode exports at opsets 13 and 17, each checked in eval mode and in
  // Monte Carlo against PyTorch with its dropout rates read back; returns what GetModel says.
  std::vector<v1::ModelInfo> ImportTrainModeAtBothOpsets(const std::string& model) {
    const auto rates = Reference(model)["rates"].get<std::vector<double>>();
    std::vector<v1::ModelInfo> out;
    for (const std::string opset : {"13", "17"}) {
      const std::string file = model + "_train_op" + opset;
      out.push_back(ImportAndCheckEval(model, file));
      EXPECT_EQ(Rates(out.back()), rates) << file;
      CheckMonteCarlo(model, file);
    }
    return out;
  }
};

TEST_F(OnnxImportTest, MlpWithDropoutMatchesPyTorchInEvalAndMonteCarlo) {
  for (const v1::ModelInfo& m : ImportTrainModeAtBothOpsets("mlp")) {
    EXPECT_TRUE(m.stochastic());
    EXPECT_EQ(m.spec().task(), v1::TASK_CLASSIFICATION);
  }
}

TEST_F(OnnxImportTest, EvalExportWithoutDropoutImportsWithoutStochasticLayer) {
  for (const std::string model : {"mlp", "cnn", "lstm"}) {
    const v1::ModelInfo m = ImportAndCheckEval(model, model + "_eval_op17");
    EXPECT_FALSE(m.stochastic()) << model;
    EXPECT_TRUE(Rates(m).empty()) << model;
    v1::PredictUncertaintyResponse out;
    EXPECT_CODE(
        Uncertainty(UncertaintyRequest(model + "_eval_op17", Inputs(Reference(model)), 10, 1),
                    &out),
        grpc::StatusCode::FAILED_PRECONDITION);
  }
}

TEST_F(OnnxImportTest, ConvolutionsBatchNormAndPoolsMatchPyTorch) {
  // cnn: Conv2d (BatchNorm folded in by PyTorch), MaxPool2d, Dropout2d (left out by PyTorch in
  // eval mode; its training-mode export is refused by PyTorch 1.13, recorded in cnn.json).
  EXPECT_FALSE(Reference("cnn")["export_errors"].empty());
  ImportAndCheckEval("cnn", "cnn_eval_op13");
  // cnn1d in training mode keeps BatchNormalization (running statistics), Pad + AveragePool and
  // Dropout.
  for (const v1::ModelInfo& m : ImportTrainModeAtBothOpsets("cnn1d")) {
    EXPECT_EQ(Types(m), (std::vector<std::string>{"conv1d", "batch_norm", "leaky_relu",
                                                  "avg_pool1d", "flatten", "dropout", "dense"}));
    EXPECT_EQ(m.spec().task(), v1::TASK_REGRESSION);  // no softmax head
  }
}

TEST_F(OnnxImportTest, LstmClassifierMatchesPyTorch) {
  for (const v1::ModelInfo& m : ImportTrainModeAtBothOpsets("lstm")) {
    EXPECT_EQ(m.spec().layers(0).type(), "lstm");
  }
}

TEST_F(OnnxImportTest, GeluMlpMatchesPyTorchInEvalAndMonteCarlo) {
  // nn.GELU is written by PyTorch as Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5).
  const json ref = Reference("gelu_mlp");
  for (const std::string opset : {"13", "17"}) {
    const v1::ModelInfo train = ImportAndCheckEval("gelu_mlp", "gelu_mlp_train_op" + opset);
    EXPECT_EQ(Types(train), (std::vector<std::string>{"dense", "gelu", "dropout", "dense", "gelu",
                                                      "dropout", "dense"}));
    EXPECT_TRUE(train.stochastic());
    EXPECT_EQ(train.spec().task(), v1::TASK_REGRESSION);
    EXPECT_EQ(Rates(train), ref["rates"].get<std::vector<double>>());
    CheckMonteCarlo("gelu_mlp", "gelu_mlp_train_op" + opset);
    const v1::ModelInfo eval = ImportAndCheckEval("gelu_mlp", "gelu_mlp_eval_op" + opset);
    EXPECT_EQ(Types(eval), (std::vector<std::string>{"dense", "gelu", "dense", "gelu", "dense"}));
    EXPECT_FALSE(eval.stochastic());
  }
}

// A Constant node's value replaced by one float.
void SetConstant(onnx::GraphProto* g, const std::string& node, float value) {
  for (auto& n : *g->mutable_node()) {
    if (n.name() != node) continue;
    auto* t = n.mutable_attribute(0)->mutable_t();
    t->clear_raw_data();
    t->clear_float_data();
    t->add_float_data(value);
    return;
  }
  ADD_FAILURE() << "no node " << node;
}

TEST_F(OnnxImportTest, GeluPatternIsMatchedStrictly) {
  onnx::ModelProto original;
  ASSERT_TRUE(original.ParseFromString(ReadBytes(kFixtures + "/gelu_mlp_eval_op13.onnx")));
  struct Broken {
    std::string what, node;  // the change, and the node the error must name
    void (*change)(onnx::GraphProto*);
  };
  const std::vector<Broken> cases = {
      {"divides by 2", "'/net/net.1/Div' (Div)",
       [](onnx::GraphProto* g) { SetConstant(g, "/net/net.1/Constant", 2.0f); }},
      {"adds 1.5", "'/net/net.1/Add' (Add)",
       [](onnx::GraphProto* g) { SetConstant(g, "/net/net.1/Constant_1", 1.5f); }},
      {"halves to 0.6", "'/net/net.4/Mul_1' (Mul)",
       [](onnx::GraphProto* g) { SetConstant(g, "/net/net.4/Constant_2", 0.6f); }},
      {"multiplies the Erf, not the input", "'/net/net.1/Mul' (Mul)",
       [](onnx::GraphProto* g) {
         for (auto& n : *g->mutable_node())
           if (n.name() == "/net/net.1/Mul") n.set_input(0, "/net/net.1/Erf_output_0");
       }},
      {"has Tanh for Erf", "'/net/net.1/Div' (Div)",
       [](onnx::GraphProto* g) {
         for (auto& n : *g->mutable_node())
           if (n.name() == "/net/net.1/Erf") n.set_op_type("Tanh");
       }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    onnx::ModelProto m = original;
    c.change(m.mutable_graph());
    v1::ImportModelResponse resp;
    const grpc::Status s = ImportModel("gelu", m.SerializeAsString(), &resp);
    EXPECT_CODE(s, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("node " + c.node), std::string::npos) << s.error_message();
    EXPECT_CODE(LookUpModel("gelu"), grpc::StatusCode::NOT_FOUND);
  }
  v1::ImportModelResponse resp;
  ASSERT_OK(ImportModel("gelu", original.SerializeAsString(), &resp));  // the file itself is fine
}

TEST_F(OnnxImportTest, UnsupportedNodeIsRefusedByNameAndNothingIsCreated) {
  v1::ImportModelResponse resp;
  const grpc::Status s =
      ImportModel("elu", ReadBytes(kFixtures + "/unsupported_elu_eval_op13.onnx"), &resp);
  EXPECT_CODE(s, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("node '/1/Elu' (Elu)"), std::string::npos) << s.error_message();
  EXPECT_CODE(LookUpModel("elu"), grpc::StatusCode::NOT_FOUND);
}

TEST_F(OnnxImportTest, BadFilesNamesAndSizesAreRefused) {
  v1::ImportModelResponse resp;
  EXPECT_CODE(ImportModel("junk", "not an onnx file", &resp), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(ImportModel("empty", "", &resp), grpc::StatusCode::INVALID_ARGUMENT);
  const std::string mlp = ReadBytes(kFixtures + "/mlp_train_op13.onnx");
  EXPECT_CODE(ImportModel("bad name!", mlp, &resp), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_OK(ImportModel("mlp", mlp, &resp));
  EXPECT_CODE(ImportModel("mlp", mlp, &resp), grpc::StatusCode::ALREADY_EXISTS);
  ServerConfig c = Config();
  c.service.max_model_bytes = 1000;
  StartServer(c);
  const grpc::Status big = ImportModel("big", mlp, &resp);
  EXPECT_CODE(big, grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(big.error_message().find("onnx_model has " + std::to_string(mlp.size()) +
                                     " bytes, over the server's limit of 1000"),
            std::string::npos)
      << big.error_message();
  EXPECT_NE(big.error_message().find("--max-model-bytes"), std::string::npos);
  EXPECT_CODE(LookUpModel("big"), grpc::StatusCode::NOT_FOUND);
  c.service.max_model_bytes = static_cast<int64_t>(mlp.size());  // exactly at the limit
  StartServer(c);
  ASSERT_OK(ImportModel("big", mlp, &resp));
}

TEST_F(OnnxImportTest, FileOverTheMessageLimitNamesTheFlags) {
  // gRPC itself refuses a request over the server's --max-message-bytes: the client says which
  // flags raise the limits.
  const std::string mlp = ReadBytes(kFixtures + "/mlp_train_op13.onnx");
  ServerConfig c = Config();
  c.max_message_bytes = 1500;
  StartServer(c);
  client::ClientOptions o;
  o.target = "127.0.0.1:" + std::to_string(server_->port());
  o.max_attempts = 2;
  client::Client cl(o);
  try {
    cl.ImportModel("big", mlp, v1::TASK_UNSPECIFIED);
    ADD_FAILURE() << "a file over the message limit was imported";
  } catch (const client::ClientError& e) {
    EXPECT_EQ(e.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    const std::string what = e.what();
    EXPECT_NE(what.find("the ONNX file (" + std::to_string(mlp.size()) + " bytes)"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("--max-message-bytes"), std::string::npos) << what;
  }
  EXPECT_CODE(LookUpModel("big"), grpc::StatusCode::NOT_FOUND);
}

TEST_F(OnnxImportTest, ExternalDataIsRefusedByTensorName) {
  onnx::ModelProto m;
  ASSERT_TRUE(m.ParseFromString(ReadBytes(kFixtures + "/mlp_train_op13.onnx")));
  auto* w = m.mutable_graph()->mutable_initializer(0);
  const std::string name = w->name();
  w->clear_raw_data();
  w->clear_float_data();
  w->set_data_location(onnx::TensorProto::EXTERNAL);
  for (const auto& [key, value] :
       {std::pair<std::string, std::string>{"location", "weights.bin"}, {"offset", "0"}}) {
    auto* e = w->add_external_data();
    e->set_key(key);
    e->set_value(value);
  }
  v1::ImportModelResponse resp;
  const grpc::Status s = ImportModel("external", m.SerializeAsString(), &resp);
  EXPECT_CODE(s, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("tensor '" + name + "' keeps its data in an external file"),
            std::string::npos)
      << s.error_message();
  EXPECT_CODE(LookUpModel("external"), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace dropnet::service
