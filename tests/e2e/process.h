// Test support: run a program with arguments, its output captured in files, and wait for it or
// signal it. Used by the end-to-end tests that drive the real dropnet-server and dropnet binaries.
#ifndef DROPNET_TESTS_E2E_PROCESS_H_
#define DROPNET_TESTS_E2E_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace dropnet::testing {

inline std::string ReadWhole(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class Process {
 public:
  // Starts `argv` with stdout and stderr in files under `dir`; `env` entries are added.
  Process(const std::vector<std::string>& argv, const std::filesystem::path& dir,
          const std::map<std::string, std::string>& env = {}) {
    static std::atomic<int> counter{0};
    const std::string base = std::to_string(::getpid()) + "-" + std::to_string(counter++);
    out_ = dir / ("out-" + base);
    err_ = dir / ("err-" + base);
    // Everything the child needs is prepared here: between fork and exec a multi-threaded parent's
    // child may only make async-signal-safe calls (no setenv, no allocation).
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
      const std::string entry = *e;
      if (!env.count(entry.substr(0, entry.find('=')))) env_strings.push_back(entry);
    }
    for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp, args;
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      int o = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int e = ::open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int in = ::open("/dev/null", O_RDONLY);
      ::dup2(in, 0);
      ::dup2(o, 1);
      ::dup2(e, 2);
      ::execve(args[0], args.data(), envp.data());
      ::_exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      int st;
      ::waitpid(pid_, &st, 0);
    }
  }

  pid_t pid() const { return pid_; }
  std::string out() const { return ReadWhole(out_); }
  std::string err() const { return ReadWhole(err_); }
  void Signal(int sig) const { ::kill(pid_, sig); }

  // Waits up to `timeout`; returns the exit code, or -1 on timeout, or 128+signal.
  int Wait(std::chrono::milliseconds timeout = std::chrono::minutes(5)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!exited_) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        break;
      }
      if (std::chrono::steady_clock::now() > end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return code_;
  }

  // Waits until `pattern` appears in stdout (or stderr when `in_err`); returns the first match.
  std::smatch WaitFor(const std::string& pattern, bool in_err,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    const std::regex re(pattern);
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      text_ = in_err ? err() : out();
      std::smatch m;
      if (std::regex_search(text_, m, re)) return m;
      if (exited_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::smatch();
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int code_ = -1;
  std::filesystem::path out_, err_;
  std::string text_;
};

}  // namespace dropnet::testing

#endif  // DROPNET_TESTS_E2E_PROCESS_H_
