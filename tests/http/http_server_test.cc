// The HTTP server class: routes, JSON errors, bearer tokens and roles, the body limit, TLS and
// the plaintext rule, through cpp-httplib's client over a real loopback socket.
#include "server/http/http_server.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "server/service/status.h"

namespace dropnet::http {
namespace {

constexpr char kAdmin[] = "admin-token-0123456789";
constexpr char kPredict[] = "predict-token-0123456789";

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpConfig config = {}, bool tokens = false) {
    if (config.listen.empty()) config.listen = "127.0.0.1:0";
    if (tokens) {
      auth_.Add(service::Role::kAdmin, kAdmin);
      auth_.Add(service::Role::kPredict, kPredict);
    }
    server_ = std::make_unique<HttpServer>(config, &auth_);
    server_->Get("/health", "Health", Access::kOpen,
                 [](const httplib::Request&, httplib::Response& res) {
                   SendJson(res, {{"live", true}});
                 });
    server_->Get("/items/([^/]+)", "GetItem", Access::kPredict,
                 [](const httplib::Request& req, httplib::Response& res) {
                   if (req.matches[1] == "missing") {
                     service::Fail(grpc::StatusCode::NOT_FOUND, "item 'missing' not found");
                   }
                   SendJson(res, {{"item", req.matches[1]}});
                 });
    server_->Post("/admin", "Admin", Access::kAdmin,
                  [](const httplib::Request& req, httplib::Response& res) {
                    SendJson(res, {{"bytes", req.body.size()}});
                  });
    server_->Start();
    ASSERT_GT(server_->port(), 0);
  }
  httplib::Client Client() const { return httplib::Client("127.0.0.1", server_->port()); }

  service::TokenAuth auth_;
  std::unique_ptr<HttpServer> server_;
};

// The answer's HTTP status, or -1 when there was no answer.
int StatusOf(const httplib::Result& r) { return r ? r->status : -1; }

// The answer's body as JSON (null when there was no answer).
nlohmann::json Body(const httplib::Result& r) {
  return r ? nlohmann::json::parse(r->body) : nlohmann::json();
}

TEST_F(HttpServerTest, ServesRegisteredRoutesAsJson) {
  StartServer();
  auto cli = Client();
  auto r = cli.Get("/health");
  ASSERT_EQ(StatusOf(r), 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  EXPECT_EQ(Body(r)["live"], true);
  EXPECT_EQ(Body(cli.Get("/items/abc"))["item"], "abc");
}

TEST_F(HttpServerTest, ErrorsAreJsonWithTheirStatus) {
  StartServer();
  auto cli = Client();
  for (const auto& [path, error] : {std::pair{"/items/missing", "item 'missing' not found"},
                                    std::pair{"/nowhere", "no route for GET /nowhere"}}) {
    auto r = cli.Get(path);
    EXPECT_EQ(StatusOf(r), 404) << path;
    EXPECT_EQ(Body(r)["error"], error);
  }
}

TEST_F(HttpServerTest, BodyOverTheLimitIs413) {
  HttpConfig config;
  config.max_body_bytes = 100;
  StartServer(config);
  auto cli = Client();
  auto r = cli.Post("/admin", std::string(50, 'x'), "text/plain");
  EXPECT_EQ(StatusOf(r), 200);
  EXPECT_EQ(Body(r)["bytes"], 50);
  r = cli.Post("/admin", std::string(1000, 'x'), "text/plain");
  ASSERT_EQ(StatusOf(r), 413);
  EXPECT_NE(Body(r)["error"].get<std::string>().find("100 bytes"), std::string::npos);
}

TEST_F(HttpServerTest, TokensAndRolesAsOnTheGrpcPort) {
  StartServer({}, /*tokens=*/true);
  auto cli = Client();
  EXPECT_EQ(StatusOf(cli.Get("/health")), 200);  // open
  auto r = cli.Get("/items/a");
  ASSERT_EQ(StatusOf(r), 401);
  EXPECT_NE(Body(r)["error"].get<std::string>().find("bearer token"), std::string::npos);
  EXPECT_EQ(cli.Get("/items/a", {{"Authorization", "Bearer wrong-token-0123456789"}})->status, 401);
  EXPECT_EQ(cli.Get("/items/a", {{"Authorization", std::string("Bearer ") + kPredict}})->status,
            200);
  r = cli.Post("/admin", {{"Authorization", std::string("Bearer ") + kPredict}}, "x", "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  EXPECT_EQ(Body(r)["error"], "Admin needs the admin role; this token has predict");
  EXPECT_EQ(
      cli.Post("/admin", {{"Authorization", std::string("Bearer ") + kAdmin}}, "x", "text/plain")
          ->status,
      200);
}

TEST_F(HttpServerTest, ServesTlsWithTheGrpcPortsCertificate) {
  HttpConfig config;
  config.tls_cert = DROPNET_TLS_DIR "/server.pem";
  config.tls_key = DROPNET_TLS_DIR "/server.key";
  StartServer(config);
  EXPECT_TRUE(server_->tls());
  httplib::SSLClient cli("127.0.0.1", server_->port());
  cli.set_ca_cert_path(DROPNET_TLS_DIR "/ca.pem");
  cli.enable_server_certificate_verification(true);
  auto r = cli.Get("/health");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  // Plaintext to a TLS port gets no HTTP answer.
  EXPECT_FALSE(Client().Get("/health"));
}

TEST(HttpServerConfigTest, RefusesPlaintextOffLoopbackUnlessAllowed) {
  service::TokenAuth auth;
  HttpConfig config;
  config.listen = "0.0.0.0:0";
  EXPECT_THROW(HttpServer(config, &auth), std::runtime_error);
  config.plaintext = true;
  EXPECT_NO_THROW(HttpServer(config, &auth));
  config.tls_cert = DROPNET_TLS_DIR "/server.pem";  // no key
  EXPECT_THROW(HttpServer(config, &auth), std::runtime_error);
}

TEST(HttpServerConfigTest, SplitsListenAddresses) {
  EXPECT_EQ(SplitListenAddress("127.0.0.1:8080"), std::make_pair(std::string("127.0.0.1"), 8080));
  EXPECT_EQ(SplitListenAddress("[::1]:80"), std::make_pair(std::string("::1"), 80));
  EXPECT_EQ(SplitListenAddress(":0"), std::make_pair(std::string("0.0.0.0"), 0));
  EXPECT_THROW(SplitListenAddress("localhost"), std::runtime_error);
  EXPECT_THROW(SplitListenAddress("localhost:http"), std::runtime_error);
  EXPECT_THROW(SplitListenAddress("localhost:70000"), std::runtime_error);
}

}  // namespace
}  // namespace dropnet::http
