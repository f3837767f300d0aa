// Test support for the in-process tests of the dropnet.v1.Dropnet service: deterministic data
// sets and model specs, tensor helpers, status assertions, and the ServiceTest fixture that runs a
// real Server on a free loopback port with a temporary store and wraps each RPC of the stub.
#ifndef DROPNET_TESTS_SERVICE_SERVICE_FIXTURE_H_
#define DROPNET_TESTS_SERVICE_SERVICE_FIXTURE_H_

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "dropnet/v1/service.grpc.pb.h"
#include "server/engine/random.h"
#include "server/service/server.h"
#include "server/service/status.h"
#include "tests/testing/temp_dir.h"

namespace dropnet::service {

// The service limits the fixture's servers run with.
inline constexpr int kMaxSamples = 100;
inline constexpr int kDefaultSamples = 16;
inline constexpr int64_t kMaxBatchRows = 64;

// A client context with a deadline, so that a broken server fails a test instead of hanging it.
class Ctx : public grpc::ClientContext {
 public:
  explicit Ctx(int seconds = 60) {
    set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  }
};

// SplitMix64 (the engine's): the same numbers on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : bits_(seed) {}
  uint64_t Next() { return bits_.Next(); }
  float Uniform() { return static_cast<float>(Next() >> 40) / static_cast<float>(1 << 24); }
  float Symmetric() { return 2.0f * Uniform() - 1.0f; }

 private:
  engine::SplitMix64 bits_;
};

struct Data {
  int64_t rows = 0;
  int width = 0;
  int targets = 1;
  std::vector<float> x;  // rows x width
  std::vector<float> y;  // rows x targets
};

// A learnable 3-class problem: the label is the argmax of three linear scores.
Data ClassificationData(int64_t rows, int width, uint64_t seed, bool random_labels = false);

// y = 0.8 x0 - 0.5 x1 + 0.3 x2 x3 + small noise.
Data RegressionData(int64_t rows, int width, uint64_t seed);

v1::Tensor Batch(const std::vector<float>& values, std::vector<int64_t> shape);

// The first `rows` rows of `d` as a batch.
v1::Tensor RowsOf(const Data& d, int64_t rows);

v1::LayerSpec* AddLayer(v1::ModelSpec* spec, const std::string& type, int units = 0,
                        double rate = 0);

// input [width] -> dense 16 -> relu -> dropout 0.3 -> dense 3.
v1::ModelSpec ClassifierSpec(int width = 4, uint64_t seed = 1);
int64_t ClassifierParameters(int width);

// input [width] -> dense 16 -> relu -> dropout 0.3 -> dense 1, regression.
v1::ModelSpec RegressorSpec(int width = 4, double tau = 0);

// A model whose epochs take a noticeable time (about 250 steps of a 8-256-256-3 network).
v1::ModelSpec SlowSpec();
// input [4] -> dense 8 -> relu -> dense 3: a classifier with no stochastic layer.
v1::ModelSpec DeterministicSpec();

void WriteFile(const std::filesystem::path& p, const std::string& bytes);
void PutBigEndian(std::string* out, uint32_t v);
void WriteGzip(const std::filesystem::path& p, const std::string& bytes);

// Whether the tensors have the same shape and bit-identical values.
bool SameBits(const v1::Tensor& a, const v1::Tensor& b);

std::string Describe(const grpc::Status& s);

#define EXPECT_CODE(status, code)                                           \
  do {                                                                      \
    const grpc::Status _s = (status);                                       \
    EXPECT_EQ(_s.error_code(), code)                                        \
        << "expected " << StatusCodeName(code) << ", got " << Describe(_s); \
  } while (0)

#define ASSERT_OK(status)                 \
  do {                                    \
    const grpc::Status _s = (status);     \
    ASSERT_TRUE(_s.ok()) << Describe(_s); \
  } while (0)

// One server per test, on a temporary store.
class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  void TearDown() override { StopServer(); }

  ServerConfig Config() const;
  void StartServer(ServerConfig config);
  void StartServer() { StartServer(Config()); }
  void StopServer();

  // ---- RPC helpers ----

  grpc::Status CreateModel(const std::string& name, const v1::ModelSpec& spec,
                           v1::CreateModelResponse* resp = nullptr);
  // ImportModel of the ONNX file `bytes` as model `name`.
  grpc::Status ImportModel(const std::string& name, const std::string& bytes,
                           v1::ImportModelResponse* resp = nullptr,
                           v1::Task task = v1::TASK_UNSPECIFIED);
  // The model `name`, expecting GetModel to succeed.
  v1::ModelInfo GetModel(const std::string& name);
  // The status of GetModel for `name`.
  grpc::Status LookUpModel(const std::string& name);
  grpc::Status DeleteModel(const std::string& name);
  grpc::Status DeleteDataset(const std::string& name);
  grpc::Status UploadRows(const std::string& name, const Data& d,
                          v1::Task task = v1::TASK_CLASSIFICATION, int64_t rows_per_chunk = 50,
                          bool overwrite = false, v1::UploadDatasetResponse* resp = nullptr,
                          std::vector<int> input_shape = {});
  grpc::Status UploadCsv(const std::string& name, const std::string& csv, size_t chunk_bytes,
                         v1::DatasetHeader header, v1::UploadDatasetResponse* resp);
  // Runs a Train call to its end, collecting every event.
  grpc::Status Train(const v1::TrainRequest& req, std::vector<v1::TrainEvent>* events = nullptr);
  v1::TrainRequest TrainRequest(const std::string& model, const std::string& dataset, int epochs,
                                int batch_size = 32);
  grpc::Status Predict(const std::string& model, const v1::Tensor& inputs,
                       v1::PredictResponse* resp);
  grpc::Status Uncertainty(const v1::PredictUncertaintyRequest& req,
                           v1::PredictUncertaintyResponse* resp);
  v1::PredictUncertaintyRequest UncertaintyRequest(const std::string& model,
                                                   const v1::Tensor& inputs, int samples,
                                                   std::optional<uint64_t> seed);
  grpc::Status Evaluate(const v1::EvaluateRequest& req, v1::EvaluateResponse* resp);
  grpc::Status ImportDataset(const v1::ImportDatasetRequest& req,
                             v1::ImportDatasetResponse* resp = nullptr);
  std::vector<v1::DatasetInfo> ListDatasets();
  std::vector<v1::ModelInfo> ListModels();

  // A trained classifier "clf" (input [4]) on the data set "clf-data" (240 rows).
  void TrainedClassifier(int epochs = 15);

  // Polls GetModel until the model is no longer training (the server ends a cancelled Train a
  // moment after the client has seen the cancellation).
  v1::ModelInfo WaitUntilIdle(const std::string& name);

  testing::TempDir dir_{"dropnet-service-test-"};
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  // One unary call of `method` with a fresh context; a failed call fails the test.
  template <typename Request, typename Response>
  Response CallOk(grpc::Status (v1::Dropnet::Stub::*method)(grpc::ClientContext*, const Request&,
                                                            Response*),
                  const Request& request) {
    Response resp;
    Ctx ctx;
    const grpc::Status s = (stub_.get()->*method)(&ctx, request, &resp);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return resp;
  }
  std::unique_ptr<v1::Dropnet::Stub> stub_;
};

// A server stream of progress events and a result event (RankDataset, EvaluateStream), read to
// its end by ReadProgressStream.
template <typename Progress, typename Result>
struct ProgressStreamRun {
  grpc::Status status;
  std::vector<Progress> progress;
  std::vector<Result> results;
  bool result_last = false;  // the last event was a result
};

// Starts a stream with `start(&ctx)` under a deadline of `deadline_ms` and reads it to its end.
template <typename Event, typename Run, typename Start>
Run ReadProgressStream(Start start, int deadline_ms) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  auto reader = start(&ctx);
  Run run;
  Event e;
  while (reader->Read(&e)) {
    run.result_last = e.has_result();
    if (e.has_progress()) run.progress.push_back(e.progress());
    if (e.has_result()) run.results.push_back(e.result());
  }
  run.status = reader->Finish();
  return run;
}

}  // namespace dropnet::service

#endif  // DROPNET_TESTS_SERVICE_SERVICE_FIXTURE_H_
