#include "server/service/executor.h"

#include <algorithm>

#include "server/engine/thread_pool.h"
#include "server/service/registry.h"
#include "server/service/status.h"

namespace dropnet::service {

CallExecutor::CallExecutor(int workers, size_t max_queued) : max_queued_(max_queued) {
  for (int i = 0; i < std::max(1, workers); ++i) threads_.emplace_back([this] { Work(); });
}

CallExecutor::~CallExecutor() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

bool CallExecutor::Submit(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    if (tasks_.size() >= max_queued_) return false;
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

size_t CallExecutor::queued() const {
  std::lock_guard lock(mu_);
  return tasks_.size();
}

void CallExecutor::Work() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

CallScheduler::CallScheduler(int compute_threads, int workers, size_t max_queued)
    : compute_threads_(compute_threads), executor_(workers, max_queued) {}

ScheduledCall CallScheduler::Arrive(int64_t work) {
  // Idle: no other prediction call in the server, and none answered in the last kIdleGap (calls
  // that follow one another closely are load, even when each is alone in turn).
  const bool idle = in_flight_.fetch_add(1, std::memory_order_relaxed) == 0 && !AnsweredRecently();
  return ScheduledCall{work, idle};
}

bool CallScheduler::AnsweredRecently() const {
  const auto now_ns = std::chrono::steady_clock::now().time_since_epoch().count();
  return now_ns - last_answer_ns_.load(std::memory_order_relaxed) <
         std::chrono::nanoseconds(kIdleGap).count();
}

bool CallScheduler::Idle() const {
  return in_flight_.load(std::memory_order_relaxed) == 0 && !AnsweredRecently();
}

bool CallScheduler::RunsInline(const ScheduledCall& call) const {
  // - a small call (a row or a few through the network) while a worker is free: the hand-off
  //   would be of the order of its compute;
  // - a call of up to kInlineIdleWork that found the server idle: no other call waits for this
  //   thread. Calls that arrive meanwhile go to the workers, so for at most about half a
  //   millisecond one call more than --workers may compute.
  const bool small = call.work >= 0 && call.work <= kInlineWork &&
                     active_calls_.load(std::memory_order_relaxed) < executor_.workers();
  const bool alone = call.found_idle && call.work >= 0 && call.work <= kInlineIdleWork;
  return small || alone;
}

int CallScheduler::ThreadsForCall(const ScheduledCall& call) const {
  // A small call splits only when it found the server idle (under load the cores are busy with
  // other calls already, and a split would take one from the next call) and the engine threads
  // are likely still spinning from the previous call (--spin-us): waking a sleeping one costs
  // more than it saves.
  if (call.work >= 0 && call.work <= kInlineWork) {
    return call.found_idle && engine::WorkerSpin() >= kSpinForSmallCalls ? compute_threads_ : 1;
  }
  const int active = std::max(1, active_calls_.load(std::memory_order_relaxed));
  return std::max(1, compute_threads_ / active);
}

int CallScheduler::BeginCompute(const ScheduledCall& call) {
  active_calls_.fetch_add(1, std::memory_order_relaxed);
  const int threads = ThreadsForCall(call);
  engine::WakeWorkers(threads);
  return threads;
}

void CallScheduler::EndCompute() { active_calls_.fetch_sub(1, std::memory_order_relaxed); }

void CallScheduler::Answered() {
  last_answer_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                        std::memory_order_relaxed);
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
}

int64_t EstimatedWork(const Registry& registry, const std::string& model,
                      const std::vector<int64_t>& shape, int64_t samples) {
  try {
    const int64_t rows = shape.empty() ? 0 : shape[0];
    return std::max<int64_t>(rows, 1) * registry.Get(model)->net.ParameterCount() *
           std::max<int64_t>(samples, 1);
  } catch (const ServiceError&) {
    return 0;
  }
}

}  // namespace dropnet::service
