#include "server/http/http_server.h"

#include <chrono>
#include <map>
#include <stdexcept>
#include <utility>

#include <spdlog/spdlog.h>

#include "server/service/server.h"
#include "server/service/status.h"

namespace dropnet::http {

namespace {

std::shared_ptr<spdlog::logger> Log() {
  auto log = spdlog::get("rpc");
  return log ? log : spdlog::default_logger();
}

// The role TokenAuth checks for an access level (kOpen is never checked).
service::Role RoleOf(Access access) {
  return access == Access::kAdmin ? service::Role::kAdmin : service::Role::kPredict;
}

}  // namespace

std::pair<std::string, int> SplitListenAddress(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size()) {
    throw std::runtime_error("HTTP listen address '" + listen + "' is not host:port");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  int port = -1;
  try {
    size_t used = 0;
    port = std::stoi(listen.substr(colon + 1), &used);
    if (used != listen.size() - colon - 1) port = -1;
  } catch (const std::exception&) {
    port = -1;
  }
  if (port < 0 || port > 65535) {
    throw std::runtime_error("HTTP listen address '" + listen + "' has no valid port");
  }
  return {host, port};
}

int HttpStatusOf(grpc::StatusCode code) {
  using C = grpc::StatusCode;
  // clang-format off
  static const std::map<C, int> kStatus = {
      {C::OK, 200}, {C::INVALID_ARGUMENT, 400}, {C::OUT_OF_RANGE, 400},
      {C::FAILED_PRECONDITION, 400}, {C::UNAUTHENTICATED, 401}, {C::PERMISSION_DENIED, 403},
      {C::NOT_FOUND, 404}, {C::ALREADY_EXISTS, 409}, {C::ABORTED, 409},
      {C::RESOURCE_EXHAUSTED, 429}, {C::CANCELLED, 499}, {C::UNIMPLEMENTED, 501},
      {C::UNAVAILABLE, 503}, {C::DEADLINE_EXCEEDED, 504}};
  // clang-format on
  const auto it = kStatus.find(code);
  return it == kStatus.end() ? 500 : it->second;
}

void SendJson(httplib::Response& res, const nlohmann::json& body, int status) {
  res.status = status;
  // Invalid UTF-8 in an echoed name must not make the answer itself fail.
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  "application/json");
}

void SendError(httplib::Response& res, int status, const std::string& message) {
  SendJson(res, nlohmann::json{{"error", message}}, status);
}

void SendStatus(httplib::Response& res, const grpc::Status& status) {
  SendError(res, HttpStatusOf(status.error_code()), status.error_message());
}

HttpServer::HttpServer(HttpConfig config, const service::TokenAuth* auth)
    : config_(std::move(config)), auth_(auth) {
  tls_ = !config_.tls_cert.empty() || !config_.tls_key.empty();
  if (tls_) {
    if (config_.tls_cert.empty() || config_.tls_key.empty()) {
      throw std::runtime_error("HTTP TLS needs both a certificate and a key");
    }
    const std::string ca = config_.tls_client_ca.string();
    auto ssl = std::make_unique<httplib::SSLServer>(
        config_.tls_cert.c_str(), config_.tls_key.c_str(), ca.empty() ? nullptr : ca.c_str());
    if (!ssl->is_valid()) {
      throw std::runtime_error("HTTP TLS: cannot load the certificate '" +
                               config_.tls_cert.string() + "', key or client CA");
    }
    server_ = std::move(ssl);
  } else {
    if (!config_.plaintext && !service::IsLoopbackAddress(config_.listen)) {
      throw std::runtime_error("refusing to serve plaintext HTTP on " + config_.listen +
                               ": give --tls-cert and --tls-key, or --plaintext to accept it");
    }
    server_ = std::make_unique<httplib::Server>();
  }
  server_->set_payload_max_length(static_cast<size_t>(config_.max_body_bytes));
  server_->set_tcp_nodelay(true);
  server_->set_error_handler([max = config_.max_body_bytes](const httplib::Request& req,
                                                            httplib::Response& res) {
    // Errors a handler wrote already have their JSON body; this fills in httplib's own.
    if (!res.body.empty()) return;
    if (res.status == 413) {
      SendError(res, 413,
                "the request body exceeds the limit of " + std::to_string(max) +
                    " bytes (--http-max-body)");
    } else if (res.status == 404) {
      SendError(res, 404, "no route for " + req.method + " " + service::Printable(req.path, 256));
    } else {
      SendError(res, res.status, "HTTP status " + std::to_string(res.status));
    }
  });
  server_->set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, const std::exception_ptr& ep) {
        SendStatus(res, service::ToStatus(ep));
      });
}

HttpServer::~HttpServer() { Stop(); }

HttpServer::Handler HttpServer::Guard(const char* name, Access access, Handler handler) const {
  return [this, name, access, handler = std::move(handler)](const httplib::Request& req,
                                                            httplib::Response& res) {
    const auto start = std::chrono::steady_clock::now();
    if (access != Access::kOpen && auth_ != nullptr) {
      const bool present = req.has_header("Authorization");
      const grpc::Status st = auth_->CheckHeader(
          present, present ? req.get_header_value("Authorization") : std::string(), RoleOf(access),
          name);
      if (!st.ok()) {
        SendStatus(res, st);
        if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          res.set_header("WWW-Authenticate", "Bearer");
        }
        Log()->info("http {} {} {}", name, res.status, st.error_message());
        return;
      }
    }
    try {
      handler(req, res);
    } catch (...) {
      SendStatus(res, service::BoundedMessage(service::ToStatus(std::current_exception())));
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    Log()->debug("http {} {} {:.3f} ms", name, res.status, ms);
  };
}

void HttpServer::Get(const std::string& pattern, const char* name, Access access, Handler handler) {
  server_->Get(pattern, Guard(name, access, std::move(handler)));
}

void HttpServer::Post(const std::string& pattern, const char* name, Access access,
                      Handler handler) {
  server_->Post(pattern, Guard(name, access, std::move(handler)));
}

void HttpServer::Start() {
  const auto [host, port] = SplitListenAddress(config_.listen);
  if (port == 0) {
    port_ = server_->bind_to_any_port(host);
  } else if (server_->bind_to_port(host, port)) {
    port_ = port;
  }
  if (port_ <= 0) {
    throw std::runtime_error("cannot listen for HTTP on " + config_.listen +
                             " (address in use, or not a valid host:port)");
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  Log()->info("serving HTTP on {} (port {}), {}", config_.listen, port_,
              tls_ ? (config_.tls_client_ca.empty() ? "TLS" : "TLS with client certificates")
                   : "plaintext");
}

void HttpServer::Stop() {
  if (!thread_.joinable()) return;
  server_->stop();
  thread_.join();
}

}  // namespace dropnet::http
