// A fresh directory under the system temporary directory, made with mkdtemp and removed with
// everything in it when the object goes away. Shared by the service and end-to-end tests.
#ifndef DROPNET_TESTS_TESTING_TEMP_DIR_H_
#define DROPNET_TESTS_TESTING_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace dropnet::testing {

class TempDir {
 public:
  // The directory is named `prefix` followed by six random characters.
  explicit TempDir(const std::string& prefix = "dropnet-test-") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace dropnet::testing

#endif  // DROPNET_TESTS_TESTING_TEMP_DIR_H_
