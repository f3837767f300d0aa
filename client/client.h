// dropnet::client: a typed C++ client for the dropnet.v1 service.
//
// Every call has a deadline (ClientOptions::deadline unless overridden per call; Train streams
// have none unless given), UNAVAILABLE is retried by gRPC's service-config retry policy, TLS and a
// bearer token are options, and a failed call throws ClientError with the server's status code
// and message. Matrices are Eigen row-major floats, batch x features.
#ifndef DROPNET_CLIENT_CLIENT_H_
#define DROPNET_CLIENT_CLIENT_H_

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <Eigen/Core>

#include "dropnet/v1/service.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace dropnet::client {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

class ClientError : public std::runtime_error {
 public:
  ClientError(grpc::StatusCode code, const std::string& message);
  grpc::StatusCode code() const { return code_; }
  // The status code's name, e.g. "NOT_FOUND".
  const char* code_name() const;

 private:
  grpc::StatusCode code_;
};

struct ClientOptions {
  std::string target = "127.0.0.1:50051";
  std::chrono::milliseconds deadline{30'000};  // per call, except Train
  int max_attempts = 4;                        // UNAVAILABLE retries (gRPC retry policy)
  int max_message_bytes = 64 << 20;
  // TLS: off unless use_tls. Empty CA: the system roots. Client certificate for mutual TLS.
  bool use_tls = false;
  std::string ca_file, cert_file, key_file;
  // Bearer token sent as "authorization: Bearer <token>" when non-empty.
  std::string token;
  // A TCP connection of this client's own. By default gRPC shares one connection between all
  // channels to the same target with the same settings, so that calls from several clients
  // multiplex over it; a load generator that wants one connection per worker sets this.
  bool own_connection = false;
};

// Per-call options.
struct CallOptions {
  std::optional<std::chrono::milliseconds> deadline;
};

struct UncertaintyOptions {
  int samples = 0;  // 0: the server's default (50)
  std::optional<uint64_t> seed;
  bool return_samples = false;
  double interval = 0;  // 0: 0.95
  // The version to use: a number ("12"), a label ("stable") or "" (the model's default).
  std::string version;
};

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;

  const ClientOptions& options() const { return options_; }
  // The channel, for stubs of other services on the same server (the Open Inference Protocol's
  // inference.GRPCInferenceService), and a context with this client's deadline and token for
  // their calls.
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  void PrepareContext(grpc::ClientContext* ctx, const CallOptions& call = {}) const {
    Prepare(ctx, call);
  }

  // grpc.health.v1 Check for `service` ("" = the whole server); true when SERVING.
  bool Healthy(const std::string& service = "", CallOptions call = {});

  v1::ModelInfo CreateModel(const std::string& name, const v1::ModelSpec& spec,
                            CallOptions call = {});
  // With the request's other settings (serving_label, keep_versions).
  v1::ModelInfo CreateModel(const v1::CreateModelRequest& request, CallOptions call = {});
  v1::ModelInfo GetModel(const std::string& name, CallOptions call = {});
  // Every model, reading the server's pages of `page_size` (0: the server's default) in turn.
  std::vector<v1::ModelInfo> ListModels(CallOptions call = {}, int page_size = 0);
  // One page: `page_token` "" for the first; the response's next_page_token is "" after the last.
  v1::ListModelsResponse ListModelsPage(int page_size, const std::string& page_token,
                                        CallOptions call = {});
  void DeleteModel(const std::string& name, CallOptions call = {});
  // Points `label` at `version`; returns the model afterwards.
  v1::ModelInfo SetVersionLabel(const std::string& model, const std::string& label, int64_t version,
                                CallOptions call = {});
  v1::ModelInfo RemoveVersionLabel(const std::string& model, const std::string& label,
                                   CallOptions call = {});
  // Changes the serving label and/or retention (the fields set in `request`).
  v1::ModelInfo UpdateModel(const v1::UpdateModelRequest& request, CallOptions call = {});
  // Creates a model from a serialized ONNX model (ImportModel; task TASK_UNSPECIFIED: from the
  // file). Returns the new model. A file over a gRPC message limit (either side's) throws
  // RESOURCE_EXHAUSTED naming the options that raise the limits.
  v1::ModelInfo ImportModel(const std::string& name, const std::string& onnx_model,
                            v1::Task task = v1::TASK_UNSPECIFIED, CallOptions call = {});
  // A model version as an ONNX file (ExportModel), with the version written and any warnings.
  v1::ExportModelResponse ExportModel(const v1::ExportModelRequest& request, CallOptions call = {});

  // Uploads CSV text in chunks of chunk_bytes.
  v1::DatasetInfo UploadCsv(const v1::DatasetHeader& header, const std::string& csv,
                            size_t chunk_bytes = 1 << 20, CallOptions call = {});
  // Uploads rows: x is rows x product(header.input_shape), y rows x targets_per_row.
  v1::DatasetInfo UploadRows(const v1::DatasetHeader& header, const Matrix& x, const Matrix& y,
                             int64_t rows_per_chunk = 4096, CallOptions call = {});
  v1::DatasetInfo ImportDataset(const v1::ImportDatasetRequest& request, CallOptions call = {});
  std::vector<v1::DatasetInfo> ListDatasets(CallOptions call = {});
  void DeleteDataset(const std::string& name, CallOptions call = {});
  // The new data sets, in the order of the request's fractions.
  std::vector<v1::DatasetInfo> SplitDataset(const v1::SplitDatasetRequest& request,
                                            CallOptions call = {});

  // Streams training events to on_event until the server ends the stream. `cancel` (polled from
  // a watcher thread) cancels the call; the server keeps the last published version. Returns the
  // last event received. Throws ClientError (CANCELLED after a cancel).
  v1::TrainEvent Train(const v1::TrainRequest& request,
                       const std::function<void(const v1::TrainEvent&)>& on_event,
                       const std::function<bool()>& cancel = {}, CallOptions call = {});

  v1::PredictResponse Predict(const std::string& model, const Matrix& inputs,
                              CallOptions call = {});
  // Predict with a version: a number ("12"), a label ("stable") or "" (the model's default).
  v1::PredictResponse Predict(const std::string& model, const std::string& version,
                              const Matrix& inputs, CallOptions call = {});
  v1::PredictUncertaintyResponse PredictUncertainty(const std::string& model, const Matrix& inputs,
                                                    const UncertaintyOptions& options = {},
                                                    CallOptions call = {});
  // The same calls with a request built once (a caller sending the same inputs again and again
  // saves the conversion).
  v1::PredictResponse Predict(const v1::PredictRequest& request, CallOptions call = {});
  v1::PredictUncertaintyResponse PredictUncertainty(const v1::PredictUncertaintyRequest& request,
                                                    CallOptions call = {});
  v1::EvaluateResponse Evaluate(const v1::EvaluateRequest& request, CallOptions call = {});
  // RankDataset: Monte-Carlo dropout over a stored data set; its progress events go to
  // on_progress while the server works, and the result (the last event) is returned. `cancel`
  // (polled from a watcher thread) cancels the call. The call's deadline is the client's unless
  // `call` gives one. Throws ClientError (CANCELLED after a cancel).
  v1::RankResult RankDataset(const v1::RankDatasetRequest& request,
                             const std::function<void(const v1::RankProgress&)>& on_progress = {},
                             const std::function<bool()>& cancel = {}, CallOptions call = {});
  // EvaluateStream: Evaluate with progress; the progress events (rows done of rows total) go to
  // on_progress while the server works, and the result (the last event, the EvaluateResponse that
  // Evaluate answers) is returned. `cancel` (polled from a watcher thread) cancels the call. The
  // call's deadline is the client's unless `call` gives one. Throws ClientError (CANCELLED after
  // a cancel).
  v1::EvaluateResponse EvaluateStream(
      const v1::EvaluateRequest& request,
      const std::function<void(const v1::EvaluateEvent::Progress&)>& on_progress = {},
      const std::function<bool()>& cancel = {}, CallOptions call = {});
  // Predict with a request serialised once by Serialize: a caller that sends the same bytes again
  // and again (a load generator) saves the serialisation of every call, a copy of the inputs.
  static grpc::ByteBuffer Serialize(const v1::PredictRequest& request);
  v1::PredictResponse Predict(const grpc::ByteBuffer& serialized_request, CallOptions call = {});

 private:
  // Methods of the channel that the generated stubs do not offer (Predict for serialised
  // requests), each registered on the channel once, as a stub's methods are.
  struct RawMethods;

  void Prepare(grpc::ClientContext* ctx, const CallOptions& call, bool streaming = false) const;
  // Reads a server stream to its end, handing each message to on_message, while a watcher
  // thread polls `cancel` (may be empty) and cancels `ctx` when it says so. Throws ClientError
  // for a failed call.
  template <typename Message>
  void ReadStream(grpc::ClientContext* ctx, grpc::ClientReaderInterface<Message>* reader,
                  const std::function<void(const Message&)>& on_message,
                  const std::function<bool()>& cancel) const;
  // One unary call of a generated stub's method: a context with the call's deadline and token,
  // and ClientError when the call fails.
  template <typename Stub, typename Request, typename Response>
  Response Unary(Stub& stub,
                 grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                 const Request& request, const CallOptions& call) const;

  // One UploadDataset stream: the header, then the chunks `next` fills while it returns true.
  v1::DatasetInfo Upload(const v1::DatasetHeader& header, const CallOptions& call,
                         const std::function<bool(v1::UploadDatasetRequest*)>& next);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Dropnet::Stub> stub_;
  std::unique_ptr<RawMethods> raw_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_stub_;
};

// ---- Conversions ----

// A matrix as a [rows, cols] tensor, and a tensor back as rows x (product of the other dims).
void ToTensor(const Matrix& m, v1::Tensor* out);
Matrix ToMatrix(const v1::Tensor& t);

// Numeric CSV with a header row -> matrix; `drop_column` (by name) is left out when given. The
// CSV rules are common/dataio's, the server's. Throws std::runtime_error naming the file and the
// line and column of a bad value.
struct CsvTable {
  std::vector<std::string> header;
  Matrix values;
};
CsvTable ReadCsvFile(const std::string& path, const std::string& drop_column = "");

// Reads a ModelSpec from its JSON mapping (the model file format).
v1::ModelSpec ReadSpecFile(const std::string& path);

}  // namespace dropnet::client

#endif  // DROPNET_CLIENT_CLIENT_H_
