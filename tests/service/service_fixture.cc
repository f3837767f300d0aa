// Definitions of the helpers and the ServiceTest fixture declared in service_fixture.h.
#include "tests/service/service_fixture.h"

#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <thread>

#include "tests/testing/spec_json.h"

namespace dropnet::service {

namespace fs = std::filesystem;

namespace {

// `rows` rows of `width` features uniform in [-1, 1); each row's target is `target` of its
// features, drawn after them from the same generator.
Data RandomRows(int64_t rows, int width, uint64_t seed,
                const std::function<float(const std::vector<float>&, Rng*)>& target) {
  Rng rng(seed);
  Data d;
  d.rows = rows;
  d.width = width;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> v(width);
    for (auto& f : v) f = rng.Symmetric();
    d.x.insert(d.x.end(), v.begin(), v.end());
    d.y.push_back(target(v, &rng));
  }
  return d;
}

// input [width] -> dense 16 -> relu -> dropout 0.3 -> dense `outputs`.
v1::ModelSpec DropoutNet(int width, uint64_t seed, int outputs) {
  v1::ModelSpec spec;
  spec.add_input_shape(width);
  spec.set_seed(seed);
  AddLayer(&spec, "dense", 16);
  AddLayer(&spec, "relu");
  AddLayer(&spec, "dropout", 0, 0.3);
  AddLayer(&spec, "dense", outputs);
  return spec;
}

// Calls the unary `rpc` of `stub` with a request that names `name`.
template <typename Request, typename Response>
grpc::Status CallNaming(v1::Dropnet::Stub* stub,
                        grpc::Status (v1::Dropnet::Stub::*rpc)(grpc::ClientContext*, const Request&,
                                                               Response*),
                        const std::string& name, Response* resp) {
  Request req;
  req.set_name(name);
  Ctx ctx;
  return (stub->*rpc)(&ctx, req, resp);
}

}  // namespace

Data ClassificationData(int64_t rows, int width, uint64_t seed, bool random_labels) {
  return RandomRows(rows, width, seed, [random_labels](const std::vector<float>& v, Rng* rng) {
    const float s[3] = {v[0] + v[1], v[2] - v[0], -v[1] - v[3]};
    int label = static_cast<int>(std::max_element(s, s + 3) - s);
    if (random_labels) label = static_cast<int>(rng->Next() % 3);
    return static_cast<float>(label);
  });
}

Data RegressionData(int64_t rows, int width, uint64_t seed) {
  return RandomRows(rows, width, seed, [](const std::vector<float>& v, Rng* rng) {
    return 0.8f * v[0] - 0.5f * v[1] + 0.3f * v[2] * v[3] + 0.05f * rng->Symmetric();
  });
}

v1::Tensor Batch(const std::vector<float>& values, std::vector<int64_t> shape) {
  v1::Tensor t;
  for (int64_t d : shape) t.add_shape(d);
  t.mutable_values()->Add(values.begin(), values.end());
  return t;
}

v1::Tensor RowsOf(const Data& d, int64_t rows) {
  std::vector<float> v(d.x.begin(), d.x.begin() + rows * d.width);
  return Batch(v, {rows, d.width});
}

v1::LayerSpec* AddLayer(v1::ModelSpec* spec, const std::string& type, int units, double rate) {
  auto* l = spec->add_layers();
  l->set_type(type);
  if (units) l->set_units(units);
  if (rate != 0) l->set_rate(rate);
  return l;
}

v1::ModelSpec ClassifierSpec(int width, uint64_t seed) { return DropoutNet(width, seed, 3); }

int64_t ClassifierParameters(int width) { return width * 16 + 16 + 16 * 3 + 3; }

v1::ModelSpec RegressorSpec(int width, double tau) {
  v1::ModelSpec spec = DropoutNet(width, 2, 1);
  spec.set_task(v1::TASK_REGRESSION);
  spec.set_tau(tau);
  return spec;
}

v1::ModelSpec DeterministicSpec() {
  v1::ModelSpec spec;
  spec.add_input_shape(4);
  AddLayer(&spec, "dense", 8);
  AddLayer(&spec, "relu");
  AddLayer(&spec, "dense", 3);
  return spec;
}

v1::ModelSpec SlowSpec() {
  return testing::SpecFromJson(R"({"inputShape": [8], "seed": 3, "layers": [
      {"type": "dense", "units": 256}, {"type": "relu"}, {"type": "dropout", "rate": 0.3},
      {"type": "dense", "units": 256}, {"type": "relu"}, {"type": "dense", "units": 3}]})");
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
  return std::equal(a.values().begin(), a.values().end(), b.values().begin(), [](float u, float v) {
    uint32_t bu, bv;
    std::memcpy(&bu, &u, 4);
    std::memcpy(&bv, &v, 4);
    return bu == bv;
  });
}

std::string Describe(const grpc::Status& s) {
  return std::string(StatusCodeName(s.error_code())) + ": " + s.error_message();
}

void ServiceTest::SetUpTestSuite() {
  const char* level = std::getenv("DROPNET_TEST_LOG");
  SetUpLogging(level ? level : "off");
}

ServerConfig ServiceTest::Config() const {
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

void ServiceTest::StartServer(ServerConfig config) {
  StopServer();
  server_ = std::make_unique<Server>(std::move(config));
  server_->Start();
  ASSERT_GT(server_->port(), 0);
  channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                 grpc::InsecureChannelCredentials());
  stub_ = v1::Dropnet::NewStub(channel_);
}

void ServiceTest::StopServer() {
  stub_.reset();
  channel_.reset();
  if (server_) {
    server_->Shutdown();
    server_->Wait();
    server_.reset();
  }
}

grpc::Status ServiceTest::CreateModel(const std::string& name, const v1::ModelSpec& spec,
                                      v1::CreateModelResponse* resp) {
  v1::CreateModelRequest req;
  req.set_name(name);
  *req.mutable_spec() = spec;
  v1::CreateModelResponse local;
  Ctx ctx;
  return stub_->CreateModel(&ctx, req, resp ? resp : &local);
}

grpc::Status ServiceTest::ImportModel(const std::string& name, const std::string& bytes,
                                      v1::ImportModelResponse* resp, v1::Task task) {
  v1::ImportModelRequest req;
  req.set_name(name);
  req.set_onnx_model(bytes);
  req.set_task(task);
  v1::ImportModelResponse local;
  Ctx ctx;
  return stub_->ImportModel(&ctx, req, resp ? resp : &local);
}

v1::ModelInfo ServiceTest::GetModel(const std::string& name) {
  v1::GetModelResponse resp;
  const grpc::Status s = CallNaming(stub_.get(), &v1::Dropnet::Stub::GetModel, name, &resp);
  EXPECT_TRUE(s.ok()) << Describe(s);
  return resp.model();
}

grpc::Status ServiceTest::LookUpModel(const std::string& name) {
  v1::GetModelResponse resp;
  return CallNaming(stub_.get(), &v1::Dropnet::Stub::GetModel, name, &resp);
}

grpc::Status ServiceTest::DeleteModel(const std::string& name) {
  v1::DeleteModelResponse resp;
  return CallNaming(stub_.get(), &v1::Dropnet::Stub::DeleteModel, name, &resp);
}

grpc::Status ServiceTest::DeleteDataset(const std::string& name) {
  v1::DeleteDatasetResponse resp;
  return CallNaming(stub_.get(), &v1::Dropnet::Stub::DeleteDataset, name, &resp);
}

grpc::Status ServiceTest::UploadRows(const std::string& name, const Data& d, v1::Task task,
                                     int64_t rows_per_chunk, bool overwrite,
                                     v1::UploadDatasetResponse* resp,
                                     std::vector<int> input_shape) {
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

grpc::Status ServiceTest::UploadCsv(const std::string& name, const std::string& csv,
                                    size_t chunk_bytes, v1::DatasetHeader header,
                                    v1::UploadDatasetResponse* resp) {
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

grpc::Status ServiceTest::Train(const v1::TrainRequest& req, std::vector<v1::TrainEvent>* events) {
  Ctx ctx(120);
  auto reader = stub_->Train(&ctx, req);
  v1::TrainEvent e;
  while (reader->Read(&e)) {
    if (events) events->push_back(e);
  }
  return reader->Finish();
}

v1::TrainRequest ServiceTest::TrainRequest(const std::string& model, const std::string& dataset,
                                           int epochs, int batch_size) {
  v1::TrainRequest req;
  req.set_model(model);
  req.set_dataset(dataset);
  req.set_epochs(epochs);
  req.set_batch_size(batch_size);
  req.set_seed(17);
  req.set_learning_rate(0.01);
  return req;
}

grpc::Status ServiceTest::Predict(const std::string& model, const v1::Tensor& inputs,
                                  v1::PredictResponse* resp) {
  v1::PredictRequest req;
  req.set_model(model);
  *req.mutable_inputs() = inputs;
  Ctx ctx;
  return stub_->Predict(&ctx, req, resp);
}

grpc::Status ServiceTest::Uncertainty(const v1::PredictUncertaintyRequest& req,
                                      v1::PredictUncertaintyResponse* resp) {
  Ctx ctx;
  return stub_->PredictUncertainty(&ctx, req, resp);
}

v1::PredictUncertaintyRequest ServiceTest::UncertaintyRequest(const std::string& model,
                                                              const v1::Tensor& inputs, int samples,
                                                              std::optional<uint64_t> seed) {
  v1::PredictUncertaintyRequest req;
  req.set_model(model);
  *req.mutable_inputs() = inputs;
  req.set_samples(samples);
  if (seed) req.set_seed(*seed);
  return req;
}

grpc::Status ServiceTest::Evaluate(const v1::EvaluateRequest& req, v1::EvaluateResponse* resp) {
  Ctx ctx;
  return stub_->Evaluate(&ctx, req, resp);
}

grpc::Status ServiceTest::ImportDataset(const v1::ImportDatasetRequest& req,
                                        v1::ImportDatasetResponse* resp) {
  v1::ImportDatasetResponse local;
  Ctx ctx;
  return stub_->ImportDataset(&ctx, req, resp ? resp : &local);
}

std::vector<v1::DatasetInfo> ServiceTest::ListDatasets() {
  const auto resp = CallOk(&v1::Dropnet::Stub::ListDatasets, v1::ListDatasetsRequest());
  return {resp.datasets().begin(), resp.datasets().end()};
}

std::vector<v1::ModelInfo> ServiceTest::ListModels() {
  const auto resp = CallOk(&v1::Dropnet::Stub::ListModels, v1::ListModelsRequest());
  return {resp.models().begin(), resp.models().end()};
}

void ServiceTest::TrainedClassifier(int epochs) {
  ASSERT_OK(CreateModel("clf", ClassifierSpec()));
  ASSERT_OK(UploadRows("clf-data", ClassificationData(240, 4, 1)));
  ASSERT_OK(Train(TrainRequest("clf", "clf-data", epochs)));
}

v1::ModelInfo ServiceTest::WaitUntilIdle(const std::string& name) {
  v1::ModelInfo info;
  for (int i = 0; i < 500; ++i) {
    info = GetModel(name);
    if (!info.training()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return info;
}

}  // namespace dropnet::service
