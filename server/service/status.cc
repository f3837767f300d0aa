#include "server/service/status.h"

#include <new>

#include "server/engine/tensor.h"

namespace dropnet::service {

std::string Printable(std::string_view text, size_t max_chars) {
  std::string out;
  const std::string_view kept = text.substr(0, max_chars);
  out.reserve(kept.size() + 3);
  for (const char ch : kept) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += ch;
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

grpc::Status ToStatus(const std::exception_ptr& error, bool deadline_passed) {
  try {
    std::rethrow_exception(error);
  } catch (const ServiceError& e) {
    return grpc::Status(e.code(), e.what());
  } catch (const engine::InvalidArgument& e) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
  } catch (const engine::Cancelled& e) {
    return deadline_passed ? grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, e.what())
                           : grpc::Status(grpc::StatusCode::CANCELLED, e.what());
  } catch (const std::bad_alloc&) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "out of memory for this request");
  } catch (const std::length_error& e) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, e.what());
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL, e.what());
  } catch (...) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "unknown error");
  }
}

}  // namespace dropnet::service
