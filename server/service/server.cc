#include "server/service/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <fstream>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "server/engine/thread_pool.h"
#include "server/service/status.h"
#include "server/service/transform.h"

namespace dropnet::service {

namespace {

constexpr const char* kServiceName = "dropnet.v1.Dropnet";

// The example model of the README: the Fashion-MNIST MLP (784-512-512-10, ReLU, dropout 0.5).
constexpr const char* kExampleSpec = R"json({
  "inputShape": [1, 28, 28],
  "task": "TASK_CLASSIFICATION",
  "description": "Fashion-MNIST MLP 784-512-512-10, ReLU, dropout 0.5",
  "seed": 1,
  "layers": [
    {"type": "flatten"},
    {"type": "dense", "units": 512},
    {"type": "relu"},
    {"type": "dropout", "rate": 0.5},
    {"type": "dense", "units": 512},
    {"type": "relu"},
    {"type": "dropout", "rate": 0.5},
    {"type": "dense", "units": 10}
  ]
})json";

std::shared_ptr<spdlog::logger> Log() { return spdlog::get("server"); }

std::string ReadPem(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw std::runtime_error(std::string("cannot read ") + what + " '" + path.string() + "'");
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

bool IsLoopbackAddress(const std::string& listen) {
  // A Unix socket is a file of this host (or, abstract, a name in its network namespace).
  if (listen.rfind("unix:", 0) == 0 || listen.rfind("unix-abstract:", 0) == 0) return true;
  std::string host = listen;
  if (host.rfind("ipv4:", 0) == 0) host = host.substr(5);
  if (host.rfind("ipv6:", 0) == 0) host = host.substr(5);
  if (!host.empty() && host[0] == '[') {
    return host.rfind("[::1]", 0) == 0;
  }
  host = host.substr(0, host.rfind(':'));
  // 127.0.0.0/8 only as a literal dotted-quad address: "127.example.com" is a name like any other.
  in_addr v4{};
  if (std::count(host.begin(), host.end(), '.') == 3 &&
      inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  return host == "localhost";
}

void SetUpLogging(const std::string& level) {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  const auto lvl = spdlog::level::from_str(level);
  for (const char* name : {"server", "rpc", "train", "store"}) {
    if (spdlog::get(name)) spdlog::drop(name);
    auto logger = std::make_shared<spdlog::logger>(name, sink);
    logger->set_level(lvl);
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ [%n] %v");
    spdlog::register_logger(logger);
  }
}

ServerConfig DefaultServerConfig() {
  ServerConfig c;
  c.service.compute_threads = engine::HardwareThreads();
  c.service.workers = engine::HardwareThreads();
  c.service.spin_us = 1000;
  c.tune_allocator = true;
  c.drain_delay_seconds = 5;
  return c;
}

Server::Server(ServerConfig config) : config_(std::move(config)) {
  if (!spdlog::get("server")) SetUpLogging("info");
}

Server::~Server() {
  Shutdown();
  Wait();
}

void Server::Start() {
  if (config_.tune_allocator) engine::TuneAllocatorForTraining();
  if (config_.service.spin_us >= 0) {
    engine::SetWorkerSpin(std::chrono::microseconds(config_.service.spin_us));
  }
  store_ = std::make_unique<ModelStore>(config_.store, !config_.service.read_only);
  registry_ = std::make_unique<Registry>(
      store_.get(), config_.limits, config_.service.keep_versions, config_.service.cached_versions);
  const std::string loaded = registry_->LoadAll();
  Log()->info("model store {} ({}): {}", config_.store.string(),
              config_.service.read_only ? "read-only replica" : "read-write", loaded);
  if (!config_.tokens_file.empty()) {
    if (const std::string warning = TokensFileWarning(config_.tokens_file); !warning.empty()) {
      Log()->warn("{}", warning);
    }
    auth_.LoadFile(config_.tokens_file.string());
  }
  auth_.LoadEnvironment();
  metrics_ = std::make_unique<ServiceMetrics>([this] { return DescribeServer(); },
                                              [this](const std::string& model) {
                                                try {
                                                  registry_->Get(model);
                                                  return true;
                                                } catch (const ServiceError&) {
                                                  return false;
                                                }
                                              });
  service_ =
      std::make_unique<DropnetService>(registry_.get(), config_.service, &auth_, metrics_.get());
  inference_ = std::make_unique<InferenceService>(service_.get(), registry_.get(),
                                                  [this] { return ready_.load(); });

  std::shared_ptr<grpc::ServerCredentials> credentials;
  const bool tls = !config_.tls_cert.empty() || !config_.tls_key.empty();
  if (tls) {
    if (config_.tls_cert.empty() || config_.tls_key.empty()) {
      throw std::runtime_error("TLS needs both a certificate (--tls-cert) and a key (--tls-key)");
    }
    grpc::SslServerCredentialsOptions ssl(
        config_.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                      : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_key_cert_pairs.push_back(
        {ReadPem(config_.tls_key, "TLS key"), ReadPem(config_.tls_cert, "TLS certificate")});
    if (!config_.tls_client_ca.empty())
      ssl.pem_root_certs = ReadPem(config_.tls_client_ca, "client CA");
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    if (!config_.plaintext && !IsLoopbackAddress(config_.listen)) {
      throw std::runtime_error("refusing to serve plaintext on " + config_.listen +
                               ": give --tls-cert and --tls-key, or --plaintext to accept it");
    }
    credentials = grpc::InsecureServerCredentials();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config_.listen, credentials, &port_);
  builder.RegisterService(service_.get());
  builder.RegisterService(inference_.get());
  builder.SetMaxReceiveMessageSize(config_.max_message_bytes);
  builder.SetMaxSendMessageSize(config_.max_message_bytes);
  // A second server on a taken port fails instead of silently sharing its connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  grpc::ResourceQuota quota("dropnet");
  quota.SetMaxThreads(std::max(2, config_.rpc_threads));
  builder.SetResourceQuota(quota);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    throw std::runtime_error("cannot listen on " + config_.listen +
                             " (address in use, or not a valid host:port)");
  }
  auto* health = server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, true);
  ready_ = true;
  Log()->info(
      "serving dropnet.v1 and inference (KServe v2) on {} (port {}), {}{}, {}, {} workers x {} "
      "threads",
      config_.listen, port_, tls ? "TLS" : "plaintext",
      tls && !config_.tls_client_ca.empty() ? " with client certificates" : "",
      auth_.enabled() ? std::to_string(auth_.size()) + " tokens" : "no tokens (open)",
      config_.service.workers, config_.service.compute_threads);

  if (config_.poll_interval_seconds > 0) {
    poller_ = std::thread([this] {
      std::unique_lock lock(mu_);
      const auto interval = std::chrono::duration<double>(config_.poll_interval_seconds);
      while (!cv_.wait_for(lock, interval, [this] { return stopping_; })) {
        lock.unlock();
        try {
          int changed = registry_->Refresh();
          if (changed) Log()->info("store poll: {} models or data sets changed", changed);
        } catch (const std::exception& e) {
          Log()->warn("store poll failed: {}", e.what());
        }
        lock.lock();
      }
    });
  }
  if (config_.example && !config_.service.read_only && registry_->ModelNames().empty()) {
    bootstrap_ = std::thread([this] { Bootstrap(); });
  }
}

std::shared_ptr<grpc::Channel> Server::InProcessChannel() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(config_.max_message_bytes);
  args.SetMaxSendMessageSize(config_.max_message_bytes);
  return server_->InProcessChannel(args);
}

ServerState Server::DescribeServer() const {
  ServerState s;
  s.queued_calls = service_->QueuedCalls();
  s.calls_in_flight = service_->CallsInFlight();
  for (const auto& name : registry_->ModelNames()) {
    try {
      const SnapshotPtr snap = registry_->Get(name);
      v1::ModelInfo info;
      registry_->Describe(*snap, &info);
      ServerState::Model m{name, info.versions_size(), info.training()};
      m.epoch = info.history_size();
      if (!info.history().empty()) {
        m.loss = info.history().rbegin()->loss();
        m.validation_metric = info.history().rbegin()->val_metric();
      }
      s.models.push_back(std::move(m));
    } catch (const ServiceError&) {
      // deleted meanwhile
    }
  }
  s.store_bytes = DirectoryBytes(config_.store);
  return s;
}

void Server::Bootstrap() {
  auto log = Log();
  const auto dir = config_.example_data;
  try {
    const auto train_images = dir / "train-images-idx3-ubyte.gz";
    if (!std::filesystem::exists(train_images)) {
      log->warn("example: {} not found (Debian package dataset-fashion-mnist); no example model",
                train_images.string());
      return;
    }
    log->info("example: importing Fashion-MNIST from {}", dir.string());
    auto train =
        engine::LoadIdx(train_images.string(), (dir / "train-labels-idx1-ubyte.gz").string());
    auto test = engine::LoadIdx((dir / "t10k-images-idx3-ubyte.gz").string(),
                                (dir / "t10k-labels-idx1-ubyte.gz").string());
    KeepRawPixels(&train);
    KeepRawPixels(&test);
    registry_->PutDataset("fashion-mnist-train", std::move(train), "example", true);
    registry_->PutDataset("fashion-mnist-test", std::move(test), "example", true);
    v1::ModelSpec spec;
    auto st = google::protobuf::util::JsonStringToMessage(kExampleSpec, &spec);
    if (!st.ok()) throw std::runtime_error("example spec: " + st.ToString());
    registry_->Create("fashion-mlp", spec);
    v1::TrainRequest req;
    req.set_model("fashion-mlp");
    req.set_dataset("fashion-mnist-train");
    req.set_epochs(config_.example_epochs);
    req.set_seed(1);
    log->info(
        "example: training model 'fashion-mlp' for {} epoch(s); Predict and "
        "PredictUncertainty answer meanwhile with the newest version",
        config_.example_epochs);
    auto status = service_->RunTraining(
        req, [](const v1::TrainEvent&) { return true; }, [this] { return service_->draining(); });
    if (status.ok())
      log->info("example: model 'fashion-mlp' is trained and ready");
    else
      log->warn("example: training ended: {}", status.error_message());
  } catch (const std::exception& e) {
    log->error("example: {}", e.what());
  }
}

void Server::Shutdown() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ || !server_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  ready_ = false;
  Log()->info(
      "shutting down: health NOT_SERVING, new calls served for {} s more, then refused while "
      "in-flight calls get {} s and trainings save",
      config_.drain_delay_seconds, config_.shutdown_grace_seconds);
  auto* health = server_->GetHealthCheckService();
  health->SetServingStatus(kServiceName, false);
  health->SetServingStatus("", false);
  // Probes and load balancers take a few seconds to notice; calls they still send are served.
  if (config_.drain_delay_seconds > 0) {
    std::this_thread::sleep_for(std::chrono::duration<double>(config_.drain_delay_seconds));
  }
  service_->StartDraining();
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(config_.shutdown_grace_seconds * 1000));
  server_->Shutdown(deadline);
  if (poller_.joinable()) poller_.join();
  if (bootstrap_.joinable()) bootstrap_.join();
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
  Log()->info("stopped");
}

void Server::Wait() {
  std::unique_lock lock(mu_);
  if (!server_) return;
  cv_.wait(lock, [this] { return stopped_; });
}

}  // namespace dropnet::service
