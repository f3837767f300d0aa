#include "client/client.h"

#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/rpc_method.h>

#include "common/dataio/csv.h"
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
// round_robin: a name with several addresses (dns:///dropnet-headless...:50051, a Kubernetes
// headless Service over the serving replicas) spreads the calls over all of them; with one address
// it is the same as the default pick_first.
std::string ServiceConfig(int max_attempts) {
  std::ostringstream s;
  s << R"({"loadBalancingConfig":[{"round_robin":{}}],)"
    << R"("methodConfig":[{"name":[{"service":"dropnet.v1.Dropnet"},)"
    << R"({"service":"grpc.health.v1.Health"}],)"
    << R"("retryPolicy":{"maxAttempts":)" << std::max(2, std::min(max_attempts, 5))
    << R"(,"initialBackoff":"0.1s","maxBackoff":"2s","backoffMultiplier":2,)"
    << R"("retryableStatusCodes":["UNAVAILABLE"]}}]})";
  return s.str();
}

}  // namespace

ClientError::ClientError(grpc::StatusCode code, const std::string& message)
    : std::runtime_error(message), code_(code) {}

const char* ClientError::code_name() const { return StatusCodeName(code_); }

struct Client::RawMethods {
  explicit RawMethods(const std::shared_ptr<grpc::Channel>& channel)
      : predict("/dropnet.v1.Dropnet/Predict", grpc::internal::RpcMethod::NORMAL_RPC, channel) {}

  grpc::internal::RpcMethod predict;
};

Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

Client::Client(ClientOptions options) : options_(std::move(options)) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options_.use_tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options_.ca_file.empty()) ssl.pem_root_certs = ReadFile(options_.ca_file, "CA file");
    if (!options_.cert_file.empty()) {
      ssl.pem_cert_chain = ReadFile(options_.cert_file, "certificate");
    }
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
  raw_ = std::make_unique<RawMethods>(channel_);
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

template <typename Stub, typename Request, typename Response>
Response Client::Unary(Stub& stub,
                       grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                                    Response*),
                       const Request& request, const CallOptions& call) const {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  Response response;
  Check((stub.*method)(&ctx, request, &response));
  return response;
}

bool Client::Healthy(const std::string& service, CallOptions call) {
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  return Unary(*health_stub_, &grpc::health::v1::Health::Stub::Check, req, call).status() ==
         grpc::health::v1::HealthCheckResponse::SERVING;
}

v1::ModelInfo Client::CreateModel(const std::string& name, const v1::ModelSpec& spec,
                                  CallOptions call) {
  v1::CreateModelRequest req;
  req.set_name(name);
  *req.mutable_spec() = spec;
  return Unary(*stub_, &v1::Dropnet::Stub::CreateModel, req, call).model();
}

v1::ModelInfo Client::CreateModel(const v1::CreateModelRequest& request, CallOptions call) {
  return Unary(*stub_, &v1::Dropnet::Stub::CreateModel, request, call).model();
}

v1::ModelInfo Client::GetModel(const std::string& name, CallOptions call) {
  v1::GetModelRequest req;
  req.set_name(name);
  return Unary(*stub_, &v1::Dropnet::Stub::GetModel, req, call).model();
}

std::vector<v1::ModelInfo> Client::ListModels(CallOptions call, int page_size) {
  std::vector<v1::ModelInfo> out;
  std::string token;
  do {
    auto resp = ListModelsPage(page_size, token, call);
    for (auto& m : *resp.mutable_models()) out.push_back(std::move(m));
    token = resp.next_page_token();
  } while (!token.empty());
  return out;
}

v1::ListModelsResponse Client::ListModelsPage(int page_size, const std::string& page_token,
                                              CallOptions call) {
  v1::ListModelsRequest req;
  req.set_page_size(page_size);
  req.set_page_token(page_token);
  return Unary(*stub_, &v1::Dropnet::Stub::ListModels, req, call);
}

v1::ModelInfo Client::SetVersionLabel(const std::string& model, const std::string& label,
                                      int64_t version, CallOptions call) {
  v1::SetVersionLabelRequest req;
  req.set_model(model);
  req.set_label(label);
  req.set_version(version);
  return Unary(*stub_, &v1::Dropnet::Stub::SetVersionLabel, req, call).model();
}

v1::ModelInfo Client::RemoveVersionLabel(const std::string& model, const std::string& label,
                                         CallOptions call) {
  v1::RemoveVersionLabelRequest req;
  req.set_model(model);
  req.set_label(label);
  return Unary(*stub_, &v1::Dropnet::Stub::RemoveVersionLabel, req, call).model();
}

v1::ModelInfo Client::UpdateModel(const v1::UpdateModelRequest& request, CallOptions call) {
  return Unary(*stub_, &v1::Dropnet::Stub::UpdateModel, request, call).model();
}

void Client::DeleteModel(const std::string& name, CallOptions call) {
  v1::DeleteModelRequest req;
  req.set_name(name);
  Unary(*stub_, &v1::Dropnet::Stub::DeleteModel, req, call);
}

v1::ModelInfo Client::ImportModel(const std::string& name, const std::string& onnx_model,
                                  v1::Task task, CallOptions call) {
  v1::ImportModelRequest req;
  req.set_name(name);
  req.set_onnx_model(onnx_model);
  req.set_task(task);
  try {
    return Unary(*stub_, &v1::Dropnet::Stub::ImportModel, req, call).model();
  } catch (const ClientError& e) {
    // gRPC refuses a message over either side's limit before the server's handler sees it.
    if (e.code() != grpc::StatusCode::RESOURCE_EXHAUSTED ||
        std::string(e.what()).find("larger than max") == std::string::npos) {
      throw;
    }
    throw ClientError(e.code(), "the ONNX file (" + std::to_string(onnx_model.size()) +
                                    " bytes) is larger than one gRPC message may be (" + e.what() +
                                    "): the server's --max-message-bytes and --max-model-bytes "
                                    "raise its limits, ClientOptions::max_message_bytes the "
                                    "client's");
  }
}

v1::ExportModelResponse Client::ExportModel(const v1::ExportModelRequest& request,
                                            CallOptions call) {
  return Unary(*stub_, &v1::Dropnet::Stub::ExportModel, request, call);
}

v1::DatasetInfo Client::Upload(const v1::DatasetHeader& header, const CallOptions& call,
                               const std::function<bool(v1::UploadDatasetRequest*)>& next) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::UploadDatasetResponse resp;
  auto writer = stub_->UploadDataset(&ctx, &resp);
  v1::UploadDatasetRequest msg;
  *msg.mutable_header() = header;
  bool ok = writer->Write(msg);
  while (ok) {
    msg.Clear();
    if (!next(&msg)) break;
    ok = writer->Write(msg);
  }
  writer->WritesDone();
  Check(writer->Finish());
  return resp.dataset();
}

v1::DatasetInfo Client::UploadCsv(const v1::DatasetHeader& header, const std::string& csv,
                                  size_t chunk_bytes, CallOptions call) {
  size_t off = 0;
  return Upload(header, call, [&](v1::UploadDatasetRequest* msg) {
    if (off >= csv.size()) return false;
    msg->set_csv_chunk(csv.substr(off, chunk_bytes));
    off += chunk_bytes;
    return true;
  });
}

v1::DatasetInfo Client::UploadRows(const v1::DatasetHeader& header, const Matrix& x,
                                   const Matrix& y, int64_t rows_per_chunk, CallOptions call) {
  if (x.rows() != y.rows()) {
    throw ClientError(grpc::StatusCode::INVALID_ARGUMENT, "features and targets differ in rows");
  }
  int64_t r0 = 0;
  return Upload(header, call, [&](v1::UploadDatasetRequest* msg) {
    if (r0 >= x.rows()) return false;
    const int64_t n = std::min(rows_per_chunk, x.rows() - r0);
    auto* rows = msg->mutable_rows();
    rows->mutable_features()->Add(x.row(r0).data(), x.row(r0).data() + n * x.cols());
    rows->mutable_targets()->Add(y.row(r0).data(), y.row(r0).data() + n * y.cols());
    r0 += n;
    return true;
  });
}

v1::DatasetInfo Client::ImportDataset(const v1::ImportDatasetRequest& request, CallOptions call) {
  return Unary(*stub_, &v1::Dropnet::Stub::ImportDataset, request, call).dataset();
}

std::vector<v1::DatasetInfo> Client::ListDatasets(CallOptions call) {
  const auto resp =
      Unary(*stub_, &v1::Dropnet::Stub::ListDatasets, v1::ListDatasetsRequest(), call);
  return {resp.datasets().begin(), resp.datasets().end()};
}

std::vector<v1::DatasetInfo> Client::SplitDataset(const v1::SplitDatasetRequest& request,
                                                  CallOptions call) {
  const auto r = Unary(*stub_, &v1::Dropnet::Stub::SplitDataset, request, call);
  return {r.datasets().begin(), r.datasets().end()};
}

void Client::DeleteDataset(const std::string& name, CallOptions call) {
  v1::DeleteDatasetRequest req;
  req.set_name(name);
  Unary(*stub_, &v1::Dropnet::Stub::DeleteDataset, req, call);
}

template <typename Message>
void Client::ReadStream(grpc::ClientContext* ctx, grpc::ClientReaderInterface<Message>* reader,
                        const std::function<void(const Message&)>& on_message,
                        const std::function<bool()>& cancel) const {
  std::atomic<bool> done{false};
  std::thread watcher;
  if (cancel) {
    watcher = std::thread([&] {
      while (!done.load()) {
        if (cancel()) {
          ctx->TryCancel();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  Message message;
  while (reader->Read(&message)) on_message(message);
  grpc::Status status = reader->Finish();
  done = true;
  if (watcher.joinable()) watcher.join();
  Check(status);
}

v1::TrainEvent Client::Train(const v1::TrainRequest& request,
                             const std::function<void(const v1::TrainEvent&)>& on_event,
                             const std::function<bool()>& cancel, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call, /*streaming=*/true);
  auto reader = stub_->Train(&ctx, request);
  v1::TrainEvent last;
  ReadStream<v1::TrainEvent>(
      &ctx, reader.get(),
      [&](const v1::TrainEvent& event) {
        last = event;
        if (on_event) on_event(event);
      },
      cancel);
  return last;
}

v1::RankResult Client::RankDataset(const v1::RankDatasetRequest& request,
                                   const std::function<void(const v1::RankProgress&)>& on_progress,
                                   const std::function<bool()>& cancel, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  auto reader = stub_->RankDataset(&ctx, request);
  std::optional<v1::RankResult> result;
  ReadStream<v1::RankEvent>(
      &ctx, reader.get(),
      [&](const v1::RankEvent& event) {
        if (event.has_progress() && on_progress) on_progress(event.progress());
        if (event.has_result()) result = event.result();
      },
      cancel);
  if (!result) {
    throw ClientError(grpc::StatusCode::INTERNAL, "RankDataset ended without a result");
  }
  return *result;
}

v1::EvaluateResponse Client::EvaluateStream(
    const v1::EvaluateRequest& request,
    const std::function<void(const v1::EvaluateEvent::Progress&)>& on_progress,
    const std::function<bool()>& cancel, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  auto reader = stub_->EvaluateStream(&ctx, request);
  std::optional<v1::EvaluateResponse> result;
  ReadStream<v1::EvaluateEvent>(
      &ctx, reader.get(),
      [&](const v1::EvaluateEvent& event) {
        if (event.has_progress() && on_progress) on_progress(event.progress());
        if (event.has_result()) result = event.result();
      },
      cancel);
  if (!result) {
    throw ClientError(grpc::StatusCode::INTERNAL, "EvaluateStream ended without a result");
  }
  return *result;
}

v1::PredictResponse Client::Predict(const std::string& model, const Matrix& inputs,
                                    CallOptions call) {
  return Predict(model, std::string(), inputs, call);
}

v1::PredictResponse Client::Predict(const std::string& model, const std::string& version,
                                    const Matrix& inputs, CallOptions call) {
  v1::PredictRequest req;
  req.set_model(model);
  req.set_version(version);
  ToTensor(inputs, req.mutable_inputs());
  return Predict(req, call);
}

v1::PredictResponse Client::Predict(const v1::PredictRequest& request, CallOptions call) {
  return Unary(*stub_, &v1::Dropnet::Stub::Predict, request, call);
}

grpc::ByteBuffer Client::Serialize(const v1::PredictRequest& request) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  grpc::Status s =
      grpc::SerializationTraits<v1::PredictRequest>::Serialize(request, &buffer, &own_buffer);
  if (!s.ok()) throw ClientError(s.error_code(), "serialising the request: " + s.error_message());
  return buffer;
}

v1::PredictResponse Client::Predict(const grpc::ByteBuffer& serialized_request, CallOptions call) {
  grpc::ClientContext ctx;
  Prepare(&ctx, call);
  v1::PredictResponse resp;
  Check(grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, v1::PredictResponse>(
      channel_.get(), raw_->predict, &ctx, serialized_request, &resp));
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
  req.set_version(options.version);
  return PredictUncertainty(req, call);
}

v1::PredictUncertaintyResponse Client::PredictUncertainty(
    const v1::PredictUncertaintyRequest& request, CallOptions call) {
  return Unary(*stub_, &v1::Dropnet::Stub::PredictUncertainty, request, call);
}

v1::EvaluateResponse Client::Evaluate(const v1::EvaluateRequest& request, CallOptions call) {
  return Unary(*stub_, &v1::Dropnet::Stub::Evaluate, request, call);
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

CsvTable ReadCsvFile(const std::string& path, const std::string& drop_column) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read CSV file '" + path + "'");
  dataio::CsvOptions options;
  options.label_column = drop_column;
  dataio::CsvTable csv;
  try {
    csv = dataio::ReadCsv(in, options);
  } catch (const dataio::DataError& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  CsvTable t;
  t.header = std::move(csv.feature_names);
  t.values =
      Eigen::Map<const Matrix>(csv.values.data(), csv.rows, static_cast<int64_t>(t.header.size()));
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
