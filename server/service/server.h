// A running dropnet server: the gRPC server with the Dropnet service, the Open Inference
// Protocol's GRPCInferenceService (inference_service.h), grpc.health.v1 and reflection, the model
// store, the read-only replica's store polling and the example bootstrap.
#ifndef DROPNET_SERVICE_SERVER_H_
#define DROPNET_SERVICE_SERVER_H_

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "server/service/inference_service.h"
#include "server/service/metrics_registry.h"
#include "server/service/registry.h"
#include "server/service/service.h"

namespace dropnet::service {

struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  std::filesystem::path store = "var/dropnet";
  ServiceConfig service;
  SpecLimits limits;
  int max_message_bytes = 64 << 20;
  int rpc_threads = 16;              // threads serving the synchronous calls (service.h)
  double poll_interval_seconds = 0;  // > 0: re-read the store for new versions
  // On shutdown, health turns NOT_SERVING and new calls are still served for drain_delay_seconds
  // (so that load balancers and probes see it and stop sending); then new calls are refused
  // (UNAVAILABLE) and the calls in flight get shutdown_grace_seconds to finish.
  double drain_delay_seconds = 0;
  double shutdown_grace_seconds = 10;
  bool example = false;  // bootstrap the example model on an empty store
  std::filesystem::path example_data = "/usr/share/datasets/fashion-mnist";
  int example_epochs = 1;
  // TLS: a server certificate and key (PEM); with client_ca also mutual TLS (client certificates
  // required and verified). Without a certificate the server speaks plaintext, which it does only
  // on a loopback address unless `plaintext` is set.
  std::filesystem::path tls_cert, tls_key, tls_client_ca;
  bool plaintext = false;
  // Bearer tokens ("<role> <token>" lines); DROPNET_ADMIN_TOKEN / DROPNET_PREDICT_TOKEN are read
  // too. None: every call is allowed.
  std::filesystem::path tokens_file;
  // Keep the engine's large blocks in the malloc heap while training (engine::
  // TuneAllocatorForTraining): a setting of the process, which Start applies.
  bool tune_allocator = false;
};

// The configuration dropnet-server starts from before its flags: every call computing on all the
// hardware threads, as many calls at a time, a spin of 1 ms, the allocator tuned for training and
// a drain delay of 5 s.
ServerConfig DefaultServerConfig();

// True for listen addresses only this host can reach: 127.0.0.0/8, localhost, [::1], and Unix
// sockets (unix:path, unix-abstract:name).
bool IsLoopbackAddress(const std::string& listen);

class Server {
 public:
  explicit Server(ServerConfig config);
  ~Server();

  // Applies the process settings of the configuration (ServiceConfig::spin_us, tune_allocator),
  // loads the store and starts serving; throws with a clear message when it cannot.
  void Start();
  // The port actually bound (useful with ":0").
  int port() const { return port_; }
  // Health NOT_SERVING for the drain delay while calls are still served; then new calls get
  // UNAVAILABLE, trainings stop and save, and in-flight calls finish within the grace period.
  void Shutdown();
  // Blocks until Shutdown has completed.
  void Wait();

  Registry& registry() { return *registry_; }
  DropnetService& service() { return *service_; }
  // The server's Prometheus metrics (after Start).
  ServiceMetrics& metrics() { return *metrics_; }
  // A channel to this server's services inside the process (after Start).
  std::shared_ptr<grpc::Channel> InProcessChannel();
  InferenceService& inference() { return *inference_; }
  // The bearer tokens Start loaded (for the HTTP port, which checks the same ones).
  const TokenAuth& auth() const { return auth_; }
  const ServerConfig& config() const { return config_; }
  // True from a successful Start until Shutdown begins (readiness probes turn false while the
  // server drains).
  bool ready() const { return ready_.load(); }

 private:
  void Bootstrap();
  // The gauges of the metrics, read when they are scraped.
  ServerState DescribeServer() const;

  ServerConfig config_;
  std::unique_ptr<ModelStore> store_;
  std::unique_ptr<Registry> registry_;
  TokenAuth auth_;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<DropnetService> service_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::thread poller_, bootstrap_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false, stopped_ = false;
  std::atomic<bool> ready_{false};
};

// Configures spdlog: one logger per component (server, rpc, train, store) at `level`.
void SetUpLogging(const std::string& level);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_SERVER_H_
