// The HTTP port of dropnet-server: one cpp-httplib server (plaintext or TLS) that the parts of
// the server register their routes on (the Open Inference Protocol's REST routes, metrics, the
// dashboard), with the same bearer tokens and roles as the gRPC port and JSON errors.
//
// A route says which role it needs (Access): kOpen routes (health probes) take no token; the
// others check the request's `Authorization: Bearer <token>` header against the server's
// TokenAuth exactly as a gRPC call's metadata is checked, and answer 401 or 403 with
// {"error": "..."} when it fails. Every error, including a body over the size limit (413) and an
// unknown path (404), is a JSON object {"error": "..."}. Routes are registered before Start.
#ifndef DROPNET_HTTP_HTTP_SERVER_H_
#define DROPNET_HTTP_HTTP_SERVER_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/support/status.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "server/service/auth.h"

// httplib.h includes <resolv.h>, whose macro _res breaks Eigen's headers (a parameter name there).
#undef _res

namespace dropnet::http {

struct HttpConfig {
  std::string listen;                   // host:port; port 0 picks a free one
  int64_t max_body_bytes = 64ll << 20;  // larger request bodies get 413
  // TLS as on the gRPC port: a certificate and key (PEM); with client_ca also client certificates
  // required and verified. Without a certificate the port speaks plaintext, which it does only on
  // a loopback address unless `plaintext` is set.
  std::filesystem::path tls_cert, tls_key, tls_client_ca;
  bool plaintext = false;
  bool metrics_public = false;  // GET /metrics without a token (observability_routes.h)
};

// Who may call a route.
enum class Access {
  kOpen,     // anyone (probes)
  kPredict,  // the predict or admin role, when tokens are configured
  kAdmin,    // the admin role, when tokens are configured
};

class HttpServer {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

  // `auth` may be null (every route open); it must outlive the server. Throws for an unusable
  // configuration (plaintext on a non-loopback address without `plaintext`, half a TLS pair, a
  // certificate that does not load).
  HttpServer(HttpConfig config, const service::TokenAuth* auth);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Registers `handler` for a path. `pattern` is an ECMAScript regular expression matched against
  // the whole path; its groups are in request.matches. `name` names the route in errors and logs
  // (like a gRPC method). A handler may throw: a service::ServiceError becomes its status's HTTP
  // code, anything else 500, both as {"error": "..."}.
  void Get(const std::string& pattern, const char* name, Access access, Handler handler);
  void Post(const std::string& pattern, const char* name, Access access, Handler handler);

  // Binds and starts serving on a thread of its own; throws when it cannot bind.
  void Start();
  // Stops accepting, finishes the requests in flight and joins. Idempotent.
  void Stop();

  int port() const { return port_; }
  bool tls() const { return tls_; }

 private:
  Handler Guard(const char* name, Access access, Handler handler) const;

  HttpConfig config_;
  const service::TokenAuth* auth_;
  bool tls_ = false;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

// Writes `body` as the JSON answer with HTTP status `status`.
void SendJson(httplib::Response& res, const nlohmann::json& body, int status = 200);
// Writes {"error": message} with HTTP status `status`.
void SendError(httplib::Response& res, int status, const std::string& message);
// The HTTP status for a gRPC status code, as the Open Inference Protocol and Triton map them
// (INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...).
int HttpStatusOf(grpc::StatusCode code);
// SendError with the HTTP status of `status` and its message.
void SendStatus(httplib::Response& res, const grpc::Status& status);

// The host and port of a "host:port" or "[v6]:port" listen address; throws for a bad one.
std::pair<std::string, int> SplitListenAddress(const std::string& listen);

}  // namespace dropnet::http

#endif  // DROPNET_HTTP_HTTP_SERVER_H_
