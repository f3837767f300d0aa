// End-to-end: SIGKILL the real dropnet-server while it trains (and saves versions of) a model
// with ~6M parameters, restart it on the same store, and check it serves the newest complete
// version on disk, that start-up cleaned every '.'-prefixed temporary, and that Predict works.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/e2e/e2e_util.h"
#include "tests/testing/temp_dir.h"

namespace dropnet::testing {
namespace {

class CrashTest : public ::testing::Test {
 protected:
  void StartServer() {
    server_ = StartServerProcess(dir_, dir_ / "store");
    address_ = ListenAddress(*server_);
    ASSERT_FALSE(address_.empty()) << server_->err();
  }
  Result Run(std::vector<std::string> args) {
    return RunCli(dir_, address_, args, std::chrono::minutes(2));
  }
  fs::path ModelDir() const { return dir_ / "store/models/big"; }
  bool HasTemporary(const fs::path& d) const {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(d, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().filename().string().rfind('.', 0) == 0) return true;
    }
    return false;
  }
  long MaxVersionOnDisk() const {
    long best = 0;
    for (const auto& e : fs::directory_iterator(ModelDir())) {
      const std::string n = e.path().filename().string();
      if (e.is_directory() && !n.empty() && n.find_first_not_of("0123456789") == std::string::npos)
        best = std::max(best, std::stol(n));
    }
    return best;
  }

  // Declared first, so that the server stops before its directory goes.
  TempDir temp_{"dropnet-crash-"};
  const fs::path dir_ = temp_.path();
  std::unique_ptr<Process> server_;
  std::string address_;
};

TEST_F(CrashTest, KillDuringSavesLeavesNewestCompleteVersion) {
  StartServer();
  fs::path spec = dir_ / "big.json";
  std::ofstream(spec)
      << R"({"inputShape": [784], "task": "TASK_CLASSIFICATION", "seed": 1, "layers": [
      {"type": "dense", "units": 2048}, {"type": "relu"}, {"type": "dropout", "rate": 0.5},
      {"type": "dense", "units": 2048}, {"type": "relu"}, {"type": "dropout", "rate": 0.5},
      {"type": "dense", "units": 10}]})";
  fs::path csv = dir_ / "d.csv";
  {
    std::ofstream out(csv);
    for (int j = 0; j < 784; ++j) out << "f" << j << ",";
    out << "label\n";
    std::mt19937 gen(7);
    for (int i = 0; i < 32; ++i) {
      for (int j = 0; j < 784; ++j) out << (gen() % 100) / 100.0 << ",";
      out << i % 10 << "\n";
    }
  }
  fs::path input = dir_ / "in.csv";
  {
    std::ifstream in(csv);
    std::ofstream out(input);
    std::string line;
    for (int i = 0; i < 3 && std::getline(in, line); ++i) out << line << "\n";
  }
  auto c = Run({"models", "create", "big", "--spec", spec.string()});
  ASSERT_EQ(c.code, 0) << c.err;
  auto u = Run({"data", "upload", "d", csv.string()});
  ASSERT_EQ(u.code, 0) << u.err;

  std::mt19937 rng(12345);
  int mid_save_kills = 0;
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Process trainer({kCli, "train", "big", "--data", "d", "--epochs", "1000", "--batch-size", "32"},
                    dir_, {{"DROPNET_SERVER", address_}});
    // Wait a random number of saves (observed as temporaries appearing), then kill in the
    // middle of the next one; fall back to a plain kill after a deadline.
    const int saves = 1 + static_cast<int>(rng() % 3);
    int seen = 0;
    bool was_tmp = false, killed_mid = false;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < end) {
      const bool tmp = HasTemporary(ModelDir());
      if (tmp && !was_tmp && ++seen > saves) {
        server_->Signal(SIGKILL);
        killed_mid = true;
        break;
      }
      was_tmp = tmp;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (!killed_mid) server_->Signal(SIGKILL);
    mid_save_kills += killed_mid;
    EXPECT_EQ(server_->Wait(std::chrono::seconds(10)), 128 + SIGKILL);
    trainer.Wait(std::chrono::seconds(30));

    const bool tmp_before = HasTemporary(ModelDir());
    StartServer();
    EXPECT_FALSE(HasTemporary(dir_ / "store"))
        << "temporaries left after start-up (before: " << tmp_before << ")";
    const long newest = MaxVersionOnDisk();
    std::cerr << "round " << round << ": killed mid-save " << killed_mid
              << ", temporaries before restart " << tmp_before << ", newest version on disk "
              << newest << "\n";
    if (round > 0) {
      EXPECT_GE(newest, 2) << "training published no version";
    }
    auto g = Run({"models", "get", "big", "--format", "json"});
    ASSERT_EQ(g.code, 0) << g.err;
    auto info = json::parse(g.out);
    EXPECT_EQ(info["version"], std::to_string(newest)) << g.out.substr(0, 300);
    auto p = Run({"predict", "big", "--input", input.string(), "--format", "csv"});
    EXPECT_EQ(p.code, 0) << p.err;
  }
  EXPECT_GE(mid_save_kills, 1) << "no kill landed in the middle of a save";
}

// A failed write (the model's directory replaced by a regular file, which stops writes even as
// root) fails the Train with a status naming the store, and the old version is still served.
TEST_F(CrashTest, FailedWriteKeepsOldVersionAndSaysSo) {
  StartServer();
  const std::string spec = (kSource / "examples/digits_mlp.json").string();
  const std::string csv = (kSource / "data/digits.csv").string();
  ASSERT_EQ(Run({"models", "create", "big", "--spec", spec}).code, 0);
  ASSERT_EQ(Run({"data", "upload", "d", csv}).code, 0);
  auto t1 = Run({"train", "big", "--data", "d", "--epochs", "1", "--standardize"});
  ASSERT_EQ(t1.code, 0) << t1.err;
  const std::string before =
      json::parse(Run({"models", "get", "big", "--format", "json"}).out)["version"];
  fs::rename(ModelDir(), dir_ / "moved-away");
  std::ofstream(ModelDir()) << "not a directory";
  auto t2 = Run({"train", "big", "--data", "d", "--epochs", "1", "--standardize"});
  EXPECT_TRUE(t2.code == 10 + 8 || t2.code == 10 + 13) << "exit " << t2.code << ": " << t2.err;
  EXPECT_NE(t2.err.find("store"), std::string::npos) << t2.err;
  std::cerr << "train on an unwritable store: exit " << t2.code << ": " << t2.err;
  auto g = Run({"models", "get", "big", "--format", "json"});
  ASSERT_EQ(g.code, 0) << g.err;
  EXPECT_EQ(json::parse(g.out)["version"], before);
  fs::remove(ModelDir());
  fs::rename(dir_ / "moved-away", ModelDir());
}

}  // namespace
}  // namespace dropnet::testing
