// How prediction calls are run: the pool they compute on, and the policy that places each call
// and chooses its engine threads.
//
// Predict, PredictUncertainty and Evaluate arrive through gRPC's callback API, which accepts any
// number of calls without a thread each. A CallScheduler runs a call at once on the thread that
// received it when handing it over would cost about as much as computing it, and otherwise queues
// it on a CallExecutor: a fixed number of workers that take calls in arrival order, so that at
// most `workers` calls compute at a time (each on up to --threads engine threads) and the others
// wait instead of being refused. Past `max_queued` waiting calls it refuses, and the caller
// answers RESOURCE_EXHAUSTED.
#ifndef DROPNET_SERVICE_EXECUTOR_H_
#define DROPNET_SERVICE_EXECUTOR_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dropnet::service {

class Registry;

class CallExecutor {
 public:
  CallExecutor(int workers, size_t max_queued);
  // Runs what is queued, then joins the workers.
  ~CallExecutor();

  // Queues `task`; false (and `task` dropped unrun) when max_queued tasks already wait.
  bool Submit(std::function<void()> task);

  int workers() const { return static_cast<int>(threads_.size()); }
  size_t max_queued() const { return max_queued_; }
  size_t queued() const;

 private:
  void Work();

  const size_t max_queued_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// A prediction call as the scheduler placed it.
struct ScheduledCall {
  int64_t work = -1;        // estimated multiply-adds (-1: unknown, large)
  bool found_idle = false;  // it arrived with no other call in flight, kIdleGap after the last
};

class CallScheduler {
 public:
  // Calls compute on up to `compute_threads` engine threads, `workers` calls at a time; up to
  // `max_queued` wait for a worker.
  CallScheduler(int compute_threads, int workers, size_t max_queued);

  // Runs task(call) for a call of `work` multiply-adds, now on the calling thread or later on a
  // worker; false (and `task` dropped unrun) when max_queued calls already wait. A call of at
  // most kInlineWork runs at once when a worker is free, and so does one of at most
  // kInlineIdleWork that found the server idle. `task` brackets what it computes with
  // BeginCompute and EndCompute, and calls Answered just before it answers.
  template <typename Task>
  bool Schedule(int64_t work, Task task);

  // Like Schedule, but always on a worker: a merged call (batcher.h) that may wait for others.
  template <typename Task>
  bool Enqueue(int64_t work, Task task);

  // No prediction call in flight, and none answered within kIdleGap: a call arriving now would
  // find the server idle.
  bool Idle() const;

  // Counts `call` as computing until EndCompute and returns its engine threads (ThreadsForCall),
  // which it gets spinning: they start now, while the call reads its inputs, instead of being
  // woken by its first product.
  int BeginCompute(const ScheduledCall& call);
  void EndCompute();
  // Counts a scheduled call as answered.
  void Answered();

  size_t max_queued() const { return executor_.max_queued(); }
  // Calls waiting for a worker, and calls received and not yet answered.
  size_t queued() const { return executor_.queued(); }
  int in_flight() const { return in_flight_.load(std::memory_order_relaxed); }

 private:
  static constexpr int64_t kInlineWork = int64_t{1} << 21;
  // About half a millisecond of compute on two cores: the two thread wake-ups a hand-off costs
  // (20 to 35 us measured) are 5% of such a call or more. PredictUncertainty with T = 100 for
  // one row of a 670,000-parameter model is 6.7e7; Predict of 256 rows, 1.7e8, is not.
  static constexpr int64_t kInlineIdleWork = int64_t{1} << 27;
  // The engine threads' spin (engine::SetWorkerSpin) from which a small call also splits.
  static constexpr std::chrono::microseconds kSpinForSmallCalls{200};
  // A call that arrives this long after the last answer, with no other in flight, found the
  // server idle.
  static constexpr std::chrono::microseconds kIdleGap{60};

  // Counts a call in flight from its arrival.
  ScheduledCall Arrive(int64_t work);
  // A call was answered within the last kIdleGap.
  bool AnsweredRecently() const;
  bool RunsInline(const ScheduledCall& call) const;
  // Engine threads for a call, chosen once as it starts: all of --threads when it computes alone
  // and a share when several do; one for a small call unless it found the server idle and the
  // engine threads spin for at least kSpinForSmallCalls. Calls that run side by side already
  // keep the cores busy; splitting each across all of them too would only add hand-offs, as
  // would splitting a small one onto a sleeping thread (results do not depend on the thread
  // count).
  int ThreadsForCall(const ScheduledCall& call) const;

  const int compute_threads_;
  std::atomic<int> active_calls_{0};        // calls computing now
  std::atomic<int> in_flight_{0};           // calls received and not yet answered
  std::atomic<int64_t> last_answer_ns_{0};  // steady_clock time of the last answer
  // Last member: destroyed first, so its workers finish before the rest goes.
  CallExecutor executor_;
};

template <typename Task>
bool CallScheduler::Schedule(int64_t work, Task task) {
  const ScheduledCall call = Arrive(work);
  // Some calls run here, on the gRPC thread that received it, because handing them to a worker
  // costs a thread wake-up (tens of microseconds where idle cores sleep) and a second one when
  // the answer goes out from a thread gRPC does not poll on.
  if (RunsInline(call)) {
    task(call);
    return true;
  }
  if (executor_.Submit([call, task = std::move(task)]() mutable { task(call); })) return true;
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
  return false;
}

template <typename Task>
bool CallScheduler::Enqueue(int64_t work, Task task) {
  const ScheduledCall call = Arrive(work);
  if (executor_.Submit([call, task = std::move(task)]() mutable { task(call); })) return true;
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
  return false;
}

// Rows x parameters x samples of a prediction call on `model` with inputs of `shape`; 0 for an
// unknown model (its answer is an error, found at once).
int64_t EstimatedWork(const Registry& registry, const std::string& model,
                      const std::vector<int64_t>& shape, int64_t samples);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_EXECUTOR_H_
