#include "server/service/auth.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace dropnet::service {

std::string TokensFileWarning(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::perms p = fs::status(path, ec).permissions();
  if (ec) return "";
  const fs::perms shared = fs::perms::group_read | fs::perms::others_read;
  if ((p & shared) == fs::perms::none) return "";
  return "tokens file '" + path.string() +
         "' is readable by its group or others; restrict it to its owner (chmod 600)";
}

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

void TokenAuth::Add(Role role, const std::string& token) {
  if (token.size() < 16) {
    throw std::runtime_error("a token must have at least 16 characters");
  }
  tokens_.push_back(Entry{role, token});
}

void TokenAuth::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read tokens file '" + path + "'");
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream fields(line);
    std::string role, token, extra;
    if (!(fields >> role)) continue;
    if (!(fields >> token) || (fields >> extra)) {
      throw std::runtime_error(path + ":" + std::to_string(line_no) +
                               ": expected '<role> <token>' (role admin or predict)");
    }
    Role r;
    if (role == "admin")
      r = Role::kAdmin;
    else if (role == "predict")
      r = Role::kPredict;
    else
      throw std::runtime_error(path + ":" + std::to_string(line_no) + ": unknown role '" + role +
                               "' (admin or predict)");
    try {
      Add(r, token);
    } catch (const std::exception& e) {
      throw std::runtime_error(path + ":" + std::to_string(line_no) + ": " + e.what());
    }
  }
}

void TokenAuth::LoadEnvironment() {
  if (const char* t = std::getenv("DROPNET_ADMIN_TOKEN"); t && *t) Add(Role::kAdmin, t);
  if (const char* t = std::getenv("DROPNET_PREDICT_TOKEN"); t && *t) Add(Role::kPredict, t);
}

grpc::Status TokenAuth::Check(const grpc::ServerContextBase& ctx, Role required,
                              const char* method) const {
  if (tokens_.empty()) return grpc::Status::OK;
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return CheckHeader(false, {}, required, method);
  return CheckHeader(true, std::string_view(it->second.data(), it->second.size()), required,
                     method);
}

grpc::Status TokenAuth::CheckHeader(bool present, std::string_view authorization, Role required,
                                    const char* method) const {
  if (tokens_.empty()) return grpc::Status::OK;
  if (!present) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        std::string(method) + " needs a bearer token (authorization metadata)");
  }
  constexpr std::string_view kPrefix = "Bearer ";
  if (authorization.substr(0, kPrefix.size()) != kPrefix) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization metadata must be 'Bearer <token>'");
  }
  const std::string token(authorization.substr(kPrefix.size()));
  // Compare against every token so that the time taken does not say which one matched.
  int best = -1;
  for (const auto& e : tokens_) {
    if (ConstantTimeEquals(token, e.token)) best = std::max(best, static_cast<int>(e.role));
  }
  if (best < 0) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
  if (best < static_cast<int>(required)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        std::string(method) + " needs the admin role; this token has predict");
  }
  return grpc::Status::OK;
}

}  // namespace dropnet::service
