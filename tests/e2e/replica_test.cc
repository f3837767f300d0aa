// End-to-end: scale-out over one model store. Two real dropnet-server processes share a store
// directory: a trainer (read-write) and a read-only serving replica that polls the store every
// 0.5 s. A version trained on the trainer is served by the replica within the poll interval; the
// replica refuses every write with FAILED_PRECONDITION and writes nothing; a version that fails to
// load leaves the replica on the previous one.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/e2e/e2e_util.h"
#include "tests/testing/temp_dir.h"

namespace dropnet::testing {
namespace {
using Clock = std::chrono::steady_clock;

constexpr double kPollSeconds = 0.5;
// Margin over the poll interval for loading the checkpoint and for starting the client processes
// that ask (two cores shared with a build).
constexpr double kMarginSeconds = 2.5;

class ReplicaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The replica starts first, on a store that does not exist yet: it must not create it.
    replica_ = StartServerProcess(dir_, store_,
                                  {"--read-only", "--poll-interval", std::to_string(kPollSeconds)});
    replica_address_ = ListenAddress(*replica_);
    ASSERT_FALSE(replica_address_.empty()) << replica_->err();
    ASSERT_FALSE(fs::exists(store_)) << "a read-only replica created the store directory";
    trainer_ = StartServerProcess(dir_, store_);
    trainer_address_ = ListenAddress(*trainer_);
    ASSERT_FALSE(trainer_address_.empty()) << trainer_->err();
    WriteDigitsRows(inputs_, 5);
  }

  void TearDown() override {
    for (auto* p : {replica_.get(), trainer_.get()}) {
      if (!p) continue;
      p->Signal(SIGTERM);
      EXPECT_EQ(p->Wait(std::chrono::seconds(15)), 0) << p->err();
    }
    replica_.reset();
    trainer_.reset();
  }

  Result Run(const std::string& address, std::vector<std::string> args) {
    return RunCli(dir_, address, args);
  }

  // The version `address` serves for `model`, 0 when it has no such model.
  int64_t ServedVersion(const std::string& address, const std::string& model) {
    auto r = Run(address, {"models", "list", "--format", "json"});
    if (r.code != 0) return -1;
    for (const auto& m : json::parse(r.out)) {
      if (m["name"] == model) return m["version"].get<int64_t>();
    }
    return 0;
  }

  // Seconds until the replica serves `version` of `model` (or a negative number after `limit`).
  double SecondsUntilReplicaServes(const std::string& model, int64_t version, double limit = 20) {
    const auto start = Clock::now();
    while (true) {
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      if (ServedVersion(replica_address_, model) == version) return s;
      if (s > limit) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // Creates the digits model on the trainer, uploads the data and trains `epochs` epochs.
  int64_t TrainDigits(int epochs) {
    auto c = Run(trainer_address_, {"models", "create", "digits", "--spec",
                                    (kSource / "examples/digits_mlp.json").string()});
    EXPECT_EQ(c.code, 0) << c.err;
    auto up =
        Run(trainer_address_, {"data", "upload", "digits", (kSource / "data/digits.csv").string()});
    EXPECT_EQ(up.code, 0) << up.err;
    return TrainMore(epochs);
  }

  int64_t TrainMore(int epochs) {
    auto t = Run(trainer_address_, {"train", "digits", "--data", "digits", "--epochs",
                                    std::to_string(epochs), "--standardize", "--seed", "1"});
    EXPECT_EQ(t.code, 0) << t.err;
    return ServedVersion(trainer_address_, "digits");
  }

  // Declared first, so that the servers stop before their directory goes.
  TempDir temp_{"dropnet-replica-"};
  const fs::path dir_ = temp_.path();
  const fs::path store_ = dir_ / "store";
  const fs::path inputs_ = dir_ / "inputs.csv";
  std::unique_ptr<Process> replica_, trainer_;
  std::string replica_address_, trainer_address_;
};

TEST_F(ReplicaTest, VersionTrainedOnTheTrainerIsServedByTheReplicaWithinThePollInterval) {
  const int64_t v = TrainDigits(2);
  ASSERT_GE(v, 3);  // version 1 at creation, one more per epoch
  const double s = SecondsUntilReplicaServes("digits", v);
  ASSERT_GE(s, 0) << "the replica never served version " << v << "\n" << replica_->err();
  EXPECT_LT(s, kPollSeconds + kMarginSeconds) << "took " << s << " s";
  std::cerr << "replica served version " << v << " " << s << " s after the trainer published it\n";

  // Same version, same answers: eval mode, and Monte-Carlo dropout with a seed.
  auto a =
      Run(trainer_address_, {"predict", "digits", "--input", inputs_.string(), "--format", "json"});
  auto b =
      Run(replica_address_, {"predict", "digits", "--input", inputs_.string(), "--format", "json"});
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(b.err.find("version " + std::to_string(v)), std::string::npos) << b.err;
  auto ua = Run(trainer_address_, {"uncertainty", "digits", "--input", inputs_.string(),
                                   "--samples", "20", "--seed", "3", "--format", "json"});
  auto ub = Run(replica_address_, {"uncertainty", "digits", "--input", inputs_.string(),
                                   "--samples", "20", "--seed", "3", "--format", "json"});
  ASSERT_EQ(ub.code, 0) << ub.err;
  EXPECT_EQ(ua.out, ub.out);
  // The data set uploaded to the trainer after the replica started is there for Evaluate too.
  auto ea = Run(trainer_address_, {"evaluate", "digits", "--data", "digits", "--format", "json"});
  auto eb = Run(replica_address_, {"evaluate", "digits", "--data", "digits", "--format", "json"});
  ASSERT_EQ(eb.code, 0) << eb.err;
  EXPECT_EQ(ea.out, eb.out);

  // One more epoch: the replica follows again.
  const int64_t v2 = TrainMore(1);
  ASSERT_EQ(v2, v + 1);
  const double s2 = SecondsUntilReplicaServes("digits", v2);
  ASSERT_GE(s2, 0) << replica_->err();
  EXPECT_LT(s2, kPollSeconds + kMarginSeconds) << "took " << s2 << " s";

  // A model deleted on the trainer disappears from the replica.
  ASSERT_EQ(Run(trainer_address_, {"models", "delete", "digits"}).code, 0);
  EXPECT_GE(SecondsUntilReplicaServes("digits", 0), 0);
  EXPECT_EQ(Run(replica_address_, {"predict", "digits", "--input", inputs_.string()}).code, 10 + 5);
}

TEST_F(ReplicaTest, ReplicaRefusesWritesWithFailedPreconditionAndWritesNothing) {
  const int64_t v = TrainDigits(1);
  ASSERT_GE(SecondsUntilReplicaServes("digits", v), 0) << replica_->err();
  std::vector<std::string> files_before;
  for (const auto& e : fs::recursive_directory_iterator(store_))
    files_before.push_back(e.path().string());

  const std::vector<std::vector<std::string>> writes = {
      {"models", "create", "other", "--spec", (kSource / "examples/digits_mlp.json").string()},
      {"train", "digits", "--data", "digits", "--epochs", "1"},
      {"data", "upload", "more", (kSource / "data/digits.csv").string()},
      {"data", "delete", "digits"},
      {"models", "delete", "digits"},
  };
  for (const auto& w : writes) {
    auto r = Run(replica_address_, w);
    EXPECT_EQ(r.code, 10 + 9) << w[0] << " " << w[1] << ": " << r.err;  // FAILED_PRECONDITION
    EXPECT_NE(r.err.find("FAILED_PRECONDITION"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("read-only replica"), std::string::npos) << r.err;
  }
  std::vector<std::string> files_after;
  for (const auto& e : fs::recursive_directory_iterator(store_))
    files_after.push_back(e.path().string());
  EXPECT_EQ(files_before, files_after);
  EXPECT_EQ(ServedVersion(replica_address_, "digits"), v);
  // Reads still work on the replica.
  EXPECT_EQ(Run(replica_address_, {"health"}).out, "SERVING\n");
  EXPECT_EQ(Run(replica_address_, {"predict", "digits", "--input", inputs_.string()}).code, 0);
}

TEST_F(ReplicaTest, ReplicaKeepsServingTheOldVersionWhenANewOneFailsToLoad) {
  const int64_t v = TrainDigits(1);
  ASSERT_GE(SecondsUntilReplicaServes("digits", v), 0) << replica_->err();
  auto before =
      Run(replica_address_, {"predict", "digits", "--input", inputs_.string(), "--format", "json"});
  ASSERT_EQ(before.code, 0) << before.err;

  // A damaged newer version appears in the store (a bad disk, a foreign writer).
  const fs::path bad = store_ / "models/digits" / std::to_string(v + 1);
  fs::create_directories(bad);
  std::ofstream(bad / "checkpoint.pb") << "not a checkpoint";
  EXPECT_FALSE(
      replica_
          ->WaitFor("not loaded, still serving the previous one", true, std::chrono::seconds(10))
          .empty())
      << replica_->err();
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(2 * kPollSeconds * 1000)));
  EXPECT_EQ(ServedVersion(replica_address_, "digits"), v);
  auto after =
      Run(replica_address_, {"predict", "digits", "--input", inputs_.string(), "--format", "json"});
  ASSERT_EQ(after.code, 0) << after.err;
  EXPECT_EQ(before.out, after.out);

  // The trainer's next version goes past the damaged one and the replica takes it.
  const int64_t v2 = TrainMore(1);
  EXPECT_EQ(v2, v + 2);
  EXPECT_GE(SecondsUntilReplicaServes("digits", v2), 0) << replica_->err();
}

}  // namespace
}  // namespace dropnet::testing
