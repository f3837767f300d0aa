// Tests for thread_pool.h: ParallelFor covers its range once, from any number of callers at once,
// and passes exceptions on, with workers that sleep at once, spin briefly or spin long; the
// caller runs a range no worker has started.
#include "server/engine/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "server/engine/tensor.h"

namespace dropnet::engine {
namespace {

TEST(ParallelForTest, CoversTheRangeOnceAndRethrows) {
  for (int threads : {1, 2, 3, 8}) {
    std::vector<std::atomic<int>> hits(1000);
    ParallelFor(1000, threads, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    for (const auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
  EXPECT_THROW(ParallelFor(10, 2,
                           [](int64_t b, int64_t) {
                             if (b > 0) throw InvalidArgument("worker failed");
                           }),
               InvalidArgument);
}

// A range whose worker has not started when the caller is done with its own is run by the
// caller: a call completes while every pool worker is held by another call.
TEST(ParallelForTest, CallerRunsARangeNoWorkerStarted) {
  std::atomic<bool> release{false};
  std::atomic<int> held{0};
  std::thread holder([&] {
    // Far more ranges than workers: every worker that starts one stays in it until released.
    ParallelFor(64, 64, [&](int64_t, int64_t) {
      held++;
      while (!release.load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
    });
  });
  while (held.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the other workers take theirs
  // The pool's queue is first in, first out: the held call's ranges not yet started come before
  // this call's second range, so no worker can start it.
  std::atomic<bool> done{false};
  std::atomic<int64_t> covered{0};
  std::thread::id second_range_thread, caller_thread;
  std::thread caller([&] {
    caller_thread = std::this_thread::get_id();
    ParallelFor(100, 2, [&](int64_t b, int64_t e) {
      covered += e - b;
      if (b == 50) second_range_thread = std::this_thread::get_id();
    });
    done = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done.load() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const bool finished_while_held = done.load();
  release = true;
  caller.join();
  holder.join();
  EXPECT_TRUE(finished_while_held);
  EXPECT_EQ(covered.load(), 100);
  EXPECT_EQ(second_range_thread, caller_thread);
}

void RunConcurrentCallers();

// Several callers at once, each waking the workers first or not: every range is covered once and
// no call waits forever for a task that a spinning worker was expected to take (the test would
// time out); with workers that sleep at once, spin briefly or spin long.
TEST(ParallelForTest, ConcurrentCallersAndWakeUpsLoseNoTask) {
  for (int spin_us : {0, 50, 2000}) {
    SCOPED_TRACE(testing::Message() << "spin " << spin_us << " us");
    SetWorkerSpin(std::chrono::microseconds(spin_us));
    EXPECT_EQ(WorkerSpin().count(), spin_us);
    RunConcurrentCallers();
  }
  SetWorkerSpin(std::chrono::microseconds(-5));
  EXPECT_EQ(WorkerSpin().count(), 0);
  SetWorkerSpin(std::chrono::microseconds(50));  // the engine's default, for the other tests
}

void RunConcurrentCallers() {
  constexpr int kCallers = 4, kRounds = 2000;
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int round = 0; round < kRounds; ++round) {
        if ((round + c) % 3 == 0) WakeWorkers(3);
        // Every few rounds a pause longer than the workers' spin, so they also go to sleep.
        if (round % 500 == 499) std::this_thread::sleep_for(std::chrono::microseconds(200));
        ParallelFor(64, 1 + (round + c) % 4, [&](int64_t b, int64_t e) { total += e - b; });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), int64_t{kCallers} * kRounds * 64);
}

}  // namespace
}  // namespace dropnet::engine
