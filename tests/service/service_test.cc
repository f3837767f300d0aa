// In-process tests of the dropnet.v1.Dropnet service: a real Server on a free loopback port with a
// temporary store, driven through the generated stub. Every RPC on its success path, the error
// codes of the contract, cancellation, restarts, predicting while training and health.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>

#include "dropnet/v1/service.grpc.pb.h"
#include "server/service/server.h"
#include "server/service/status.h"

#ifdef DROPNET_HAVE_HEALTH_PROTO
#include "grpc/health/v1/health.grpc.pb.h"
#endif

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::MessageDifferencer;
using grpc::StatusCode;

constexpr int kMaxSamples = 100;
constexpr int kDefaultSamples = 16;
constexpr int64_t kMaxBatchRows = 64;

// ---- Helpers ----

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "dropnet-service-test-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A client context with a deadline, so that a broken server fails a test instead of hanging it.
class Ctx : public grpc::ClientContext {
 public:
  explicit Ctx(int seconds = 60) {
    set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  }
};

// SplitMix64: the same numbers on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float Uniform() { return static_cast<float>(Next() >> 40) / static_cast<float>(1 << 24); }
  float Symmetric() { return 2.0f * Uniform() - 1.0f; }

 private:
  uint64_t state_;
};

struct Data {
  int64_t rows = 0;
  int width = 0;
  int targets = 1;
  std::vector<float> x;  // rows x width
  std::vector<float> y;  // rows x targets
};

// A learnable 3-class problem: the label is the argmax of three linear scores.
Data ClassificationData(int64_t rows, int width, uint64_t seed, bool random_labels = false) {
  Rng rng(seed);
  Data d;
  d.rows = rows;
  d.width = width;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> v(width);
    for (auto& f : v) f = rng.Symmetric();
    d.x.insert(d.x.end(), v.begin(), v.end());
    const float s[3] = {v[0] + v[1], v[2] - v[0], -v[1] - v[3]};
    int label = static_cast<int>(std::max_element(s, s + 3) - s);
    if (random_labels) label = static_cast<int>(rng.Next() % 3);
    d.y.push_back(static_cast<float>(label));
  }
  return d;
}

// y = 0.8 x0 - 0.5 x1 + 0.3 x2 x3 + small noise.
Data RegressionData(int64_t rows, int width, uint64_t seed) {
  Rng rng(seed);
  Data d;
  d.rows = rows;
  d.width = width;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> v(width);
    for (auto& f : v) f = rng.Symmetric();
    d.x.insert(d.x.end(), v.begin(), v.end());
    d.y.push_back(0.8f * v[0] - 0.5f * v[1] + 0.3f * v[2] * v[3] + 0.05f * rng.Symmetric());
  }
  return d;
}

v1::Tensor Batch(const std::vector<float>& values, std::vector<int64_t> shape) {
  v1::Tensor t;
  for (int64_t d : shape) t.add_shape(d);
  t.mutable_values()->Add(values.begin(), values.end());
  return t;
}

// The first `rows` rows of `d` as a batch.
v1::Tensor RowsOf(const Data& d, int64_t rows) {
  std::vector<float> v(d.x.begin(), d.x.begin() + rows * d.width);
  return Batch(v, {rows, d.width});
}

v1::LayerSpec* AddLayer(v1::ModelSpec* spec, const std::string& type, int units = 0,
                        double rate = 0) {
  auto* l = spec->add_layers();
  l->set_type(type);
  if (units) l->set_units(units);
  if (rate != 0) l->set_rate(rate);
  return l;
}

// input [width] -> dense 16 -> relu -> dropout 0.3 -> dense 3.
v1::ModelSpec ClassifierSpec(int width = 4, uint64_t seed = 1) {
  v1::ModelSpec spec;
  spec.add_input_shape(width);
  spec.set_seed(seed);
  AddLayer(&spec, "dense", 16);
  AddLayer(&spec, "relu");
  AddLayer(&spec, "dropout", 0, 0.3);
  AddLayer(&spec, "dense", 3);
  return spec;
}

int64_t ClassifierParameters(int width) { return width * 16 + 16 + 16 * 3 + 3; }

// input [width] -> dense 16 -> relu -> dropout 0.3 -> dense 1, regression.
v1::ModelSpec RegressorSpec(int width = 4, double tau = 0) {
  v1::ModelSpec spec;
  spec.add_input_shape(width);
  spec.set_seed(2);
  spec.set_task(v1::TASK_REGRESSION);
  spec.set_tau(tau);
  AddLayer(&spec, "dense", 16);
  AddLayer(&spec, "relu");
  AddLayer(&spec, "dropout", 0, 0.3);
  AddLayer(&spec, "dense", 1);
  return spec;
}

// A model whose epochs take a noticeable time (about 250 steps of a 8-256-256-3 network).
v1::ModelSpec SlowSpec() {
  v1::ModelSpec spec;
  spec.add_input_shape(8);
  spec.set_seed(3);
  AddLayer(&spec, "dense", 256);
  AddLayer(&spec, "relu");
  AddLayer(&spec, "dropout", 0, 0.3);
  AddLayer(&spec, "dense", 256);
  AddLayer(&spec, "relu");
  AddLayer(&spec, "dense", 3);
  return spec;
}

void WriteFile(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
}

void PutBigEndian(std::string* out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out->push_back(static_cast<char>((v >> s) & 0xff));
}

void WriteGzip(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

bool SameBits(const v1::Tensor& a, const v1::Tensor& b) {
  if (a.values_size() != b.values_size() || a.shape_size() != b.shape_size()) return false;
  for (int i = 0; i < a.shape_size(); ++i)
    if (a.shape(i) != b.shape(i)) return false;
  return std::equal(a.values().begin(), a.values().end(), b.values().begin(),
                    [](float u, float v) {
                      uint32_t bu, bv;
                      std::memcpy(&bu, &u, 4);
                      std::memcpy(&bv, &v, 4);
                      return bu == bv;
                    });
}

std::string Describe(const grpc::Status& s) {
  return std::string(StatusCodeName(s.error_code())) + ": " + s.error_message();
}

#define EXPECT_CODE(status, code)                                                          \
  do {                                                                                     \
    const grpc::Status _s = (status);                                                      \
    EXPECT_EQ(_s.error_code(), code) << "expected " << StatusCodeName(code) << ", got "   \
                                     << Describe(_s);                                      \
  } while (0)

#define ASSERT_OK(status)                                   \
  do {                                                      \
    const grpc::Status _s = (status);                       \
    ASSERT_TRUE(_s.ok()) << Describe(_s);                   \
  } while (0)

// ---- The fixture: one server per test, on a temporary store ----

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* level = std::getenv("DROPNET_TEST_LOG");
    SetUpLogging(level ? level : "off");
  }

  void TearDown() override { StopServer(); }

  ServerConfig Config() const {
    ServerConfig c;
    c.listen = "127.0.0.1:0";
    c.store = dir_.path() / "store";
    c.shutdown_grace_seconds = 5;
    c.rpc_threads = 16;
    c.service.data_root = dir_.path() / "data";
    c.service.max_samples = kMaxSamples;
    c.service.default_samples = kDefaultSamples;
    c.service.max_batch_rows = kMaxBatchRows;
    c.service.max_concurrent_trainings = 2;
    return c;
  }

  void StartServer(ServerConfig config) {
    StopServer();
    server_ = std::make_unique<Server>(std::move(config));
    server_->Start();
    ASSERT_GT(server_->port(), 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Dropnet::NewStub(channel_);
  }
  void StartServer() { StartServer(Config()); }

  void StopServer() {
    stub_.reset();
    channel_.reset();
    if (server_) {
      server_->Shutdown();
      server_->Wait();
      server_.reset();
    }
  }

  // ---- RPC helpers ----

  grpc::Status CreateModel(const std::string& name, const v1::ModelSpec& spec,
                           v1::CreateModelResponse* resp = nullptr) {
    v1::CreateModelRequest req;
    req.set_name(name);
    *req.mutable_spec() = spec;
    v1::CreateModelResponse local;
    Ctx ctx;
    return stub_->CreateModel(&ctx, req, resp ? resp : &local);
  }

  v1::ModelInfo GetModel(const std::string& name) {
    v1::GetModelRequest req;
    req.set_name(name);
    v1::GetModelResponse resp;
    Ctx ctx;
    const grpc::Status s = stub_->GetModel(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return resp.model();
  }

  grpc::Status UploadRows(const std::string& name, const Data& d,
                          v1::Task task = v1::TASK_CLASSIFICATION, int64_t rows_per_chunk = 50,
                          bool overwrite = false, v1::UploadDatasetResponse* resp = nullptr,
                          std::vector<int> input_shape = {}) {
    Ctx ctx;
    v1::UploadDatasetResponse local;
    auto writer = stub_->UploadDataset(&ctx, resp ? resp : &local);
    v1::UploadDatasetRequest msg;
    auto* h = msg.mutable_header();
    h->set_name(name);
    h->set_task(task);
    if (input_shape.empty()) input_shape = {d.width};
    for (int v : input_shape) h->add_input_shape(v);
    h->set_targets_per_row(d.targets);
    h->set_overwrite(overwrite);
    if (!writer->Write(msg)) return writer->Finish();
    for (int64_t r0 = 0; r0 < d.rows; r0 += rows_per_chunk) {
      const int64_t r1 = std::min(d.rows, r0 + rows_per_chunk);
      v1::UploadDatasetRequest chunk;
      auto* rows = chunk.mutable_rows();
      rows->mutable_features()->Add(d.x.begin() + r0 * d.width, d.x.begin() + r1 * d.width);
      rows->mutable_targets()->Add(d.y.begin() + r0 * d.targets, d.y.begin() + r1 * d.targets);
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  grpc::Status UploadCsv(const std::string& name, const std::string& csv, size_t chunk_bytes,
                         v1::DatasetHeader header, v1::UploadDatasetResponse* resp) {
    Ctx ctx;
    auto writer = stub_->UploadDataset(&ctx, resp);
    v1::UploadDatasetRequest msg;
    header.set_name(name);
    *msg.mutable_header() = header;
    if (!writer->Write(msg)) return writer->Finish();
    for (size_t at = 0; at < csv.size(); at += chunk_bytes) {
      v1::UploadDatasetRequest chunk;
      chunk.set_csv_chunk(csv.substr(at, chunk_bytes));
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  // Runs a Train call to its end, collecting every event.
  grpc::Status Train(const v1::TrainRequest& req, std::vector<v1::TrainEvent>* events = nullptr) {
    Ctx ctx(120);
    auto reader = stub_->Train(&ctx, req);
    v1::TrainEvent e;
    while (reader->Read(&e)) {
      if (events) events->push_back(e);
    }
    return reader->Finish();
  }

  v1::TrainRequest TrainRequest(const std::string& model, const std::string& dataset, int epochs,
                                int batch_size = 32) {
    v1::TrainRequest req;
    req.set_model(model);
    req.set_dataset(dataset);
    req.set_epochs(epochs);
    req.set_batch_size(batch_size);
    req.set_seed(17);
    req.set_learning_rate(0.01);
    return req;
  }

  grpc::Status Predict(const std::string& model, const v1::Tensor& inputs,
                       v1::PredictResponse* resp) {
    v1::PredictRequest req;
    req.set_model(model);
    *req.mutable_inputs() = inputs;
    Ctx ctx;
    return stub_->Predict(&ctx, req, resp);
  }

  grpc::Status Uncertainty(const v1::PredictUncertaintyRequest& req,
                           v1::PredictUncertaintyResponse* resp) {
    Ctx ctx;
    return stub_->PredictUncertainty(&ctx, req, resp);
  }

  v1::PredictUncertaintyRequest UncertaintyRequest(const std::string& model,
                                                   const v1::Tensor& inputs, int samples,
                                                   std::optional<uint64_t> seed) {
    v1::PredictUncertaintyRequest req;
    req.set_model(model);
    *req.mutable_inputs() = inputs;
    req.set_samples(samples);
    if (seed) req.set_seed(*seed);
    return req;
  }

  grpc::Status Evaluate(const v1::EvaluateRequest& req, v1::EvaluateResponse* resp) {
    Ctx ctx;
    return stub_->Evaluate(&ctx, req, resp);
  }

  grpc::Status ImportDataset(const v1::ImportDatasetRequest& req,
                             v1::ImportDatasetResponse* resp = nullptr) {
    v1::ImportDatasetResponse local;
    Ctx ctx;
    return stub_->ImportDataset(&ctx, req, resp ? resp : &local);
  }

  std::vector<v1::DatasetInfo> ListDatasets() {
    v1::ListDatasetsResponse resp;
    Ctx ctx;
    const grpc::Status s = stub_->ListDatasets(&ctx, {}, &resp);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return {resp.datasets().begin(), resp.datasets().end()};
  }

  std::vector<v1::ModelInfo> ListModels() {
    v1::ListModelsResponse resp;
    Ctx ctx;
    const grpc::Status s = stub_->ListModels(&ctx, {}, &resp);
    EXPECT_TRUE(s.ok()) << Describe(s);
    return {resp.models().begin(), resp.models().end()};
  }

  // A trained classifier "clf" (input [4]) on the data set "clf-data" (240 rows).
  void TrainedClassifier(int epochs = 15) {
    ASSERT_OK(CreateModel("clf", ClassifierSpec()));
    ASSERT_OK(UploadRows("clf-data", ClassificationData(240, 4, 1)));
    ASSERT_OK(Train(TrainRequest("clf", "clf-data", epochs)));
  }

  // Polls GetModel until the model is no longer training (the server ends a cancelled Train a
  // moment after the client has seen the cancellation).
  v1::ModelInfo WaitUntilIdle(const std::string& name) {
    v1::ModelInfo info;
    for (int i = 0; i < 500; ++i) {
      info = GetModel(name);
      if (!info.training()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return info;
  }

  TempDir dir_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Dropnet::Stub> stub_;
};

// ---- Models ----

TEST_F(ServiceTest, CreateModelPublishesVersionOne) {
  StartServer();
  v1::CreateModelResponse resp;
  v1::ModelSpec spec = ClassifierSpec();
  spec.set_description("a small classifier");
  ASSERT_OK(CreateModel("m1", spec, &resp));
  const v1::ModelInfo& m = resp.model();
  EXPECT_EQ(m.name(), "m1");
  EXPECT_EQ(m.version(), 1);
  EXPECT_EQ(std::vector<int64_t>(m.versions().begin(), m.versions().end()),
            std::vector<int64_t>{1});
  EXPECT_EQ(m.parameter_count(), ClassifierParameters(4));
  EXPECT_EQ(m.output_size(), 3);
  EXPECT_FALSE(m.training());
  EXPECT_EQ(m.history_size(), 0);
  EXPECT_EQ(m.steps(), 0);
  EXPECT_GT(m.created_unix_ms(), 0);
  EXPECT_TRUE(MessageDifferencer::Equals(m.spec(), spec));
  EXPECT_TRUE(fs::exists(dir_.path() / "store" / "models" / "m1" / "1" / "checkpoint.pb"));
}

TEST_F(ServiceTest, GetModelReportsSpecVersionsAndHistory) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(96, 4, 2)));
  ASSERT_OK(Train(TrainRequest("m", "d", 2, 32)));
  const v1::ModelInfo m = GetModel("m");
  EXPECT_EQ(m.name(), "m");
  EXPECT_TRUE(MessageDifferencer::Equals(m.spec(), ClassifierSpec()));
  EXPECT_EQ(m.parameter_count(), ClassifierParameters(4));
  EXPECT_EQ(m.version(), 3);
  EXPECT_EQ(std::vector<int64_t>(m.versions().begin(), m.versions().end()),
            (std::vector<int64_t>{1, 2, 3}));
  ASSERT_EQ(m.history_size(), 2);
  EXPECT_EQ(m.history(0).epoch(), 1);
  EXPECT_EQ(m.history(0).version(), 2);
  EXPECT_EQ(m.history(1).epoch(), 2);
  EXPECT_EQ(m.history(1).version(), 3);
  EXPECT_EQ(m.history(1).dataset(), "d");
  EXPECT_GT(m.history(0).loss(), 0);
  EXPECT_EQ(m.steps(), 6);  // 96 rows in batches of 32, twice
  EXPECT_FALSE(m.training());
}

TEST_F(ServiceTest, ListModelsIsSortedByName) {
  StartServer();
  for (const char* name : {"charlie", "alpha", "bravo", "Zulu"}) {
    ASSERT_OK(CreateModel(name, ClassifierSpec()));
  }
  const auto models = ListModels();
  std::vector<std::string> names;
  for (const auto& m : models) names.push_back(m.name());
  EXPECT_EQ(names, (std::vector<std::string>{"Zulu", "alpha", "bravo", "charlie"}));
  for (const auto& m : models) {
    EXPECT_EQ(m.version(), 1);
    EXPECT_EQ(m.spec().layers_size(), 4) << m.name();
  }
}

TEST_F(ServiceTest, DeleteModelRemovesItEverywhere) {
  StartServer();
  ASSERT_OK(CreateModel("gone", ClassifierSpec()));
  ASSERT_OK(CreateModel("kept", ClassifierSpec()));
  {
    v1::DeleteModelRequest req;
    req.set_name("gone");
    v1::DeleteModelResponse resp;
    Ctx ctx;
    ASSERT_OK(stub_->DeleteModel(&ctx, req, &resp));
  }
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "models" / "gone"));
  ASSERT_EQ(ListModels().size(), 1u);
  EXPECT_EQ(ListModels()[0].name(), "kept");
  v1::GetModelRequest get;
  get.set_name("gone");
  v1::GetModelResponse got;
  Ctx ctx;
  EXPECT_CODE(stub_->GetModel(&ctx, get, &got), StatusCode::NOT_FOUND);
  // The name is free again.
  ASSERT_OK(CreateModel("gone", ClassifierSpec()));
}

// ---- Data sets ----

TEST_F(ServiceTest, UploadDatasetRowsInSeveralChunks) {
  StartServer();
  const Data d = ClassificationData(103, 4, 3);
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadRows("rows", d, v1::TASK_CLASSIFICATION, 25, false, &resp));  // 5 chunks
  const v1::DatasetInfo& info = resp.dataset();
  EXPECT_EQ(info.name(), "rows");
  EXPECT_EQ(info.rows(), 103);
  EXPECT_EQ(std::vector<int>(info.input_shape().begin(), info.input_shape().end()),
            std::vector<int>{4});
  EXPECT_EQ(info.targets(), 1);
  EXPECT_EQ(info.num_classes(), 3);
  EXPECT_EQ(info.source(), "upload");
  EXPECT_EQ(info.task(), v1::TASK_CLASSIFICATION);
  // Every value arrived, in order.
  const auto entry = server_->registry().GetDataset("rows");
  ASSERT_EQ(entry.data->x.rows(), 103);
  ASSERT_EQ(entry.data->x.cols(), 4);
  for (int64_t r = 0; r < 103; ++r) {
    for (int c = 0; c < 4; ++c) ASSERT_EQ(entry.data->x(r, c), d.x[r * 4 + c]) << r << "," << c;
    ASSERT_EQ(entry.data->y(r, 0), d.y[r]) << r;
  }
  EXPECT_TRUE(fs::exists(dir_.path() / "store" / "datasets" / "rows" / "dataset.pb"));
}

TEST_F(ServiceTest, UploadDatasetRowsWithAnImageShapeAndRegressionTargets) {
  StartServer();
  Data d = RegressionData(20, 4, 4);
  d.targets = 1;
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadRows("img", d, v1::TASK_REGRESSION, 7, false, &resp, {1, 2, 2}));
  EXPECT_EQ(std::vector<int>(resp.dataset().input_shape().begin(),
                             resp.dataset().input_shape().end()),
            (std::vector<int>{1, 2, 2}));
  EXPECT_EQ(resp.dataset().task(), v1::TASK_REGRESSION);
  EXPECT_EQ(resp.dataset().num_classes(), 0);
}

TEST_F(ServiceTest, UploadDatasetCsvInChunksThatEndMidLine) {
  StartServer();
  std::string csv = "alpha,beta,gamma,delta,animal\n";
  const Data d = ClassificationData(40, 4, 5);
  const char* names[3] = {"emu", "cat", "dog"};  // indices follow the sorted names
  for (int64_t r = 0; r < d.rows; ++r) {
    for (int c = 0; c < 4; ++c) csv += std::to_string(d.x[r * 4 + c]) + ",";
    csv += names[static_cast<int>(d.y[r])];
    csv += "\n";
  }
  // 13 bytes a chunk: chunks end inside numbers, names and line ends.
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadCsv("csv", csv, 13, v1::DatasetHeader(), &resp));
  ASSERT_GT(csv.size() / 13, 20u);
  const v1::DatasetInfo& info = resp.dataset();
  EXPECT_EQ(info.rows(), 40);
  EXPECT_EQ(std::vector<std::string>(info.feature_names().begin(), info.feature_names().end()),
            (std::vector<std::string>{"alpha", "beta", "gamma", "delta"}));
  EXPECT_EQ(std::vector<std::string>(info.class_names().begin(), info.class_names().end()),
            (std::vector<std::string>{"cat", "dog", "emu"}));
  EXPECT_EQ(info.num_classes(), 3);
  const auto entry = server_->registry().GetDataset("csv");
  const int remap[3] = {2, 0, 1};  // emu -> 2, cat -> 0, dog -> 1
  for (int64_t r = 0; r < d.rows; ++r) {
    for (int c = 0; c < 4; ++c) {
      ASSERT_NEAR(entry.data->x(r, c), d.x[r * 4 + c], 1e-6) << r << "," << c;
    }
    ASSERT_EQ(entry.data->y(r, 0), remap[static_cast<int>(d.y[r])]) << r;
  }
}

TEST_F(ServiceTest, UploadDatasetCsvWithANamedRegressionTarget) {
  StartServer();
  const std::string csv =
      "a,y,b\n"
      "1,10.5,2\n"
      "3,-1.25,4\n"
      "5,0,6\n";
  v1::DatasetHeader header;
  header.set_task(v1::TASK_REGRESSION);
  header.set_target_column("y");
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadCsv("reg-csv", csv, 5, header, &resp));
  EXPECT_EQ(resp.dataset().rows(), 3);
  EXPECT_EQ(resp.dataset().targets(), 1);
  const auto entry = server_->registry().GetDataset("reg-csv");
  EXPECT_EQ(entry.data->x(1, 0), 3.0f);
  EXPECT_EQ(entry.data->x(1, 1), 4.0f);
  EXPECT_EQ(entry.data->y(1, 0), -1.25f);
}

TEST_F(ServiceTest, UploadDatasetNameTakenUnlessOverwrite) {
  StartServer();
  ASSERT_OK(UploadRows("d", ClassificationData(10, 4, 1)));
  EXPECT_CODE(UploadRows("d", ClassificationData(12, 4, 1)), StatusCode::ALREADY_EXISTS);
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadRows("d", ClassificationData(12, 4, 1), v1::TASK_CLASSIFICATION, 50, true,
                       &resp));
  EXPECT_EQ(resp.dataset().rows(), 12);
  EXPECT_EQ(ListDatasets().size(), 1u);
}

TEST_F(ServiceTest, UploadDatasetErrors) {
  StartServer();
  auto upload = [&](std::vector<v1::UploadDatasetRequest> msgs) {
    Ctx ctx;
    v1::UploadDatasetResponse resp;
    auto writer = stub_->UploadDataset(&ctx, &resp);
    for (const auto& m : msgs)
      if (!writer->Write(m)) break;
    writer->WritesDone();
    return writer->Finish();
  };
  v1::UploadDatasetRequest header;
  header.mutable_header()->set_name("bad");
  header.mutable_header()->add_input_shape(2);
  v1::UploadDatasetRequest rows;
  for (float v : {1.f, 2.f, 3.f, 4.f}) rows.mutable_rows()->add_features(v);
  for (float v : {0.f, 1.f}) rows.mutable_rows()->add_targets(v);
  v1::UploadDatasetRequest csv;
  csv.set_csv_chunk("a,b\n1,2\n");

  EXPECT_CODE(upload({rows}), StatusCode::INVALID_ARGUMENT);            // no header
  EXPECT_CODE(upload({header}), StatusCode::INVALID_ARGUMENT);          // no rows
  EXPECT_CODE(upload({header, rows, csv}), StatusCode::INVALID_ARGUMENT);  // both kinds
  EXPECT_CODE(upload({header, rows, header}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest ragged = rows;
  ragged.mutable_rows()->add_features(5);  // 5 values are not whole rows of 2
  EXPECT_CODE(upload({header, ragged}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest short_targets = rows;
  short_targets.mutable_rows()->mutable_targets()->RemoveLast();
  EXPECT_CODE(upload({header, short_targets}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest bad_label = rows;
  bad_label.mutable_rows()->set_targets(1, 1.5f);
  EXPECT_CODE(upload({header, bad_label}), StatusCode::INVALID_ARGUMENT);
  bad_label.mutable_rows()->set_targets(1, -1.0f);
  EXPECT_CODE(upload({header, bad_label}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest nan_row = rows;
  nan_row.mutable_rows()->set_features(3, std::numeric_limits<float>::quiet_NaN());
  EXPECT_CODE(upload({header, nan_row}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest bad_csv_value = header;
  v1::UploadDatasetRequest text;
  text.set_csv_chunk("a,b\nx,1\n");  // a feature that is not a number
  EXPECT_CODE(upload({bad_csv_value, text}), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(ListDatasets().empty());
  // And the well-formed upload of the same pieces works.
  ASSERT_OK(upload({header, rows}));
}

TEST_F(ServiceTest, ImportDatasetCsvUnderTheDataRoot) {
  StartServer();
  std::string csv = "x1,x2,x3,x4,label\n";
  const Data d = ClassificationData(30, 4, 6);
  for (int64_t r = 0; r < d.rows; ++r) {
    for (int c = 0; c < 4; ++c) csv += std::to_string(d.x[r * 4 + c]) + ",";
    csv += std::to_string(static_cast<int>(d.y[r])) + "\n";
  }
  WriteFile(dir_.path() / "data" / "sub" / "small.csv", csv);

  v1::ImportDatasetRequest req;
  req.set_name("imported");
  req.set_path("sub/small.csv");
  v1::ImportDatasetResponse resp;
  ASSERT_OK(ImportDataset(req, &resp));
  EXPECT_EQ(resp.dataset().rows(), 30);
  EXPECT_EQ(resp.dataset().source(), "sub/small.csv");
  EXPECT_EQ(resp.dataset().num_classes(), 3);
  EXPECT_EQ(resp.dataset().feature_names_size(), 4);

  req.set_name("imported-5");
  req.set_limit(5);
  ASSERT_OK(ImportDataset(req, &resp));
  EXPECT_EQ(resp.dataset().rows(), 5);
  const auto entry = server_->registry().GetDataset("imported-5");
  EXPECT_NEAR(entry.data->x(4, 3), d.x[4 * 4 + 3], 1e-6);

  // A taken name needs overwrite.
  EXPECT_CODE(ImportDataset(req), StatusCode::ALREADY_EXISTS);
  req.set_overwrite(true);
  ASSERT_OK(ImportDataset(req));
  req.set_limit(-1);
  EXPECT_CODE(ImportDataset(req), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ImportDatasetIdxGzipped) {
  StartServer();
  constexpr uint32_t kImages = 6, kH = 2, kW = 3;
  std::string images, labels;
  PutBigEndian(&images, 0x00000803);
  PutBigEndian(&images, kImages);
  PutBigEndian(&images, kH);
  PutBigEndian(&images, kW);
  for (uint32_t i = 0; i < kImages * kH * kW; ++i) images.push_back(static_cast<char>(i * 7 % 256));
  PutBigEndian(&labels, 0x00000801);
  PutBigEndian(&labels, kImages);
  for (uint32_t i = 0; i < kImages; ++i) labels.push_back(static_cast<char>(i % 4));
  WriteGzip(dir_.path() / "data" / "idx" / "images-idx3-ubyte.gz", images);
  WriteFile(dir_.path() / "data" / "idx" / "labels-idx1-ubyte", labels);  // plain

  v1::ImportDatasetRequest req;
  req.set_name("idx");
  req.set_path("idx/images-idx3-ubyte.gz");
  req.set_label_path("idx/labels-idx1-ubyte");
  v1::ImportDatasetResponse resp;
  ASSERT_OK(ImportDataset(req, &resp));
  EXPECT_EQ(resp.dataset().rows(), 6);
  EXPECT_EQ(std::vector<int>(resp.dataset().input_shape().begin(),
                             resp.dataset().input_shape().end()),
            (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(resp.dataset().num_classes(), 4);
  const auto entry = server_->registry().GetDataset("idx");
  EXPECT_FLOAT_EQ(entry.data->x(2, 5), static_cast<float>((2 * 6 + 5) * 7 % 256) / 255.0f);
  EXPECT_EQ(entry.data->y(5, 0), 1.0f);

  // An image model trains on it and predicts [N, 1, 2, 3] batches.
  v1::ModelSpec spec;
  for (int v : {1, 2, 3}) spec.add_input_shape(v);
  AddLayer(&spec, "flatten");
  AddLayer(&spec, "dense", 8);
  AddLayer(&spec, "relu");
  AddLayer(&spec, "dropout", 0, 0.3);
  AddLayer(&spec, "dense", 4);
  ASSERT_OK(CreateModel("img", spec));
  std::vector<v1::TrainEvent> events;
  ASSERT_OK(Train(TrainRequest("img", "idx", 2, 4), &events));
  EXPECT_EQ(events.back().kind(), v1::TrainEvent::KIND_FINISHED);
  v1::PredictResponse pred;
  ASSERT_OK(Predict("img", Batch(std::vector<float>(12, 0.5f), {2, 1, 2, 3}), &pred));
  EXPECT_EQ(pred.outputs().shape(0), 2);
  EXPECT_EQ(pred.outputs().shape(1), 4);

  // Without the label file an IDX import is refused; a corrupt IDX file is a bad argument.
  req.set_name("idx2");
  req.clear_label_path();
  EXPECT_CODE(ImportDataset(req), StatusCode::INVALID_ARGUMENT);
  WriteFile(dir_.path() / "data" / "idx" / "junk-idx3-ubyte", "not an idx file at all");
  req.set_path("idx/junk-idx3-ubyte");
  req.set_label_path("idx/labels-idx1-ubyte");
  EXPECT_CODE(ImportDataset(req), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ListAndDeleteDatasets) {
  StartServer();
  for (const char* name : {"zeta", "alpha", "mid"}) {
    ASSERT_OK(UploadRows(name, ClassificationData(10, 4, 1)));
  }
  std::vector<std::string> names;
  for (const auto& d : ListDatasets()) names.push_back(d.name());
  EXPECT_EQ(names, (std::vector<std::string>{"alpha", "mid", "zeta"}));

  v1::DeleteDatasetRequest req;
  req.set_name("mid");
  v1::DeleteDatasetResponse resp;
  {
    Ctx ctx;
    ASSERT_OK(stub_->DeleteDataset(&ctx, req, &resp));
  }
  names.clear();
  for (const auto& d : ListDatasets()) names.push_back(d.name());
  EXPECT_EQ(names, (std::vector<std::string>{"alpha", "zeta"}));
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "datasets" / "mid"));
  Ctx ctx;
  EXPECT_CODE(stub_->DeleteDataset(&ctx, req, &resp), StatusCode::NOT_FOUND);
  EXPECT_CODE(Train(TrainRequest("x", "mid", 1)), StatusCode::NOT_FOUND);
}

// ---- Training ----

TEST_F(ServiceTest, TrainStreamsStartedStepsEpochsAndFinished) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(96, 4, 7)));
  v1::TrainRequest req = TrainRequest("m", "d", 3, 16);  // 6 steps an epoch, 18 in all
  req.set_report_every_steps(4);
  std::vector<v1::TrainEvent> events;
  ASSERT_OK(Train(req, &events));
  ASSERT_GE(events.size(), 5u);

  EXPECT_EQ(events.front().kind(), v1::TrainEvent::KIND_STARTED);
  EXPECT_EQ(events.front().epochs(), 3);
  EXPECT_EQ(events.front().total_steps(), 18);
  EXPECT_EQ(events.front().version(), 1);
  EXPECT_EQ(events.back().kind(), v1::TrainEvent::KIND_FINISHED);
  EXPECT_FALSE(events.back().early_stopped());

  std::vector<int64_t> step_events, epoch_versions;
  std::vector<int> epochs;
  int64_t last_step = 0;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    const auto& e = events[i];
    EXPECT_GE(e.step(), last_step) << i;
    last_step = e.step();
    EXPECT_EQ(e.total_steps(), 18);
    if (e.kind() == v1::TrainEvent::KIND_STEP) {
      step_events.push_back(e.step());
    } else if (e.kind() == v1::TrainEvent::KIND_EPOCH) {
      epoch_versions.push_back(e.version());
      epochs.push_back(e.epoch());
      EXPECT_EQ(e.step(), 6 * e.epoch());
      EXPECT_TRUE(std::isfinite(e.loss()));
      EXPECT_GE(e.metric(), 0.0);
      EXPECT_LE(e.metric(), 1.0);
      EXPECT_TRUE(std::isnan(e.val_loss()));  // no validation split
    } else {
      ADD_FAILURE() << "unexpected event kind " << e.kind() << " at " << i;
    }
  }
  EXPECT_EQ(step_events, (std::vector<int64_t>{4, 8, 16}));  // 12 and 18 are epoch ends
  EXPECT_EQ(epochs, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(epoch_versions, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(events.back().version(), 4);
  EXPECT_EQ(events.back().step(), 18);

  const v1::ModelInfo m = GetModel("m");
  EXPECT_EQ(m.version(), 4);
  EXPECT_EQ(m.steps(), 18);
  EXPECT_EQ(m.history_size(), 3);
  // A second run continues the history and the version numbers.
  events.clear();
  ASSERT_OK(Train(TrainRequest("m", "d", 1, 16), &events));
  EXPECT_EQ(events.back().version(), 5);
  EXPECT_EQ(GetModel("m").history_size(), 4);
  EXPECT_EQ(GetModel("m").history(3).epoch(), 4);
  EXPECT_EQ(GetModel("m").steps(), 24);
}

TEST_F(ServiceTest, TrainingLearns) {
  StartServer();
  TrainedClassifier(20);
  v1::EvaluateRequest req;
  req.set_model("clf");
  req.set_dataset("clf-data");
  v1::EvaluateResponse resp;
  ASSERT_OK(Evaluate(req, &resp));
  EXPECT_GT(resp.accuracy(), 0.8);  // chance is about 1/3
}

TEST_F(ServiceTest, TrainEarlyStoppingRestoresTheBestEpoch) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec(4, 5)));
  // Random labels: the validation loss soon stops improving.
  ASSERT_OK(UploadRows("noise", ClassificationData(200, 4, 8, /*random_labels=*/true)));
  v1::TrainRequest req = TrainRequest("m", "noise", 60, 16);
  req.set_learning_rate(0.05);
  req.set_validation_split(0.3);
  req.set_early_stopping_patience(2);
  std::vector<v1::TrainEvent> events;
  ASSERT_OK(Train(req, &events));
  ASSERT_FALSE(events.empty());
  const v1::TrainEvent& done = events.back();
  ASSERT_EQ(done.kind(), v1::TrainEvent::KIND_FINISHED);
  EXPECT_TRUE(done.early_stopped());
  int epoch_events = 0;
  int64_t last_epoch_version = 0;
  for (const auto& e : events) {
    if (e.kind() != v1::TrainEvent::KIND_EPOCH) continue;
    ++epoch_events;
    EXPECT_GT(e.version(), last_epoch_version);
    last_epoch_version = e.version();
    EXPECT_TRUE(std::isfinite(e.val_loss()));
  }
  EXPECT_LT(epoch_events, 60);
  EXPECT_GE(epoch_events, 3);
  // The restored parameters are published as a version of their own, and served.
  EXPECT_EQ(done.version(), last_epoch_version + 1);
  EXPECT_EQ(GetModel("m").version(), done.version());

  // Early stopping needs a validation split.
  req.set_validation_split(0);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, TrainOptionErrors) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(20, 4, 1)));
  v1::TrainRequest req = TrainRequest("m", "d", 1);
  req.set_epochs(-1);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
  req = TrainRequest("m", "d", 1);
  req.set_batch_size(-4);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
  req = TrainRequest("m", "d", 1);
  req.set_validation_split(1.0);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
  req = TrainRequest("m", "d", 1);
  req.set_report_every_steps(-1);
  EXPECT_CODE(Train(req), StatusCode::INVALID_ARGUMENT);
  // Nothing was published by the refused calls.
  EXPECT_EQ(GetModel("m").version(), 1);
  EXPECT_FALSE(GetModel("m").training());
}

// ---- Prediction ----

TEST_F(ServiceTest, PredictReturnsProbabilitiesAndClasses) {
  StartServer();
  TrainedClassifier();
  const Data d = ClassificationData(10, 4, 99);
  v1::PredictResponse resp;
  ASSERT_OK(Predict("clf", RowsOf(d, 10), &resp));
  const int64_t served = GetModel("clf").version();
  EXPECT_EQ(resp.version(), served);
  EXPECT_EQ(resp.task(), v1::TASK_CLASSIFICATION);
  ASSERT_EQ(resp.outputs().shape_size(), 2);
  ASSERT_EQ(resp.outputs().shape(0), 10);
  ASSERT_EQ(resp.outputs().shape(1), 3);
  ASSERT_EQ(resp.outputs().values_size(), 30);
  ASSERT_EQ(resp.predicted_class_size(), 10);
  EXPECT_EQ(resp.variances().values_size(), 0);
  int correct = 0;
  for (int r = 0; r < 10; ++r) {
    double sum = 0;
    int arg = 0;
    for (int c = 0; c < 3; ++c) {
      const float p = resp.outputs().values(r * 3 + c);
      EXPECT_GE(p, 0.0f);
      EXPECT_LE(p, 1.0f);
      sum += p;
      if (p > resp.outputs().values(r * 3 + arg)) arg = c;
    }
    EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << r;
    EXPECT_EQ(resp.predicted_class(r), arg) << "row " << r;
    correct += resp.predicted_class(r) == static_cast<int>(d.y[r]);
  }
  EXPECT_GE(correct, 6);

  // Eval mode is deterministic, and [N, 1, 4] or [N, 2, 2] batches mean the same rows.
  v1::PredictResponse again;
  ASSERT_OK(Predict("clf", RowsOf(d, 10), &again));
  EXPECT_TRUE(SameBits(resp.outputs(), again.outputs()));
  v1::PredictResponse reshaped;
  ASSERT_OK(Predict("clf", Batch(std::vector<float>(d.x.begin(), d.x.begin() + 40), {10, 2, 2}),
                    &reshaped));
  EXPECT_TRUE(SameBits(resp.outputs(), reshaped.outputs()));
}

TEST_F(ServiceTest, PredictUncertaintyIsReproducibleBySeed) {
  StartServer();
  TrainedClassifier();
  const Data d = ClassificationData(7, 4, 98);
  const v1::Tensor x = RowsOf(d, 7);
  v1::PredictUncertaintyResponse a, b, c;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, 1234), &a));
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, 1234), &b));
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, 4321), &c));
  EXPECT_EQ(a.seed(), 1234u);
  EXPECT_EQ(c.seed(), 4321u);
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString());
  EXPECT_TRUE(SameBits(a.mean(), b.mean()));
  EXPECT_FALSE(SameBits(a.mean(), c.mean()));
  EXPECT_EQ(a.num_samples(), 30);
  EXPECT_EQ(a.version(), GetModel("clf").version());
  EXPECT_EQ(a.task(), v1::TASK_CLASSIFICATION);

  // Without a seed the server picks one and echoes it; the echoed seed reproduces the answer.
  v1::PredictUncertaintyResponse chosen, replay;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, std::nullopt), &chosen));
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, chosen.seed()), &replay));
  EXPECT_EQ(chosen.SerializeAsString(), replay.SerializeAsString());
  // The next call without a seed gets another one, and so other masks.
  v1::PredictUncertaintyResponse other;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 30, std::nullopt), &other));
  EXPECT_NE(other.seed(), chosen.seed());
  EXPECT_FALSE(SameBits(other.mean(), chosen.mean()));

  // samples 0 means the configured default.
  v1::PredictUncertaintyResponse def;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 0, 1), &def));
  EXPECT_EQ(def.num_samples(), kDefaultSamples);
}

TEST_F(ServiceTest, PredictUncertaintyClassificationFields) {
  StartServer();
  TrainedClassifier();
  constexpr int kRows = 6, kT = 25, kC = 3;
  const Data d = ClassificationData(kRows, 4, 97);
  v1::PredictUncertaintyRequest req = UncertaintyRequest("clf", RowsOf(d, kRows), kT, 77);
  req.set_return_samples(true);
  v1::PredictUncertaintyResponse r;
  ASSERT_OK(Uncertainty(req, &r));
  ASSERT_EQ(r.mean().shape_size(), 2);
  EXPECT_EQ(r.mean().shape(0), kRows);
  EXPECT_EQ(r.mean().shape(1), kC);
  ASSERT_EQ(r.mean().values_size(), kRows * kC);
  ASSERT_EQ(r.stddev().values_size(), kRows * kC);
  ASSERT_EQ(r.predictive_entropy_size(), kRows);
  ASSERT_EQ(r.expected_entropy_size(), kRows);
  ASSERT_EQ(r.mutual_information_size(), kRows);
  ASSERT_EQ(r.variation_ratio_size(), kRows);
  ASSERT_EQ(r.predicted_class_size(), kRows);
  EXPECT_EQ(r.total_variance().values_size(), 0);
  EXPECT_EQ(r.lower().values_size(), 0);

  ASSERT_EQ(r.samples().shape_size(), 3);
  EXPECT_EQ(r.samples().shape(0), kT);
  EXPECT_EQ(r.samples().shape(1), kRows);
  EXPECT_EQ(r.samples().shape(2), kC);
  ASSERT_EQ(r.samples().values_size(), kT * kRows * kC);

  double any_spread = 0;
  for (int row = 0; row < kRows; ++row) {
    double sum = 0;
    int arg = 0;
    for (int c = 0; c < kC; ++c) {
      const float m = r.mean().values(row * kC + c);
      sum += m;
      if (m > r.mean().values(row * kC + arg)) arg = c;
      EXPECT_GE(r.stddev().values(row * kC + c), 0.0f);
      any_spread += r.stddev().values(row * kC + c);
      // The mean is the mean of the returned samples.
      double from_samples = 0;
      for (int t = 0; t < kT; ++t) from_samples += r.samples().values((t * kRows + row) * kC + c);
      EXPECT_NEAR(from_samples / kT, m, 1e-5);
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
    EXPECT_EQ(r.predicted_class(row), arg);
    const float pe = r.predictive_entropy(row), ee = r.expected_entropy(row);
    const float mi = r.mutual_information(row);
    EXPECT_GE(pe, 0.0f);
    EXPECT_LE(pe, std::log(3.0f) + 1e-5f);
    EXPECT_GE(mi, -1e-5f);
    EXPECT_NEAR(mi, pe - ee, 1e-5);
    EXPECT_GE(r.variation_ratio(row), 0.0f);
    EXPECT_LE(r.variation_ratio(row), 1.0f - 1.0f / kT + 1e-6f);
  }
  EXPECT_GT(any_spread, 0.0);  // dropout 0.3 does make the samples differ

  // Every sample is a probability vector.
  for (int t = 0; t < kT; ++t) {
    for (int row = 0; row < kRows; ++row) {
      double sum = 0;
      for (int c = 0; c < kC; ++c) sum += r.samples().values((t * kRows + row) * kC + c);
      ASSERT_NEAR(sum, 1.0, 1e-5) << t << "," << row;
    }
  }
}

TEST_F(ServiceTest, PredictUncertaintyRegressionWithTau) {
  StartServer();
  constexpr double kTau = 4.0;
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, kTau)));
  Data d = RegressionData(200, 4, 11);
  ASSERT_OK(UploadRows("reg-data", d, v1::TASK_REGRESSION));
  ASSERT_OK(Train(TrainRequest("reg", "reg-data", 10)));

  constexpr int kRows = 5;
  v1::PredictUncertaintyResponse r;
  ASSERT_OK(Uncertainty(UncertaintyRequest("reg", RowsOf(d, kRows), 40, 5), &r));
  EXPECT_EQ(r.task(), v1::TASK_REGRESSION);
  ASSERT_EQ(r.mean().values_size(), kRows);
  ASSERT_EQ(r.stddev().values_size(), kRows);
  ASSERT_EQ(r.total_variance().values_size(), kRows);
  ASSERT_EQ(r.lower().values_size(), kRows);
  ASSERT_EQ(r.upper().values_size(), kRows);
  EXPECT_EQ(r.total_variance().shape(0), kRows);
  EXPECT_EQ(r.total_variance().shape(1), 1);
  EXPECT_EQ(r.predictive_entropy_size(), 0);
  EXPECT_EQ(r.predicted_class_size(), 0);
  for (int row = 0; row < kRows; ++row) {
    const float mean = r.mean().values(row), sd = r.stddev().values(row);
    const float var = r.total_variance().values(row);
    // sample variance (1/T) + 1/tau
    EXPECT_NEAR(var, sd * sd + 1.0 / kTau, 1e-4) << row;
    EXPECT_LT(r.lower().values(row), mean);
    EXPECT_LT(mean, r.upper().values(row));
    EXPECT_NEAR(r.upper().values(row) - mean, 1.959964 * std::sqrt(var), 1e-3) << row;
    EXPECT_NEAR(mean - r.lower().values(row), 1.959964 * std::sqrt(var), 1e-3) << row;
  }
  // A narrower interval mass gives a narrower interval.
  v1::PredictUncertaintyRequest half = UncertaintyRequest("reg", RowsOf(d, kRows), 40, 5);
  half.set_interval(0.5);
  v1::PredictUncertaintyResponse h;
  ASSERT_OK(Uncertainty(half, &h));
  EXPECT_NEAR(h.upper().values(0) - h.mean().values(0),
              0.6744898 * std::sqrt(h.total_variance().values(0)), 1e-3);
  half.set_interval(1.5);
  EXPECT_CODE(Uncertainty(half, &h), StatusCode::INVALID_ARGUMENT);
}

// ---- Evaluate ----

TEST_F(ServiceTest, EvaluateClassificationInEvalMode) {
  StartServer();
  TrainedClassifier();
  v1::EvaluateRequest req;
  req.set_model("clf");
  req.set_dataset("clf-data");
  req.set_limit(100);
  v1::EvaluateResponse resp;
  ASSERT_OK(Evaluate(req, &resp));
  EXPECT_EQ(resp.rows(), 100);
  EXPECT_EQ(resp.mode(), v1::EVAL_MODE_EVAL);
  EXPECT_EQ(resp.task(), v1::TASK_CLASSIFICATION);
  EXPECT_EQ(resp.version(), GetModel("clf").version());

  // The same scores computed here from Predict on the same rows.
  const Data d = ClassificationData(240, 4, 1);
  v1::PredictResponse pred;
  ASSERT_OK(Predict("clf", RowsOf(d, 64), &pred));
  v1::PredictResponse pred2;
  ASSERT_OK(Predict("clf", Batch(std::vector<float>(d.x.begin() + 64 * 4, d.x.begin() + 100 * 4),
                                 {36, 4}),
                    &pred2));
  std::vector<float> probs(pred.outputs().values().begin(), pred.outputs().values().end());
  probs.insert(probs.end(), pred2.outputs().values().begin(), pred2.outputs().values().end());
  double acc = 0, nll = 0, brier = 0;
  std::vector<double> conf(15), hits(15);
  for (int r = 0; r < 100; ++r) {
    const int y = static_cast<int>(d.y[r]);
    int arg = 0;
    for (int c = 0; c < 3; ++c) {
      const double p = probs[r * 3 + c];
      brier += (p - (c == y)) * (p - (c == y));
      if (p > probs[r * 3 + arg]) arg = c;
    }
    acc += arg == y;
    nll -= std::log(std::max<double>(probs[r * 3 + y], 1e-12));
    const double top = probs[r * 3 + arg];
    const int bin = std::min(14, static_cast<int>(top * 15));
    conf[bin] += top;
    hits[bin] += arg == y;
  }
  double ece = 0;
  for (int b = 0; b < 15; ++b) ece += std::abs(hits[b] - conf[b]);
  EXPECT_NEAR(resp.accuracy(), acc / 100, 1e-9);
  EXPECT_NEAR(resp.nll(), nll / 100, 1e-5);
  EXPECT_NEAR(resp.brier(), brier / 100, 1e-5);
  EXPECT_NEAR(resp.ece(), ece / 100, 1e-5);
  EXPECT_GT(resp.accuracy(), 0.7);
}

TEST_F(ServiceTest, EvaluateClassificationMonteCarlo) {
  StartServer();
  TrainedClassifier();
  v1::EvaluateRequest req;
  req.set_model("clf");
  req.set_dataset("clf-data");
  req.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  req.set_samples(20);
  req.set_seed(3);
  v1::EvaluateResponse a, b, eval;
  ASSERT_OK(Evaluate(req, &a));
  ASSERT_OK(Evaluate(req, &b));
  EXPECT_EQ(a.mode(), v1::EVAL_MODE_MONTE_CARLO);
  EXPECT_EQ(a.samples(), 20);
  EXPECT_EQ(a.seed(), 3u);
  EXPECT_EQ(a.rows(), 240);
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString());
  EXPECT_GT(a.accuracy(), 0.7);
  EXPECT_GT(a.nll(), 0.0);
  EXPECT_GE(a.brier(), 0.0);
  EXPECT_LE(a.brier(), 2.0);
  EXPECT_GE(a.ece(), 0.0);
  EXPECT_LE(a.ece(), 1.0);
  v1::EvaluateRequest eval_req = req;
  eval_req.clear_mode();
  ASSERT_OK(Evaluate(eval_req, &eval));
  EXPECT_NE(a.nll(), eval.nll());  // the stochastic passes do change the answer

  req.clear_seed();
  v1::EvaluateResponse chosen;
  ASSERT_OK(Evaluate(req, &chosen));
  req.set_seed(chosen.seed());
  v1::EvaluateResponse replay;
  ASSERT_OK(Evaluate(req, &replay));
  EXPECT_EQ(chosen.nll(), replay.nll());
}

TEST_F(ServiceTest, EvaluateRegression) {
  StartServer();
  constexpr double kTau = 10.0;
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, kTau)));
  ASSERT_OK(CreateModel("reg-no-tau", RegressorSpec(4, 0)));
  const Data d = RegressionData(120, 4, 12);
  ASSERT_OK(UploadRows("reg-data", d, v1::TASK_REGRESSION));
  ASSERT_OK(Train(TrainRequest("reg", "reg-data", 20)));

  v1::EvaluateRequest req;
  req.set_model("reg");
  req.set_dataset("reg-data");
  req.set_limit(60);
  v1::EvaluateResponse eval;
  ASSERT_OK(Evaluate(req, &eval));
  EXPECT_EQ(eval.task(), v1::TASK_REGRESSION);
  EXPECT_EQ(eval.rows(), 60);
  v1::PredictResponse pred;
  ASSERT_OK(Predict("reg", RowsOf(d, 60), &pred));
  double sq = 0, ll = 0;
  for (int r = 0; r < 60; ++r) {
    const double e = d.y[r] - pred.outputs().values(r);
    sq += e * e;
    ll += -0.5 * std::log(2 * M_PI) + 0.5 * std::log(kTau) - 0.5 * kTau * e * e;
  }
  EXPECT_NEAR(eval.rmse(), std::sqrt(sq / 60), 1e-5);
  EXPECT_NEAR(eval.log_likelihood(), ll / 60, 1e-4);
  EXPECT_LT(eval.rmse(), 0.5);  // the targets' own spread is about 0.55

  req.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  req.set_samples(30);
  req.set_seed(8);
  v1::EvaluateResponse mc, mc2;
  ASSERT_OK(Evaluate(req, &mc));
  ASSERT_OK(Evaluate(req, &mc2));
  EXPECT_EQ(mc.SerializeAsString(), mc2.SerializeAsString());
  EXPECT_EQ(mc.samples(), 30);
  EXPECT_EQ(mc.seed(), 8u);
  EXPECT_GT(mc.rmse(), 0.0);
  EXPECT_LT(mc.rmse(), 0.6);
  EXPECT_TRUE(std::isfinite(mc.log_likelihood()));
  EXPECT_LT(mc.log_likelihood(), 0.5 * std::log(kTau / (2 * M_PI)) + 1e-6);  // its upper bound

  // Without tau there is no likelihood to report.
  req.set_model("reg-no-tau");
  ASSERT_OK(Evaluate(req, &mc));
  EXPECT_TRUE(std::isnan(mc.log_likelihood()));
  req.clear_mode();
  ASSERT_OK(Evaluate(req, &eval));
  EXPECT_TRUE(std::isnan(eval.log_likelihood()));
  EXPECT_GT(eval.rmse(), 0.0);
}

// ---- Error codes ----

TEST_F(ServiceTest, UnknownModelOrDatasetIsNotFound) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(20, 4, 1)));
  const v1::Tensor x = Batch({0, 0, 0, 0}, {1, 4});
  {
    v1::GetModelRequest req;
    req.set_name("nope");
    v1::GetModelResponse resp;
    Ctx ctx;
    EXPECT_CODE(stub_->GetModel(&ctx, req, &resp), StatusCode::NOT_FOUND);
  }
  {
    v1::DeleteModelRequest req;
    req.set_name("nope");
    v1::DeleteModelResponse resp;
    Ctx ctx;
    EXPECT_CODE(stub_->DeleteModel(&ctx, req, &resp), StatusCode::NOT_FOUND);
  }
  {
    v1::DeleteDatasetRequest req;
    req.set_name("nope");
    v1::DeleteDatasetResponse resp;
    Ctx ctx;
    EXPECT_CODE(stub_->DeleteDataset(&ctx, req, &resp), StatusCode::NOT_FOUND);
  }
  v1::PredictResponse pr;
  EXPECT_CODE(Predict("nope", x, &pr), StatusCode::NOT_FOUND);
  v1::PredictUncertaintyResponse ur;
  EXPECT_CODE(Uncertainty(UncertaintyRequest("nope", x, 5, 1), &ur), StatusCode::NOT_FOUND);
  EXPECT_CODE(Train(TrainRequest("nope", "d", 1)), StatusCode::NOT_FOUND);
  EXPECT_CODE(Train(TrainRequest("m", "nope", 1)), StatusCode::NOT_FOUND);
  v1::EvaluateRequest ev;
  ev.set_model("nope");
  ev.set_dataset("d");
  v1::EvaluateResponse er;
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::NOT_FOUND);
  ev.set_model("m");
  ev.set_dataset("nope");
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::NOT_FOUND);
  v1::ImportDatasetRequest imp;
  imp.set_name("x");
  imp.set_path("missing.csv");
  EXPECT_CODE(ImportDataset(imp), StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, DuplicateModelNameIsAlreadyExists) {
  StartServer();
  ASSERT_OK(CreateModel("dup", ClassifierSpec()));
  const grpc::Status s = CreateModel("dup", ClassifierSpec(8));
  EXPECT_CODE(s, StatusCode::ALREADY_EXISTS);
  EXPECT_NE(s.error_message().find("dup"), std::string::npos) << s.error_message();
  EXPECT_EQ(GetModel("dup").spec().input_shape(0), 4);  // the first one is untouched
}

TEST_F(ServiceTest, BadNamesAreInvalidArgument) {
  StartServer();
  for (const std::string& name :
       {std::string(), std::string("../x"), std::string(65, 'a'), std::string(".hidden"),
        std::string("a/b"), std::string("white space"), std::string("-dash")}) {
    const grpc::Status s = CreateModel(name, ClassifierSpec());
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("name"), std::string::npos) << s.error_message();
    EXPECT_CODE(UploadRows(name, ClassificationData(4, 4, 1)), StatusCode::INVALID_ARGUMENT);
    v1::ImportDatasetRequest imp;
    imp.set_name(name);
    imp.set_path("a.csv");
    EXPECT_CODE(ImportDataset(imp), StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_TRUE(ListModels().empty());
  EXPECT_TRUE(ListDatasets().empty());
  EXPECT_FALSE(fs::exists(dir_.path() / "x"));
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "x"));
  // The longest allowed name and the allowed punctuation.
  ASSERT_OK(CreateModel(std::string(64, 'b'), ClassifierSpec()));
  ASSERT_OK(CreateModel("v1.2_final-B", ClassifierSpec()));
}

TEST_F(ServiceTest, BadDropoutRatesAreInvalidArgument) {
  StartServer();
  for (double rate : {1.0, -0.1, std::numeric_limits<double>::quiet_NaN()}) {
    v1::ModelSpec spec = ClassifierSpec();
    spec.mutable_layers(2)->set_rate(rate);
    const grpc::Status s = CreateModel("m", spec);
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("rate"), std::string::npos) << s.error_message();
    EXPECT_NE(s.error_message().find("layers[2]"), std::string::npos) << s.error_message();
  }
  EXPECT_TRUE(ListModels().empty());
  v1::CreateModelRequest no_spec;
  no_spec.set_name("m");
  v1::CreateModelResponse resp;
  Ctx ctx;
  EXPECT_CODE(stub_->CreateModel(&ctx, no_spec, &resp), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, BadInputsAreInvalidArgument) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  std::vector<float> ok(8, 0.25f);
  auto check = [&](const v1::Tensor& t, const std::string& must_contain) {
    v1::PredictResponse pr;
    const grpc::Status s = Predict("m", t, &pr);
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find(must_contain), std::string::npos) << s.error_message();
    v1::PredictUncertaintyResponse ur;
    EXPECT_CODE(Uncertainty(UncertaintyRequest("m", t, 5, 1), &ur), StatusCode::INVALID_ARGUMENT);
  };
  check(Batch(std::vector<float>(6, 0.f), {2, 3}), "inputs");  // rows of 3, the model wants 4
  check(Batch(std::vector<float>(10, 0.f), {2, 5}), "inputs");
  std::vector<float> nan = ok;
  nan[1 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
  check(Batch(nan, {2, 4}), "row 1, column 2");
  std::vector<float> inf = ok;
  inf[0 * 4 + 3] = std::numeric_limits<float>::infinity();
  check(Batch(inf, {2, 4}), "row 0, column 3");
  check(Batch({}, {}), "inputs");                                // no shape, no values
  check(Batch({}, {0, 4}), "inputs.shape[0]");                    // an empty batch
  check(Batch(std::vector<float>(7, 0.f), {2, 4}), "7 values");  // shape needs 8
  check(Batch(std::vector<float>(9, 0.f), {2, 4}), "9 values");
  v1::PredictResponse pr;
  ASSERT_OK(Predict("m", Batch(ok, {2, 4}), &pr));
}

TEST_F(ServiceTest, SampleLimits) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(20, 4, 1)));
  const v1::Tensor x = Batch(std::vector<float>(4, 0.1f), {1, 4});
  v1::PredictUncertaintyResponse r;
  const grpc::Status negative = Uncertainty(UncertaintyRequest("m", x, -1, 1), &r);
  EXPECT_CODE(negative, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(negative.error_message().find("samples"), std::string::npos);
  EXPECT_CODE(Uncertainty(UncertaintyRequest("m", x, kMaxSamples + 1, 1), &r),
              StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_OK(Uncertainty(UncertaintyRequest("m", x, kMaxSamples, 1), &r));
  EXPECT_EQ(r.num_samples(), kMaxSamples);

  v1::EvaluateRequest ev;
  ev.set_model("m");
  ev.set_dataset("d");
  ev.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  ev.set_samples(-3);
  v1::EvaluateResponse er;
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::INVALID_ARGUMENT);
  ev.set_samples(kMaxSamples + 1);
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::RESOURCE_EXHAUSTED);
  ev.set_samples(0);
  ASSERT_OK(Evaluate(ev, &er));
  EXPECT_EQ(er.samples(), kDefaultSamples);
  ev.set_mode(static_cast<v1::EvalMode>(9));
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, BatchAboveTheRowLimitIsResourceExhausted) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  const v1::Tensor too_many = Batch(std::vector<float>((kMaxBatchRows + 1) * 4, 0.f),
                                    {kMaxBatchRows + 1, 4});
  v1::PredictResponse pr;
  EXPECT_CODE(Predict("m", too_many, &pr), StatusCode::RESOURCE_EXHAUSTED);
  v1::PredictUncertaintyResponse ur;
  EXPECT_CODE(Uncertainty(UncertaintyRequest("m", too_many, 2, 1), &ur),
              StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_OK(Predict("m", Batch(std::vector<float>(kMaxBatchRows * 4, 0.f), {kMaxBatchRows, 4}),
                    &pr));
  EXPECT_EQ(pr.outputs().shape(0), kMaxBatchRows);
}

TEST_F(ServiceTest, OversizeMessagesAreResourceExhausted) {
  ServerConfig config = Config();
  config.max_message_bytes = 16 << 10;
  config.service.max_batch_rows = 1 << 20;
  StartServer(config);
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  // 8192 floats: 32 KiB on the wire, twice the limit.
  v1::PredictResponse pr;
  EXPECT_CODE(Predict("m", Batch(std::vector<float>(8192, 0.5f), {2048, 4}), &pr),
              StatusCode::RESOURCE_EXHAUSTED);
  // A response above the limit: 100 samples x 40 rows x 3 classes = 48 KiB.
  v1::PredictUncertaintyRequest big =
      UncertaintyRequest("m", Batch(std::vector<float>(160, 0.5f), {40, 4}), 100, 1);
  big.set_return_samples(true);
  v1::PredictUncertaintyResponse ur;
  EXPECT_CODE(Uncertainty(big, &ur), StatusCode::RESOURCE_EXHAUSTED);
  // Small messages still pass.
  ASSERT_OK(Predict("m", Batch(std::vector<float>(8, 0.5f), {2, 4}), &pr));
}

TEST_F(ServiceTest, SecondTrainOnABusyModelIsFailedPrecondition) {
  StartServer();
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  ASSERT_OK(UploadRows("slow-data", ClassificationData(2000, 8, 13), v1::TASK_CLASSIFICATION,
                       500));
  v1::TrainRequest req = TrainRequest("slow", "slow-data", 100, 8);
  req.set_report_every_steps(1);

  Ctx ctx(120);
  std::promise<void> first_event;
  std::atomic<int> events{0};
  grpc::Status first_status;
  std::thread trainer([&] {
    auto reader = stub_->Train(&ctx, req);
    v1::TrainEvent e;
    while (reader->Read(&e)) {
      if (e.kind() == v1::TrainEvent::KIND_STEP || e.kind() == v1::TrainEvent::KIND_EPOCH) {
        if (events++ == 0) first_event.set_value();
      }
    }
    first_status = reader->Finish();
    if (events == 0) first_event.set_value();
  });
  ASSERT_EQ(first_event.get_future().wait_for(std::chrono::seconds(60)),
            std::future_status::ready);
  ASSERT_GT(events.load(), 0) << "the first Train ended early: " << Describe(first_status);

  const grpc::Status second = Train(TrainRequest("slow", "slow-data", 1, 8));
  EXPECT_CODE(second, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(second.error_message().find("slow"), std::string::npos) << second.error_message();
  EXPECT_TRUE(GetModel("slow").training());
  {
    v1::DeleteModelRequest del;
    del.set_name("slow");
    v1::DeleteModelResponse resp;
    Ctx c;
    EXPECT_CODE(stub_->DeleteModel(&c, del, &resp), StatusCode::FAILED_PRECONDITION);
  }
  ctx.TryCancel();
  trainer.join();
  EXPECT_CODE(first_status, StatusCode::CANCELLED);
  EXPECT_FALSE(WaitUntilIdle("slow").training());
  // Once the first run is over the model trains again.
  ASSERT_OK(UploadRows("tiny", ClassificationData(16, 8, 1)));
  ASSERT_OK(Train(TrainRequest("slow", "tiny", 1, 8)));
}

TEST_F(ServiceTest, ImportDatasetOutsideTheDataRootIsRefused) {
  StartServer();
  const std::string csv = "a,b,label\n1,2,0\n3,4,1\n";
  WriteFile(dir_.path() / "data" / "inside.csv", csv);
  WriteFile(dir_.path() / "outside.csv", csv);
  WriteFile(dir_.path() / "data2" / "sibling.csv", csv);  // shares the root's name as a prefix
  fs::create_directories(dir_.path() / "data" / "links");
  fs::create_symlink(dir_.path() / "outside.csv", dir_.path() / "data" / "links" / "out.csv");
  fs::create_directory_symlink(dir_.path() / "data2", dir_.path() / "data" / "links" / "dir");

  auto import = [&](const std::string& path, const std::string& label_path = "") {
    v1::ImportDatasetRequest req;
    req.set_name("attempt");
    req.set_path(path);
    req.set_label_path(label_path);
    return ImportDataset(req);
  };
  EXPECT_CODE(import("../etc/passwd"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("../outside.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("sub/../../outside.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("../data2/sibling.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("links/out.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("links/dir/sibling.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("/etc/passwd"), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(import((dir_.path() / "outside.csv").string()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(import(""), StatusCode::INVALID_ARGUMENT);
  // An IDX label file is held to the same rule.
  WriteFile(dir_.path() / "data" / "images-idx3-ubyte", "IDX images");
  EXPECT_CODE(import("images-idx3-ubyte", "../outside.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("images-idx3-ubyte", "links/out.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(ListDatasets().empty());
  // A symlink that stays inside is fine, and so is the file itself.
  fs::create_symlink(dir_.path() / "data" / "inside.csv", dir_.path() / "data" / "links" / "in.csv");
  ASSERT_OK(import("links/in.csv"));
  EXPECT_EQ(ListDatasets().size(), 1u);
}

TEST_F(ServiceTest, ImportDatasetWithoutADataRootIsFailedPrecondition) {
  ServerConfig config = Config();
  config.service.data_root.clear();
  StartServer(config);
  WriteFile(dir_.path() / "data" / "inside.csv", "a,label\n1,0\n");
  v1::ImportDatasetRequest req;
  req.set_name("x");
  req.set_path("inside.csv");
  const grpc::Status s = ImportDataset(req);
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("data-root"), std::string::npos) << s.error_message();
}

TEST_F(ServiceTest, ReadOnlyReplicaRefusesWrites) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(32, 4, 1)));
  ASSERT_OK(Train(TrainRequest("m", "d", 1)));
  WriteFile(dir_.path() / "data" / "f.csv", "a,label\n1,0\n");
  StopServer();

  ServerConfig config = Config();
  config.service.read_only = true;
  StartServer(config);
  EXPECT_CODE(CreateModel("m2", ClassifierSpec()), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(Train(TrainRequest("m", "d", 1)), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(UploadRows("d2", ClassificationData(8, 4, 1)), StatusCode::FAILED_PRECONDITION);
  v1::ImportDatasetRequest imp;
  imp.set_name("f");
  imp.set_path("f.csv");
  EXPECT_CODE(ImportDataset(imp), StatusCode::FAILED_PRECONDITION);
  {
    v1::DeleteModelRequest req;
    req.set_name("m");
    v1::DeleteModelResponse resp;
    Ctx ctx;
    EXPECT_CODE(stub_->DeleteModel(&ctx, req, &resp), StatusCode::FAILED_PRECONDITION);
  }
  {
    v1::DeleteDatasetRequest req;
    req.set_name("d");
    v1::DeleteDatasetResponse resp;
    Ctx ctx;
    EXPECT_CODE(stub_->DeleteDataset(&ctx, req, &resp), StatusCode::FAILED_PRECONDITION);
  }
  // It serves what the store holds.
  EXPECT_EQ(GetModel("m").version(), 2);
  v1::PredictResponse pr;
  ASSERT_OK(Predict("m", Batch(std::vector<float>(4, 0.f), {1, 4}), &pr));
  EXPECT_EQ(pr.version(), 2);
  EXPECT_EQ(ListDatasets().size(), 1u);
  EXPECT_EQ(ListModels().size(), 1u);
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "models" / "m2"));
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "models" / "m" / "3"));
}

TEST_F(ServiceTest, DatasetThatDoesNotFitTheModelIsInvalidArgument) {
  StartServer();
  ASSERT_OK(CreateModel("clf", ClassifierSpec()));  // input [4], 3 classes
  ASSERT_OK(CreateModel("reg", RegressorSpec()));   // input [4], 1 target
  ASSERT_OK(UploadRows("regression", RegressionData(20, 4, 1), v1::TASK_REGRESSION));
  ASSERT_OK(UploadRows("wide", ClassificationData(20, 5, 1)));
  Data five_classes = ClassificationData(20, 4, 1);
  five_classes.y[3] = 4;
  ASSERT_OK(UploadRows("five", five_classes));
  Data two_targets = RegressionData(10, 4, 2);
  two_targets.targets = 2;
  two_targets.y.insert(two_targets.y.end(), two_targets.y.begin(), two_targets.y.end());
  ASSERT_OK(UploadRows("two-targets", two_targets, v1::TASK_REGRESSION));
  ASSERT_OK(UploadRows("fits", ClassificationData(20, 4, 1)));

  auto both = [&](const std::string& model, const std::string& dataset) {
    const grpc::Status s = Train(TrainRequest(model, dataset, 1));
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find(dataset), std::string::npos) << s.error_message();
    v1::EvaluateRequest ev;
    ev.set_model(model);
    ev.set_dataset(dataset);
    v1::EvaluateResponse er;
    EXPECT_CODE(Evaluate(ev, &er), StatusCode::INVALID_ARGUMENT);
  };
  both("clf", "regression");
  both("clf", "wide");
  both("clf", "five");
  both("reg", "fits");
  both("reg", "two-targets");
  EXPECT_EQ(GetModel("clf").version(), 1);
  EXPECT_EQ(GetModel("reg").version(), 1);
  ASSERT_OK(Train(TrainRequest("clf", "fits", 1)));
}

// ---- Cancellation, restarts, concurrency, shutdown ----

TEST_F(ServiceTest, CancelledTrainKeepsTheLastPublishedVersion) {
  StartServer();
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  ASSERT_OK(UploadRows("slow-data", ClassificationData(2000, 8, 13), v1::TASK_CLASSIFICATION,
                       500));
  Ctx ctx(120);
  auto reader = stub_->Train(&ctx, TrainRequest("slow", "slow-data", 100, 8));
  v1::TrainEvent e;
  int64_t last_epoch_version = 0;
  int epoch_events = 0;
  while (reader->Read(&e)) {
    if (e.kind() == v1::TrainEvent::KIND_EPOCH) {
      ++epoch_events;
      last_epoch_version = e.version();
      ctx.TryCancel();
    }
  }
  const grpc::Status s = reader->Finish();
  EXPECT_CODE(s, StatusCode::CANCELLED);
  ASSERT_GE(epoch_events, 1);
  EXPECT_EQ(last_epoch_version, 2);

  const v1::ModelInfo m = WaitUntilIdle("slow");
  EXPECT_FALSE(m.training());
  EXPECT_EQ(m.version(), last_epoch_version);
  ASSERT_GT(m.versions_size(), 0);
  EXPECT_EQ(m.versions(m.versions_size() - 1), last_epoch_version);
  EXPECT_EQ(m.history_size(), epoch_events);
  EXPECT_LT(m.steps(), 100 * 250);
  v1::PredictResponse pr;
  ASSERT_OK(Predict("slow", Batch(std::vector<float>(8, 0.f), {1, 8}), &pr));
  EXPECT_EQ(pr.version(), last_epoch_version);
  // Nothing newer reached the store either.
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "models" / "slow" /
                          std::to_string(last_epoch_version + 1)));
}

TEST_F(ServiceTest, RestartServesTheSameModelsBitForBit) {
  StartServer();
  TrainedClassifier(3);
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, 2.0)));
  ASSERT_OK(UploadRows("reg-data", RegressionData(64, 4, 3), v1::TASK_REGRESSION));
  v1::TrainRequest std_req = TrainRequest("reg", "reg-data", 2);
  std_req.set_standardize(true);
  ASSERT_OK(Train(std_req));
  const Data probe = ClassificationData(9, 4, 55);
  const v1::Tensor x = RowsOf(probe, 9);

  v1::PredictResponse clf_before, reg_before;
  ASSERT_OK(Predict("clf", x, &clf_before));
  ASSERT_OK(Predict("reg", x, &reg_before));
  v1::PredictUncertaintyResponse mc_before;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 20, 42), &mc_before));
  const auto models_before = ListModels();
  const auto datasets_before = ListDatasets();
  ASSERT_EQ(models_before.size(), 2u);
  ASSERT_EQ(datasets_before.size(), 2u);

  StopServer();
  StartServer();

  const auto models_after = ListModels();
  ASSERT_EQ(models_after.size(), models_before.size());
  for (size_t i = 0; i < models_after.size(); ++i) {
    // Histories without a validation split hold NaN, which must compare equal to itself here.
    google::protobuf::util::DefaultFieldComparator comparator;
    comparator.set_treat_nan_as_equal(true);
    std::string diff;
    MessageDifferencer differ;
    differ.set_field_comparator(&comparator);
    differ.ReportDifferencesToString(&diff);
    EXPECT_TRUE(differ.Compare(models_before[i], models_after[i])) << diff;
  }
  const auto datasets_after = ListDatasets();
  ASSERT_EQ(datasets_after.size(), datasets_before.size());
  for (size_t i = 0; i < datasets_after.size(); ++i) {
    EXPECT_TRUE(MessageDifferencer::Equals(datasets_before[i], datasets_after[i]))
        << datasets_after[i].ShortDebugString();
  }
  v1::PredictResponse clf_after, reg_after;
  ASSERT_OK(Predict("clf", x, &clf_after));
  ASSERT_OK(Predict("reg", x, &reg_after));
  EXPECT_EQ(clf_after.version(), clf_before.version());
  EXPECT_TRUE(SameBits(clf_before.outputs(), clf_after.outputs()));
  EXPECT_TRUE(SameBits(reg_before.outputs(), reg_after.outputs()));  // standardisation kept
  v1::PredictUncertaintyResponse mc_after;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 20, 42), &mc_after));
  EXPECT_EQ(mc_before.SerializeAsString(), mc_after.SerializeAsString());

  // The restarted server keeps counting versions and trains on the stored data set.
  std::vector<v1::TrainEvent> events;
  ASSERT_OK(Train(TrainRequest("clf", "clf-data", 1), &events));
  EXPECT_EQ(events.back().version(), clf_before.version() + 1);
}

TEST_F(ServiceTest, RestartDropsUnfinishedWrites) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  StopServer();
  const fs::path leftover = dir_.path() / "store" / "models" / "m" / ".2.tmp-1-1-1";
  fs::create_directories(leftover);
  WriteFile(leftover / "checkpoint.pb", "half a checkpoint");
  StartServer();
  EXPECT_FALSE(fs::exists(leftover));
  const v1::ModelInfo m = GetModel("m");
  EXPECT_EQ(m.version(), 1);
  EXPECT_EQ(m.versions_size(), 1);
}

TEST_F(ServiceTest, PredictWhileTrainingNeverGoesBackwards) {
  StartServer();
  ASSERT_OK(CreateModel("m", SlowSpec()));
  const Data d = ClassificationData(2000, 8, 21);
  ASSERT_OK(UploadRows("d", d, v1::TASK_CLASSIFICATION, 500));
  const v1::Tensor x = RowsOf(d, 8);

  std::atomic<bool> done{false};
  std::atomic<int> calls{0};
  std::atomic<int> ready{0};  // clients that have made their first call
  std::mutex mu;
  std::vector<std::string> errors;
  std::vector<int64_t> max_seen(4, 0);
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&, i] {
      auto stub = v1::Dropnet::NewStub(channel_);
      int64_t last = 0;
      uint64_t seed = 1;
      while (!done.load()) {
        int64_t version = 0;
        grpc::Status s;
        if ((i + calls.load()) % 2 == 0) {
          v1::PredictRequest req;
          req.set_model("m");
          *req.mutable_inputs() = x;
          v1::PredictResponse resp;
          Ctx ctx;
          s = stub->Predict(&ctx, req, &resp);
          version = resp.version();
          if (s.ok() && resp.outputs().values_size() != 8 * 3) s = grpc::Status(StatusCode::INTERNAL, "size");
        } else {
          v1::PredictUncertaintyRequest req = UncertaintyRequest("m", x, 8, seed++);
          v1::PredictUncertaintyResponse resp;
          Ctx ctx;
          s = stub->PredictUncertainty(&ctx, req, &resp);
          version = resp.version();
          if (s.ok() && resp.mutual_information_size() != 8) s = grpc::Status(StatusCode::INTERNAL, "size");
        }
        if (calls++ < 4) ++ready;
        std::lock_guard lock(mu);
        if (!s.ok()) {
          errors.push_back(Describe(s));
        } else if (version < last) {
          errors.push_back("client " + std::to_string(i) + " saw version " +
                           std::to_string(version) + " after " + std::to_string(last));
        } else {
          last = version;
          max_seen[i] = last;
        }
      }
    });
  }
  // Training starts once the callers are busy, and runs about 5 x 250 steps.
  for (int i = 0; i < 3000 && ready.load() < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::vector<v1::TrainEvent> events;
  const grpc::Status train = Train(TrainRequest("m", "d", 5, 8), &events);
  done = true;
  for (auto& t : clients) t.join();
  ASSERT_OK(train);
  EXPECT_TRUE(errors.empty()) << errors.size() << " errors, first: " << errors.front();
  EXPECT_GT(calls.load(), 8);
  EXPECT_EQ(events.back().version(), 6);
  for (int i = 0; i < 4; ++i) EXPECT_LE(max_seen[i], 6);
  EXPECT_GT(*std::max_element(max_seen.begin(), max_seen.end()), 1)
      << "no caller saw a version published during training";
  v1::PredictResponse pr;
  ASSERT_OK(Predict("m", x, &pr));
  EXPECT_EQ(pr.version(), 6);
}

TEST_F(ServiceTest, ShutdownDuringTrainingSavesTheWork) {
  StartServer();
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  ASSERT_OK(UploadRows("slow-data", ClassificationData(2000, 8, 13), v1::TASK_CLASSIFICATION,
                       500));
  std::promise<int64_t> first_epoch;
  grpc::Status status;
  std::thread trainer([&] {
    Ctx ctx(120);
    auto reader = stub_->Train(&ctx, TrainRequest("slow", "slow-data", 100, 8));
    v1::TrainEvent e;
    bool told = false;
    while (reader->Read(&e)) {
      if (e.kind() == v1::TrainEvent::KIND_EPOCH && !told) {
        first_epoch.set_value(e.version());
        told = true;
      }
    }
    status = reader->Finish();
    if (!told) first_epoch.set_value(-1);
  });
  auto future = first_epoch.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  const int64_t epoch_version = future.get();
  server_->Shutdown();
  trainer.join();
  ASSERT_GE(epoch_version, 2) << Describe(status);
  // Shutting down ends the call as UNAVAILABLE and keeps the unfinished epoch as a version.
  EXPECT_CODE(status, StatusCode::UNAVAILABLE);
  const std::string marker = "saved as version ";
  const auto at = status.error_message().find(marker);
  ASSERT_NE(at, std::string::npos) << status.error_message();
  const int64_t saved = std::stoll(status.error_message().substr(at + marker.size()));
  EXPECT_GE(saved, epoch_version);

  StartServer();
  const v1::ModelInfo m = GetModel("slow");
  EXPECT_EQ(m.version(), saved);
  EXPECT_FALSE(m.training());
}

TEST_F(ServiceTest, CallsDuringShutdownAreUnavailable) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  server_->service().StartDraining();
  v1::PredictResponse pr;
  EXPECT_CODE(Predict("m", Batch(std::vector<float>(4, 0.f), {1, 4}), &pr),
              StatusCode::UNAVAILABLE);
  EXPECT_CODE(CreateModel("n", ClassifierSpec()), StatusCode::UNAVAILABLE);
}

// ---- Health ----

#ifdef DROPNET_HAVE_HEALTH_PROTO
using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

TEST_F(ServiceTest, HealthServingThenNotServingOnShutdown) {
  StartServer();
  auto health = Health::NewStub(channel_);
  for (const char* service : {"", "dropnet.v1.Dropnet"}) {
    HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    Ctx ctx;
    ASSERT_OK(health->Check(&ctx, req, &resp));
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING) << "'" << service << "'";
  }
  {
    HealthCheckRequest req;
    req.set_service("no.such.Service");
    HealthCheckResponse resp;
    Ctx ctx;
    EXPECT_CODE(health->Check(&ctx, req, &resp), StatusCode::NOT_FOUND);
  }

  // Watch both names; shutting down must turn them NOT_SERVING before the server goes away.
  std::vector<std::unique_ptr<Ctx>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<HealthCheckResponse>>> watches;
  for (const char* service : {"", "dropnet.v1.Dropnet"}) {
    HealthCheckRequest req;
    req.set_service(service);
    contexts.push_back(std::make_unique<Ctx>(30));
    watches.push_back(health->Watch(contexts.back().get(), req));
    HealthCheckResponse first;
    ASSERT_TRUE(watches.back()->Read(&first));
    EXPECT_EQ(first.status(), HealthCheckResponse::SERVING);
  }
  std::thread stopper([&] { server_->Shutdown(); });
  for (size_t i = 0; i < watches.size(); ++i) {
    HealthCheckResponse next;
    bool not_serving = false;
    while (watches[i]->Read(&next)) {
      if (next.status() == HealthCheckResponse::NOT_SERVING) {
        not_serving = true;
        break;
      }
    }
    EXPECT_TRUE(not_serving) << "watch " << i << " never saw NOT_SERVING";
    contexts[i]->TryCancel();
    watches[i]->Finish();
  }
  stopper.join();
}
#else
TEST_F(ServiceTest, HealthServingThenNotServingOnShutdown) {
  GTEST_SKIP() << "grpc-proto's health.proto is not installed";
}
#endif

}  // namespace
}  // namespace dropnet::service
