// dropnet-server: flags and environment -> ServerConfig -> run until SIGTERM or SIGINT.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <memory>
#include <thread>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "server/http/dashboard/observability_routes.h"
#include "server/http/http_server.h"
#include "server/http/oip_routes.h"
#include "server/service/memory.h"
#include "server/service/server.h"

namespace {

// The model store's retention and the uploads it accepts.
void AddStoreOptions(CLI::App* app, dropnet::service::ServerConfig* c) {
  app->add_option("--keep-versions", c->service.keep_versions,
                  "newest versions a model keeps (labelled and best versions are kept too); a "
                  "model's own keep_versions overrides it")
      ->envname("DROPNET_KEEP_VERSIONS")
      ->check(CLI::PositiveNumber);
  app->add_option("--cached-versions", c->service.cached_versions,
                  "older versions kept loaded for calls that name them")
      ->envname("DROPNET_CACHED_VERSIONS")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--max-upload", c->service.max_dataset_bytes,
                  "largest UploadDataset body in bytes (rows as float32, or CSV text); the body "
                  "is streamed to a temporary file, not held in memory")
      ->envname("DROPNET_MAX_UPLOAD")
      ->check(CLI::PositiveNumber);
}

// Shutdown, TLS and token flags.
void AddShutdownAndSecurityOptions(CLI::App* app_ptr, dropnet::service::ServerConfig* config) {
  CLI::App& app = *app_ptr;
  dropnet::service::ServerConfig& c = *config;
  app.add_option("--drain-delay", c.drain_delay_seconds,
                 "seconds after SIGTERM that health reports NOT_SERVING while new calls are still "
                 "served (for probes and load balancers to notice); then they get UNAVAILABLE")
      ->envname("DROPNET_DRAIN_DELAY")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--shutdown-grace", c.shutdown_grace_seconds,
                 "seconds in-flight calls get to finish once new calls are refused")
      ->envname("DROPNET_SHUTDOWN_GRACE")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--tls-cert", c.tls_cert, "server certificate (PEM); with --tls-key enables TLS")
      ->envname("DROPNET_TLS_CERT")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", c.tls_key, "server private key (PEM)")
      ->envname("DROPNET_TLS_KEY")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-client-ca", c.tls_client_ca,
                 "CA (PEM) for client certificates: mutual TLS, clients must present one")
      ->envname("DROPNET_TLS_CLIENT_CA")
      ->check(CLI::ExistingFile);
  app.add_flag("--plaintext", c.plaintext,
               "serve without TLS on a non-loopback address (loopback and Unix sockets are always "
               "allowed)")
      ->envname("DROPNET_PLAINTEXT");
  app.add_option("--tokens-file", c.tokens_file,
                 "bearer tokens, one '<role> <token>' a line (roles admin, predict); also "
                 "DROPNET_ADMIN_TOKEN, DROPNET_PREDICT_TOKEN")
      ->envname("DROPNET_TOKENS_FILE")
      ->check(CLI::ExistingFile);
}

// The HTTP port's flags.
void AddHttpOptions(CLI::App* app, dropnet::http::HttpConfig* http) {
  app->add_option("--http-listen", http->listen,
                  "host:port for HTTP (Open Inference Protocol REST); empty: no HTTP port. Uses "
                  "the gRPC port's TLS, tokens and --plaintext rule")
      ->envname("DROPNET_HTTP_LISTEN");
  app->add_option("--http-max-body", http->max_body_bytes,
                  "largest HTTP request body in bytes (413 past it)")
      ->envname("DROPNET_HTTP_MAX_BODY")
      ->check(CLI::PositiveNumber);
  app->add_flag("--metrics-public", http->metrics_public,
                "serve GET /metrics on the HTTP port without a token (default: a token of either "
                "role, when the server has tokens)")
      ->envname("DROPNET_METRICS_PUBLIC");
}

// Starts the HTTP port of `server` when --http-listen was given; null otherwise.
std::unique_ptr<dropnet::http::HttpServer> StartHttp(dropnet::http::HttpConfig http,
                                                     dropnet::service::Server* server) {
  if (http.listen.empty()) return nullptr;
  const dropnet::service::ServerConfig& c = server->config();
  http.tls_cert = c.tls_cert;
  http.tls_key = c.tls_key;
  http.tls_client_ca = c.tls_client_ca;
  http.plaintext = c.plaintext;
  auto port = std::make_unique<dropnet::http::HttpServer>(http, &server->auth());
  dropnet::http::RegisterOipRoutes(port.get(), server);
  dropnet::http::RegisterObservabilityRoutes(port.get(), server, http.metrics_public);
  port->Start();
  return port;
}

}  // namespace

int main(int argc, char** argv) {
  dropnet::service::ConfigureAllocator();
  dropnet::service::ServerConfig c = dropnet::service::DefaultServerConfig();
  std::string log_level = "info";
  std::string data_root;

  CLI::App app{
      "dropnet-server: trains and serves dropout networks over gRPC (dropnet.v1, KServe v2) and "
      "HTTP"};
  app.option_defaults()->always_capture_default();
  app.add_option("--listen", c.listen, "host:port to serve on")->envname("DROPNET_LISTEN");
  app.add_option("--store", c.store, "model store directory")->envname("DROPNET_STORE");
  app.add_option("--data-root", data_root,
                 "directory ImportDataset may read from (empty: ImportDataset disabled)")
      ->envname("DROPNET_DATA_ROOT");
  app.add_flag("--read-only", c.service.read_only,
               "serving replica: refuse Train and every write, poll the store for new versions")
      ->envname("DROPNET_READ_ONLY");
  app.add_option("--poll-interval", c.poll_interval_seconds,
                 "seconds between store polls for new versions (0: off; read-only default 5)")
      ->envname("DROPNET_POLL_INTERVAL");
  app.add_flag("--example,!--no-example", c.example,
               "on an empty store, import Fashion-MNIST and train the example model 'fashion-mlp'")
      ->envname("DROPNET_EXAMPLE");
  app.add_option("--example-data", c.example_data, "Fashion-MNIST IDX directory for --example")
      ->envname("DROPNET_EXAMPLE_DATA");
  app.add_option("--example-epochs", c.example_epochs)->check(CLI::PositiveNumber);
  app.add_option("--threads", c.service.compute_threads, "threads one request computes on")
      ->envname("DROPNET_THREADS")
      ->check(CLI::PositiveNumber);
  app.add_option("--workers", c.service.workers,
                 "Predict, PredictUncertainty and Evaluate calls computing at a time (more wait)")
      ->envname("DROPNET_WORKERS")
      ->check(CLI::PositiveNumber);
  app.add_option("--spin-us", c.service.spin_us,
                 "microseconds idle engine threads wait for the next call's work before sleeping "
                 "(keeps wake-ups off the latency of calls that come closer than this; 0: sleep "
                 "at once and save the CPU)")
      ->envname("DROPNET_SPIN_US")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-queue", c.service.max_queued_calls,
                 "calls that may wait for a worker (RESOURCE_EXHAUSTED past it)")
      ->envname("DROPNET_MAX_QUEUE")
      ->check(CLI::PositiveNumber);
  app.add_option("--rpc-threads", c.rpc_threads,
                 "maximum threads serving the other calls (models, data sets, Train)")
      ->envname("DROPNET_RPC_THREADS")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-message-bytes", c.max_message_bytes, "largest request or response")
      ->envname("DROPNET_MAX_MESSAGE_BYTES")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-batch", c.service.max_batch_rows, "largest Predict batch (rows)")
      ->envname("DROPNET_MAX_BATCH")
      ->check(CLI::PositiveNumber);
  app.add_option("--batch-window-us", c.service.batch_window_us,
                 "dynamic batching: microseconds a merged Predict or PredictUncertainty call "
                 "waits for other calls on the same model version after the first (0: off)")
      ->envname("DROPNET_BATCH_WINDOW_US")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-batch-rows", c.service.batch_max_rows,
                 "dynamic batching: most rows of one merged call (larger calls run alone)")
      ->envname("DROPNET_MAX_BATCH_ROWS")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-samples", c.service.max_samples, "largest Monte-Carlo T")
      ->envname("DROPNET_MAX_SAMPLES")
      ->check(CLI::PositiveNumber);
  app.add_option("--default-samples", c.service.default_samples, "Monte-Carlo T when not given")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-trainings", c.service.max_concurrent_trainings, "concurrent Train calls")
      ->envname("DROPNET_MAX_TRAININGS")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-parameters", c.limits.max_parameters, "largest model (parameters)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-model-bytes", c.service.max_model_bytes, "largest ImportModel file")
      ->envname("DROPNET_MAX_MODEL_BYTES")
      ->check(CLI::PositiveNumber);
  AddShutdownAndSecurityOptions(&app, &c);
  dropnet::http::HttpConfig http;
  AddHttpOptions(&app, &http);
  AddStoreOptions(&app, &c);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->envname("DROPNET_LOG_LEVEL")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  CLI11_PARSE(app, argc, argv);

  c.service.data_root = data_root;
  if (c.service.read_only && c.poll_interval_seconds == 0) c.poll_interval_seconds = 5;
  c.service.max_concurrent_trainings = std::max(1, c.service.max_concurrent_trainings);
  dropnet::service::SetUpLogging(log_level);

  // Signals are taken by one thread with sigwait; every other thread has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  dropnet::service::Server server(c);
  std::unique_ptr<dropnet::http::HttpServer> http_port;  // stops before `server` goes
  try {
    server.Start();
    http_port = StartHttp(http, &server);
  } catch (const std::exception& e) {
    spdlog::get("server")->critical("cannot start: {}", e.what());
    return 1;
  }
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::get("server")->info("received {}", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server.Shutdown();
  });
  server.Wait();
  if (http_port) http_port->Stop();
  waiter.join();
  return 0;
}
