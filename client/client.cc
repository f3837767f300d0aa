#include "client/client.h"

#include <atomic>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/impl/codegen/client_unary_call.h>

#include "common/status_code_name.h"

namespace dropnet::client {

namespace {

void Check(const grpc::Status& s) {
  if (!s.ok()) throw ClientError(s.error_code(), s.error_message());
}

std::string ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot read ") + what + " '" + path + "'");
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// UNAVAILABLE is retried with exponential backoff by gRPC itself (gRFC A6).
// round_robin: a name with several addresses (dns:///dropnet-headless...:50051, a Kubernetes headless
// Service over the serving replicas) spreads the calls over all of them; with one address it is
// the same as the default pick_first.
std::string ServiceConfig(int max_attempts) {
  std::ostringstream s;
  s << R"({"loadBalancingConfig":[{"round_robin":{}}],"methodConfig":[{"name":[{"service":"dropnet.v1.Dropnet"},{"service":"grpc.health.v1.Health"}],)"
    << R"("retryPolicy":{"maxAttempts":)" << std::max(2, std::min(max_attempts, 5))
    << R"(,"initialBackoff":"0.1s","maxBackoff":"2s","backoffMultiplier":2,)"
    << R"("retryableStatusCodes":["UNAVAILABLE"]}}]})";
  return s.str();
}

}  // namespace

ClientError::ClientError(grpc::StatusCode code, const std::string& message)
    : std::runtime_error(message), code_(code) {}

const char* ClientError::code_name() const { return StatusCodeName(code_); }

Client::Client(ClientOptions options) : options_(std::move(options)) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options_.use_tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options_.ca_file.empty()) ssl.pem_root_certs = ReadFile(options_.ca_file, "CA file");
    if (!options_.cert_file.empty()) ssl.pem_cert_chain = ReadFile(options_.cert_file, "certificate");
    if (!options_.key_file.empty()) ssl.pem_private_key = ReadFile(options_.key_file, "key");
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(ServiceConfig(options_.max_attempts));
  args.SetMaxReceiveMessageSize(options_.max_message_bytes);
  args.SetMaxSendMessageSize(options_.max_message_bytes);
  if (options_.own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  channel_ = grpc::CreateCustomChannel(options_.target, creds, args);
  stub_ = v1::Dropnet::NewStub(channel_);
  predict_bytes_ = std::make_unique<grpc::internal::RpcMethod>(
      "/dropnet.v1.Dropnet/Predict", grpc::internal::RpcMethod::NORMAL_RPC, channel_);
  health_stub_ = grpc::health::v1::Health::NewStub(channel_);
}

void Client::Prepare(grpc::ClientContext* ctx, const CallOptions& call, bool streaming) const {
  if (call.deadline) {
    ctx->set_deadline(std::chrono::system_clock::now() + *call.deadline);
  } else if (!streaming) {
    ctx->set_deadline(std::chrono::system_clock::now() + options_.deadline);
  }
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
}

bool Client::Healthy(const std::string& service, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  Check(health_stub_->Check(&ctx, req, &resp));
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

v1::ModelInfo Client::CreateModel(const std::string& name, const v1::ModelSpec& spec,
                                  CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::CreateModelRequest req;
  req.set_name(name);
  *req.mutable_spec() = spec;
  v1::CreateModelResponse resp;
  Check(stub_->CreateModel(&ctx, req, &resp));
  return resp.model();
}

v1::ModelInfo Client::GetModel(const std::string& name, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::GetModelRequest req;
  req.set_name(name);
  v1::GetModelResponse resp;
  Check(stub_->GetModel(&ctx, req, &resp));
  return resp.model();
}

std::vector<v1::ModelInfo> Client::ListModels(CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::ListModelsResponse resp;
  Check(stub_->ListModels(&ctx, v1::ListModelsRequest(), &resp));
  return {resp.models().begin(), resp.models().end()};
}

void Client::DeleteModel(const std::string& name, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::DeleteModelRequest req;
  req.set_name(name);
  v1::DeleteModelResponse resp;
  Check(stub_->DeleteModel(&ctx, req, &resp));
}

v1::DatasetInfo Client::UploadCsv(const v1::DatasetHeader& header, const std::string& csv,
                                  size_t chunk_bytes, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::UploadDatasetResponse resp;
  auto writer = stub_->UploadDataset(&ctx, &resp);
  v1::UploadDatasetRequest msg;
  *msg.mutable_header() = header;
  bool ok = writer->Write(msg);
  for (size_t off = 0; ok && off < csv.size(); off += chunk_bytes) {
    msg.set_csv_chunk(csv.substr(off, chunk_bytes));
    ok = writer->Write(msg);
  }
  writer->WritesDone();
  Check(writer->Finish());
  return resp.dataset();
}

v1::DatasetInfo Client::UploadRows(const v1::DatasetHeader& header, const Matrix& x,
                                   const Matrix& y, int64_t rows_per_chunk, CallOptions call) {
  if (x.rows() != y.rows()) {
    throw ClientError(grpc::StatusCode::INVALID_ARGUMENT, "features and targets differ in rows");
  }
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::UploadDatasetResponse resp;
  auto writer = stub_->UploadDataset(&ctx, &resp);
  v1::UploadDatasetRequest msg;
  *msg.mutable_header() = header;
  bool ok = writer->Write(msg);
  for (int64_t r0 = 0; ok && r0 < x.rows(); r0 += rows_per_chunk) {
    const int64_t n = std::min(rows_per_chunk, x.rows() - r0);
    v1::UploadDatasetRequest chunk;
    auto* rows = chunk.mutable_rows();
    rows->mutable_features()->Add(x.row(r0).data(), x.row(r0).data() + n * x.cols());
    rows->mutable_targets()->Add(y.row(r0).data(), y.row(r0).data() + n * y.cols());
    ok = writer->Write(chunk);
  }
  writer->WritesDone();
  Check(writer->Finish());
  return resp.dataset();
}

v1::DatasetInfo Client::ImportDataset(const v1::ImportDatasetRequest& request, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::ImportDatasetResponse resp;
  Check(stub_->ImportDataset(&ctx, request, &resp));
  return resp.dataset();
}

std::vector<v1::DatasetInfo> Client::ListDatasets(CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::ListDatasetsResponse resp;
  Check(stub_->ListDatasets(&ctx, v1::ListDatasetsRequest(), &resp));
  return {resp.datasets().begin(), resp.datasets().end()};
}

void Client::DeleteDataset(const std::string& name, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::DeleteDatasetRequest req;
  req.set_name(name);
  v1::DeleteDatasetResponse resp;
  Check(stub_->DeleteDataset(&ctx, req, &resp));
}

v1::TrainEvent Client::Train(const v1::TrainRequest& request,
                             const std::function<void(const v1::TrainEvent&)>& on_event,
                             const std::function<bool()>& cancel, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call, /*streaming=*/true);
  std::atomic<bool> done{false};
  std::thread watcher;
  if (cancel) {
    watcher = std::thread([&] {
      while (!done.load()) {
        if (cancel()) {
          ctx.TryCancel();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  auto reader = stub_->Train(&ctx, request);
  v1::TrainEvent event, last;
  while (reader->Read(&event)) {
    last = event;
    if (on_event) on_event(event);
  }
  grpc::Status status = reader->Finish();
  done = true;
  if (watcher.joinable()) watcher.join();
  Check(status);
  return last;
}

v1::PredictResponse Client::Predict(const std::string& model, const Matrix& inputs,
                                    CallOptions call) {
  v1::PredictRequest req;
  req.set_model(model);
  ToTensor(inputs, req.mutable_inputs());
  return Predict(req, call);
}

v1::PredictResponse Client::Predict(const v1::PredictRequest& request, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::PredictResponse resp;
  Check(stub_->Predict(&ctx, request, &resp));
  return resp;
}

grpc::ByteBuffer Client::Serialize(const v1::PredictRequest& request) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  grpc::Status s = grpc::SerializationTraits<v1::PredictRequest>::Serialize(request, &buffer,
                                                                            &own_buffer);
  if (!s.ok()) throw ClientError(s.error_code(), "serialising the request: " + s.error_message());
  return buffer;
}

v1::PredictResponse Client::Predict(const grpc::ByteBuffer& serialized_request, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::PredictResponse resp;
  Check(grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, v1::PredictResponse>(
      channel_.get(), *predict_bytes_, &ctx, serialized_request, &resp));
  return resp;
}

v1::PredictUncertaintyResponse Client::PredictUncertainty(const std::string& model,
                                                          const Matrix& inputs,
                                                          const UncertaintyOptions& options,
                                                          CallOptions call) {
  v1::PredictUncertaintyRequest req;
  req.set_model(model);
  ToTensor(inputs, req.mutable_inputs());
  req.set_samples(options.samples);
  if (options.seed) req.set_seed(*options.seed);
  req.set_return_samples(options.return_samples);
  req.set_interval(options.interval);
  return PredictUncertainty(req, call);
}

v1::PredictUncertaintyResponse Client::PredictUncertainty(
    const v1::PredictUncertaintyRequest& request, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::PredictUncertaintyResponse resp;
  Check(stub_->PredictUncertainty(&ctx, request, &resp));
  return resp;
}

v1::EvaluateResponse Client::Evaluate(const v1::EvaluateRequest& request, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::EvaluateResponse resp;
  Check(stub_->Evaluate(&ctx, request, &resp));
  return resp;
}

// ---- Conversions ----

void ToTensor(const Matrix& m, v1::Tensor* out) {
  out->Clear();
  out->add_shape(m.rows());
  out->add_shape(m.cols());
  out->mutable_values()->Add(m.data(), m.data() + m.size());
}

Matrix ToMatrix(const v1::Tensor& t) {
  if (t.shape().empty()) return Matrix();
  int64_t rows = t.shape(0), cols = 1;
  for (int i = 1; i < t.shape_size(); ++i) cols *= t.shape(i);
  if (t.shape_size() == 1) cols = 1;
  if (rows * cols != t.values_size()) {
    throw std::runtime_error("tensor values do not match its shape");
  }
  return Eigen::Map<const Matrix>(t.values().data(), rows, cols);
}

namespace {

std::vector<std::string> SplitLine(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (char ch : line) {
    if (ch == '"') quoted = !quoted;
    else if (ch == ',' && !quoted) out.push_back(cur), cur.clear();
    else if (ch != '\r') cur += ch;
  }
  out.push_back(cur);
  return out;
}

}  // namespace

CsvTable ReadCsvFile(const std::string& path, const std::string& drop_column) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read CSV file '" + path + "'");
  CsvTable t;
  std::string line;
  if (!std::getline(in, line)) throw std::runtime_error("CSV file '" + path + "' is empty");
  auto header = SplitLine(line);
  int drop = -1;
  for (size_t i = 0; i < header.size(); ++i) {
    if (!drop_column.empty() && header[i] == drop_column) drop = static_cast<int>(i);
    else t.header.push_back(header[i]);
  }
  if (!drop_column.empty() && drop < 0) {
    throw std::runtime_error("CSV file '" + path + "' has no column '" + drop_column + "'");
  }
  std::vector<float> values;
  int64_t rows = 0, line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto fields = SplitLine(line);
    if (fields.size() != header.size()) {
      throw std::runtime_error(path + ":" + std::to_string(line_no) + ": " +
                               std::to_string(fields.size()) + " fields, the header has " +
                               std::to_string(header.size()));
    }
    for (size_t i = 0; i < fields.size(); ++i) {
      if (static_cast<int>(i) == drop) continue;
      char* end = nullptr;
      const float v = std::strtof(fields[i].c_str(), &end);
      if (fields[i].empty() || (end && *end != '\0' && *end != ' ') || !std::isfinite(v)) {
        throw std::runtime_error(path + ":" + std::to_string(line_no) + ": column '" + header[i] +
                                 "' holds '" + fields[i] + "', not a finite number");
      }
      values.push_back(v);
    }
    ++rows;
  }
  const int64_t cols = static_cast<int64_t>(t.header.size());
  t.values = Eigen::Map<const Matrix>(values.data(), rows, cols);
  return t;
}

v1::ModelSpec ReadSpecFile(const std::string& path) {
  const std::string json = ReadFile(path, "model spec");
  v1::ModelSpec spec;
  auto status = google::protobuf::util::JsonStringToMessage(json, &spec);
  if (!status.ok()) {
    throw std::runtime_error("model spec '" + path + "' is not valid: " + status.ToString());
  }
  return spec;
}

}  // namespace dropnet::client
