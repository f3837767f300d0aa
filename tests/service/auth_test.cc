// TLS, mutual TLS and bearer tokens, through the client library against an in-process server.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "client/client.h"
#include "server/service/auth.h"
#include "server/service/server.h"
#include "tests/testing/spec_json.h"
#include "tests/testing/temp_dir.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
const fs::path kTls = DROPNET_TLS_DIR;

TEST(ConstantTimeEqualsTest, ComparesWholeStrings) {
  EXPECT_TRUE(ConstantTimeEquals("abcdefgh", "abcdefgh"));
  EXPECT_FALSE(ConstantTimeEquals("abcdefgh", "abcdefgX"));
  EXPECT_FALSE(ConstantTimeEquals("abcdefgh", "abcdefg"));
  EXPECT_FALSE(ConstantTimeEquals("abcdefg", "abcdefgh"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

class TokenFileTest : public ::testing::Test {
 protected:
  fs::path Write(const std::string& text) {
    fs::path p = fs::temp_directory_path() / ("dropnet-tokens-" + std::to_string(::getpid()));
    std::ofstream(p) << text;
    return p;
  }
};

TEST_F(TokenFileTest, ReadsRolesAndComments) {
  TokenAuth auth;
  auth.LoadFile(
      Write("# tokens\nadmin 0123456789abcdef0123\n\npredict  fedcba9876543210fedc # ops\n"));
  EXPECT_EQ(auth.size(), 2u);
}

TEST_F(TokenFileTest, RejectsBadLinesWithTheLineNumber) {
  TokenAuth a;
  try {
    a.LoadFile(Write("admin 0123456789abcdef0123\nroot 0123456789abcdef0123\n"));
    FAIL() << "an unknown role was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(":2: unknown role 'root'"), std::string::npos) << e.what();
  }
  TokenAuth b;
  EXPECT_THROW(b.LoadFile(Write("admin short\n")), std::runtime_error);
  TokenAuth c;
  EXPECT_THROW(c.LoadFile(Write("admin 0123456789abcdef0123 extra\n")), std::runtime_error);
  TokenAuth d;
  EXPECT_THROW(d.LoadFile("/nonexistent/tokens"), std::runtime_error);
}

class SecureServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetUpLogging("off"); }
  void SetUp() override {
    store_ = fs::temp_directory_path() /
             ("dropnet-auth-" + std::to_string(::getpid()) + "-" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(store_);
  }
  void TearDown() override {
    server_.reset();
    fs::remove_all(store_);
  }
  ServerConfig Config() {
    ServerConfig c;
    c.listen = "127.0.0.1:0";
    c.store = store_;
    return c;
  }
  // Config() serving TLS with the test server certificate.
  ServerConfig TlsConfig() {
    ServerConfig c = Config();
    c.tls_cert = kTls / "server.pem";
    c.tls_key = kTls / "server.key";
    return c;
  }
  // Client options for TLS that trust the CA in `ca`, a file of the test TLS directory.
  static client::ClientOptions TrustingCa(const char* ca) {
    client::ClientOptions o;
    o.use_tls = true;
    o.ca_file = (kTls / ca).string();
    return o;
  }
  client::Client Connect(client::ClientOptions o) {
    o.target = "localhost:" + std::to_string(server_->port());
    o.deadline = std::chrono::seconds(5);
    o.max_attempts = 2;
    return client::Client(o);
  }
  static v1::ModelSpec SmallSpec() {  // PredictUncertainty needs a stochastic layer
    return testing::SpecFromJson(R"({"inputShape": [3], "layers": [
        {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 2}]})");
  }
  static grpc::StatusCode CodeOf(const std::function<void()>& call) {
    try {
      call();
      return grpc::StatusCode::OK;
    } catch (const client::ClientError& e) {
      return e.code();
    }
  }

  fs::path store_;
  std::unique_ptr<Server> server_;
};

constexpr const char* kAdmin = "admin-token-0123456789";
constexpr const char* kPredict = "predict-token-0123456789";

TEST_F(SecureServerTest, TokensSeparateAdminFromPredict) {
  fs::path tokens = store_.string() + ".tokens";
  std::ofstream(tokens) << "admin " << kAdmin << "\npredict " << kPredict << "\n";
  ServerConfig c = Config();
  c.tokens_file = tokens;
  c.service.max_dataset_bytes = 4096;
  server_ = std::make_unique<Server>(c);
  server_->Start();

  client::ClientOptions none, admin, predict, wrong;
  admin.token = kAdmin;
  predict.token = kPredict;
  wrong.token = "not-a-token-000000000";
  auto anon = Connect(none);
  auto adm = Connect(admin);
  auto pre = Connect(predict);
  auto bad = Connect(wrong);

  EXPECT_TRUE(anon.Healthy());  // health stays open for probes
  EXPECT_EQ(CodeOf([&] { anon.ListModels(); }), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CodeOf([&] { bad.ListModels(); }), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CodeOf([&] { pre.CreateModel("m", SmallSpec()); }),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CodeOf([&] { adm.CreateModel("m", SmallSpec()); }), grpc::StatusCode::OK);
  client::Matrix x = client::Matrix::Ones(2, 3);
  EXPECT_EQ(CodeOf([&] { pre.Predict("m", x); }), grpc::StatusCode::OK);
  EXPECT_EQ(CodeOf([&] { pre.PredictUncertainty("m", x); }), grpc::StatusCode::OK);
  EXPECT_EQ(CodeOf([&] { pre.GetModel("m"); }), grpc::StatusCode::OK);
  EXPECT_EQ(CodeOf([&] { pre.DeleteModel("m"); }), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CodeOf([&] { anon.Predict("m", x); }), grpc::StatusCode::UNAUTHENTICATED);
  // A request serialised once carries the token as the others do, and gets the same answer.
  v1::PredictRequest request;
  request.set_model("m");
  client::ToTensor(x, request.mutable_inputs());
  const grpc::ByteBuffer bytes = client::Client::Serialize(request);
  const v1::PredictResponse a = pre.Predict(bytes), b = pre.Predict("m", x);
  ASSERT_EQ(a.outputs().values_size(), b.outputs().values_size());
  ASSERT_GT(a.outputs().values_size(), 0);
  for (int i = 0; i < a.outputs().values_size(); ++i) {
    EXPECT_EQ(a.outputs().values(i), b.outputs().values(i));
  }
  EXPECT_EQ(CodeOf([&] { pre.Predict(bytes); }), grpc::StatusCode::OK);
  EXPECT_EQ(CodeOf([&] { anon.Predict(bytes); }), grpc::StatusCode::UNAUTHENTICATED);
  // Labels change what is served: admin only.
  EXPECT_EQ(CodeOf([&] { pre.SetVersionLabel("m", "stable", 1); }),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CodeOf([&] { adm.SetVersionLabel("m", "stable", 1); }), grpc::StatusCode::OK);
  EXPECT_EQ(CodeOf([&] { pre.Predict("m", "stable", x); }), grpc::StatusCode::OK);
  // An upload's token is checked before its body is read: past the size limit, a caller without
  // the admin token hears about the token, not the size.
  v1::DatasetHeader header;
  header.set_name("d");
  header.add_input_shape(3);
  const client::Matrix rows = client::Matrix::Ones(1000, 3), labels = client::Matrix::Zero(1000, 1);
  EXPECT_EQ(CodeOf([&] { anon.UploadRows(header, rows, labels); }),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CodeOf([&] { pre.UploadRows(header, rows, labels); }),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(CodeOf([&] { adm.UploadRows(header, rows, labels); }),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(CodeOf([&] { adm.DeleteModel("m"); }), grpc::StatusCode::OK);
  fs::remove(tokens);
}

TEST_F(SecureServerTest, TokensFromTheEnvironment) {
  ::setenv("DROPNET_PREDICT_TOKEN", kPredict, 1);
  server_ = std::make_unique<Server>(Config());
  server_->Start();
  ::unsetenv("DROPNET_PREDICT_TOKEN");
  client::ClientOptions predict;
  predict.token = kPredict;
  auto pre = Connect(predict);
  EXPECT_EQ(CodeOf([&] { pre.ListModels(); }), grpc::StatusCode::OK);
  EXPECT_EQ(CodeOf([&] { pre.CreateModel("m", SmallSpec()); }),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(SecureServerTest, TlsServesClientsThatTrustItsCa) {
  server_ = std::make_unique<Server>(TlsConfig());
  server_->Start();

  auto good = Connect(TrustingCa("ca.pem"));
  EXPECT_EQ(CodeOf([&] { good.CreateModel("m", SmallSpec()); }), grpc::StatusCode::OK);

  auto plain = Connect(client::ClientOptions{});
  EXPECT_EQ(CodeOf([&] { plain.ListModels(); }), grpc::StatusCode::UNAVAILABLE);

  auto bad = Connect(TrustingCa("other-ca.pem"));  // not the issuing CA
  EXPECT_EQ(CodeOf([&] { bad.ListModels(); }), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SecureServerTest, MutualTlsRequiresAClientCertificate) {
  ServerConfig c = TlsConfig();
  c.tls_client_ca = kTls / "ca.pem";
  server_ = std::make_unique<Server>(c);
  server_->Start();

  const client::ClientOptions no_cert = TrustingCa("ca.pem");
  auto anon = Connect(no_cert);
  EXPECT_EQ(CodeOf([&] { anon.ListModels(); }), grpc::StatusCode::UNAVAILABLE);

  client::ClientOptions with_cert = no_cert;
  with_cert.cert_file = (kTls / "client.pem").string();
  with_cert.key_file = (kTls / "client.key").string();
  auto ok = Connect(with_cert);
  EXPECT_EQ(CodeOf([&] { ok.ListModels(); }), grpc::StatusCode::OK);
}

TEST(TokensFileTest, WarnsWhenGroupOrOthersCanReadIt) {
  dropnet::testing::TempDir dir;
  const auto path = dir.path() / "tokens";
  std::ofstream(path) << "admin secret-admin-token\n";
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  const std::string warning = TokensFileWarning(path);
  EXPECT_NE(warning.find(path.string()), std::string::npos) << warning;
  EXPECT_NE(warning.find("chmod 600"), std::string::npos) << warning;
  fs::permissions(path, fs::perms::owner_read | fs::perms::others_read);
  EXPECT_FALSE(TokensFileWarning(path).empty());
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ(TokensFileWarning(path), "");
}

TEST_F(SecureServerTest, PlaintextOnlyOnLoopbackUnlessAskedFor) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:1"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.1.2.3:50051"));
  EXPECT_TRUE(IsLoopbackAddress("unix:/run/dropnet/dropnet.sock"));
  EXPECT_TRUE(IsLoopbackAddress("unix-abstract:dropnet"));
  EXPECT_FALSE(IsLoopbackAddress("dns:unix.example.com:50051"));
  // Only a literal 127.0.0.0/8 address is loopback, not a name that starts like one.
  EXPECT_TRUE(IsLoopbackAddress("127.5.6.7:50051"));
  EXPECT_TRUE(IsLoopbackAddress("ipv4:127.0.0.1:50051"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.1.example.com:50051"));
  EXPECT_FALSE(IsLoopbackAddress("127.evil.example:50051"));
  EXPECT_FALSE(IsLoopbackAddress("127.1:50051"));

  ServerConfig c = Config();
  c.listen = "0.0.0.0:0";
  {
    Server s(c);
    try {
      s.Start();
      FAIL() << "served plaintext on 0.0.0.0 without being asked";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("--plaintext"), std::string::npos) << e.what();
    }
  }
  c.plaintext = true;
  server_ = std::make_unique<Server>(c);
  EXPECT_NO_THROW(server_->Start());
  EXPECT_GT(server_->port(), 0);
}

// A Unix socket is reachable from this host only: plaintext needs no flag there.
TEST_F(SecureServerTest, PlaintextOnAUnixSocketWithoutTheFlag) {
  fs::create_directories(store_);
  const fs::path socket = store_ / "dropnet.sock";
  ServerConfig c = Config();
  c.listen = "unix:" + socket.string();
  server_ = std::make_unique<Server>(c);
  ASSERT_NO_THROW(server_->Start());
  client::ClientOptions o;
  o.target = "unix:" + socket.string();
  o.deadline = std::chrono::seconds(5);
  client::Client unix_client(o);
  EXPECT_TRUE(unix_client.Healthy());
  EXPECT_EQ(CodeOf([&] { unix_client.CreateModel("m", SmallSpec()); }), grpc::StatusCode::OK);
}

TEST_F(SecureServerTest, TlsNeedsBothCertificateAndKey) {
  ServerConfig c = Config();
  c.tls_cert = kTls / "server.pem";
  Server s(c);
  EXPECT_THROW(s.Start(), std::runtime_error);
}

}  // namespace
}  // namespace dropnet::service
