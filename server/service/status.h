// Errors of the service and their one mapping to grpc::Status.
#ifndef DROPNET_SERVICE_STATUS_H_
#define DROPNET_SERVICE_STATUS_H_

#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

#include <grpcpp/support/status.h>

#include "common/status_code_name.h"

namespace dropnet::service {

// An error with the status code it maps to. Throw it from anywhere below a handler.
class ServiceError : public std::runtime_error {
 public:
  ServiceError(grpc::StatusCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  grpc::StatusCode code() const { return code_; }

 private:
  grpc::StatusCode code_;
};

[[noreturn]] inline void Fail(grpc::StatusCode code, const std::string& message) {
  throw ServiceError(code, message);
}

// The one place exceptions become statuses: engine::InvalidArgument -> INVALID_ARGUMENT,
// engine::Cancelled -> CANCELLED (DEADLINE_EXCEEDED when `deadline_passed`), ServiceError -> its
// code, std::bad_alloc / std::length_error -> RESOURCE_EXHAUSTED, anything else -> INTERNAL.
grpc::Status ToStatus(const std::exception_ptr& error, bool deadline_passed = false);

// The longest part of a user-given name that an error message or a log line repeats.
inline constexpr size_t kEchoedNameChars = 64;
// The longest error message a call answers with (gRPC sends it as metadata, whose size is capped).
inline constexpr size_t kMaxErrorMessageChars = 1024;

// `status` with its message cut to kMaxErrorMessageChars (it may repeat what the caller sent).
grpc::Status BoundedMessage(const grpc::Status& status);

// `text` made safe to log or echo: at most its first `max_chars` bytes, then "..." when it was
// longer; bytes outside printable ASCII, and the backslash, as \xNN (so a line break in a name
// cannot forge a log line).
std::string Printable(std::string_view text, size_t max_chars = kEchoedNameChars);

using dropnet::StatusCodeName;

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_STATUS_H_
