// Bearer-token authorization with two roles.
//
// `admin` may do everything; `predict` may call Predict, PredictUncertainty, Evaluate and the
// read-only model and data-set listings. Tokens come from a file (one "<role> <token>" a line,
// '#' starts a comment) or from the environment (DROPNET_ADMIN_TOKEN, DROPNET_PREDICT_TOKEN),
// never from the command line, and are compared in constant time. With no token configured every
// call is allowed. A call without a known token is UNAUTHENTICATED; a known token whose role is
// too weak is PERMISSION_DENIED. grpc.health.v1 stays open for probes.
#ifndef DROPNET_SERVICE_AUTH_H_
#define DROPNET_SERVICE_AUTH_H_

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/server_context.h>

namespace dropnet::service {

// A warning naming `path` when its group or others may read it (the tokens are secrets); empty
// when only its owner can, or when it cannot be examined.
std::string TokensFileWarning(const std::filesystem::path& path);

enum class Role { kPredict = 0, kAdmin = 1 };

class TokenAuth {
 public:
  // Throws std::runtime_error naming the file and line for a bad entry.
  void LoadFile(const std::string& path);
  // Reads DROPNET_ADMIN_TOKEN and DROPNET_PREDICT_TOKEN when set.
  void LoadEnvironment();
  void Add(Role role, const std::string& token);

  bool enabled() const { return !tokens_.empty(); }
  size_t size() const { return tokens_.size(); }

  // OK, UNAUTHENTICATED or PERMISSION_DENIED for a call that needs `required`.
  grpc::Status Check(const grpc::ServerContextBase& ctx, Role required, const char* method) const;
  // The same for a call whose authorization header (gRPC metadata or HTTP header) is
  // `authorization`; `present` is false when the call has none.
  grpc::Status CheckHeader(bool present, std::string_view authorization, Role required,
                           const char* method) const;

 private:
  struct Entry {
    Role role;
    std::string token;
  };
  std::vector<Entry> tokens_;
};

// Compares a and b in time that depends only on their lengths.
bool ConstantTimeEquals(const std::string& a, const std::string& b);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_AUTH_H_
