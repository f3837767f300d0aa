// Shared set-up of the end-to-end tests: where the dropnet-server and dropnet binaries and the
// source tree are, starting a server on a free loopback port, running the CLI against it, and the
// input files the tests cut from data/digits.csv.
#ifndef DROPNET_TESTS_E2E_E2E_UTIL_H_
#define DROPNET_TESTS_E2E_E2E_UTIL_H_

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/e2e/process.h"

namespace dropnet::testing {

// The end-to-end tests' names for the file system and for the CLI's JSON output.
namespace fs = std::filesystem;
using json = nlohmann::json;

inline const std::string kServer = DROPNET_SERVER_BIN;
inline const std::string kCli = DROPNET_CLI_BIN;
inline const std::filesystem::path kSource = DROPNET_SOURCE_DIR;

// What a run of the CLI returned and printed.
struct Result {
  int code;
  std::string out, err;
};

// Waits for `server` to log the port it listens on: "127.0.0.1:<port>", or "" when it never does.
inline std::string ListenAddress(Process& server) {
  auto m = server.WaitFor(R"(\(port (\d+)\))", true);
  return m.empty() ? std::string() : "127.0.0.1:" + m[1].str();
}

// Starts dropnet-server with one RPC thread on a free loopback port over the store `store`, with
// no drain delay on SIGTERM and the `extra` flags; its output goes to files under `dir`.
inline std::unique_ptr<Process> StartServerProcess(const std::filesystem::path& dir,
                                                   const std::filesystem::path& store,
                                                   const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {kServer,   "--listen",      "127.0.0.1:0",
                                   "--store", store.string(),  "--threads",
                                   "1",       "--drain-delay", "0"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return std::make_unique<Process>(argv, dir);
}

// Runs `dropnet args...` against the server at `address` (in DROPNET_SERVER), its output under
// `dir`, and waits up to `timeout` for it.
inline Result RunCli(const std::filesystem::path& dir, const std::string& address,
                     std::vector<std::string> args,
                     std::chrono::milliseconds timeout = std::chrono::minutes(5)) {
  args.insert(args.begin(), kCli);
  Process p(args, dir, {{"DROPNET_SERVER", address}});
  const int code = p.Wait(timeout);
  return {code, p.out(), p.err()};
}

// Writes the header and the first `rows` rows of data/digits.csv to `path`.
inline void WriteDigitsRows(const std::filesystem::path& path, int rows) {
  std::ifstream in(kSource / "data/digits.csv");
  std::ofstream out(path);
  std::string line;
  for (int i = 0; i <= rows && std::getline(in, line); ++i) out << line << "\n";
}

}  // namespace dropnet::testing

#endif  // DROPNET_TESTS_E2E_E2E_UTIL_H_
