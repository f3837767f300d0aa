// Errors of the service and their one mapping to grpc::Status.
#ifndef DROPNET_SERVICE_STATUS_H_
#define DROPNET_SERVICE_STATUS_H_

#include <exception>
#include <stdexcept>
#include <string>

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

using dropnet::StatusCodeName;

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_STATUS_H_
