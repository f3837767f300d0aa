#include "server/engine/thread_pool.h"

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace dropnet::engine {
namespace {

thread_local bool in_pool_worker = false;

// How long an idle worker (or a ParallelFor's caller waiting for its helpers) spins before
// sleeping on a condition variable; see SetWorkerSpin.
std::atomic<int64_t> spin_ns{50'000};

std::chrono::steady_clock::time_point SpinDeadline() {
  return std::chrono::steady_clock::now() +
         std::chrono::nanoseconds(spin_ns.load(std::memory_order_relaxed));
}

inline void CpuRelax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

// Workers that find no task spin (SetWorkerSpin) before sleeping, at most one fewer than there are
// cores (the thread that hands work out runs a part of it itself), so spinning never takes a
// core from the threads doing the work. Submit wakes a sleeper only when the tasks waiting
// outnumber the spinners: waking a thread that then finds nothing to do costs a context switch
// on a core someone needs.
class Pool {
 public:
  explicit Pool(int n) : max_spinners_(std::max(1, HardwareThreads() - 1)) {
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~Pool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  void Submit(std::function<void()> task) {
    bool wake;
    {
      std::lock_guard lock(mu_);
      tasks_.push_back(std::move(task));
      queued_.fetch_add(1, std::memory_order_release);
      wake = static_cast<int>(tasks_.size()) > spinners_;
    }
    if (wake) cv_.notify_one();
  }
  // Sets up to n sleeping workers spinning, without a task.
  void Wake(int n) {
    int to_wake;
    {
      std::lock_guard lock(mu_);
      to_wake = std::min(n, max_spinners_) - spinners_ - waking_;
      if (to_wake <= 0) return;
      waking_ += to_wake;
    }
    for (int i = 0; i < to_wake; ++i) cv_.notify_one();
  }

 private:
  void Work() {
    in_pool_worker = true;
    for (;;) {
      std::unique_lock lock(mu_);
      if (tasks_.empty() && !stop_ && spinners_ < max_spinners_) {
        // A spinner is counted until it holds the lock again, so a task queued meanwhile is
        // either seen here or woken for.
        ++spinners_;
        const auto until = SpinDeadline();
        bool expired = false;
        while (tasks_.empty() && !stop_ && !expired) {
          lock.unlock();
          while (queued_.load(std::memory_order_acquire) == 0 &&
                 !(expired = std::chrono::steady_clock::now() >= until)) {
            for (int k = 0; k < 16; ++k) CpuRelax();
            // Keeps the core awake but gives it to any other runnable thread at once: a spinner
            // must not delay the threads doing the work it waits for.
            std::this_thread::yield();
          }
          lock.lock();
        }
        --spinners_;
      }
      cv_.wait(lock, [this] { return stop_ || !tasks_.empty() || waking_ > 0; });
      if (tasks_.empty()) {
        if (stop_) return;
        --waking_;  // woken to spin
        continue;
      }
      std::function<void()> task = std::move(tasks_.front());
      tasks_.pop_front();
      queued_.fetch_sub(1, std::memory_order_relaxed);
      lock.unlock();
      task();
    }
  }

  const int max_spinners_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::atomic<int> queued_{0};
  int spinners_ = 0;  // guarded by mu_
  int waking_ = 0;    // workers Wake() has notified that have not woken yet; guarded by mu_
  std::vector<std::thread> workers_;
  bool stop_ = false;
};

Pool& SharedPool() {
  // Enough workers for the widest request; idle workers cost nothing but a stack.
  static Pool pool(std::max(HardwareThreads(), 8));
  return pool;
}

}  // namespace

void SetWorkerSpin(std::chrono::microseconds spin) {
  spin_ns.store(std::max<int64_t>(0, std::chrono::nanoseconds(spin).count()),
                std::memory_order_relaxed);
}

std::chrono::microseconds WorkerSpin() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::nanoseconds(spin_ns.load(std::memory_order_relaxed)));
}

void WakeWorkers(int threads) {
  if (threads > 1) SharedPool().Wake(threads - 1);
}

int HardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

void TuneAllocatorForTraining() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed value on 64-bit
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

namespace {

// Claims range p (bit p of claims) and says whether this caller was the first.
bool Claim(std::atomic<uint64_t>& claims, int p) {
  const uint64_t bit = uint64_t{1} << p;
  return (claims.fetch_or(bit, std::memory_order_acq_rel) & bit) == 0;
}

}  // namespace

void ParallelFor(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  // At most 64 ranges: one bit of the claims word each (below).
  const int parts = static_cast<int>(std::min<int64_t>(std::clamp(threads, 1, 64), n));
  if (parts <= 1 || in_pool_worker) {
    fn(0, n);
    return;
  }
  // Each range is run by whoever claims it first: the worker it was handed to, or this thread
  // once its own range is done. A worker that has not started by then (asleep, or its core taken
  // by other work) is not waited for. The claims (a bit a range) are shared, so a worker that
  // starts after this call returned finds its range taken and touches nothing else.
  const auto claims = std::make_shared<std::atomic<uint64_t>>(0);
  std::mutex mu;
  std::condition_variable done_cv;
  std::atomic<int> helped{0};  // ranges finished by workers
  std::exception_ptr error;
  auto run = [&](int p) {
    try {
      fn(n * p / parts, n * (p + 1) / parts);
    } catch (...) {
      std::lock_guard lock(mu);
      if (!error) error = std::current_exception();
    }
  };
  for (int p = 1; p < parts; ++p) {
    SharedPool().Submit([claims, p, &run, &mu, &done_cv, &helped] {
      if (!Claim(*claims, p)) return;
      run(p);
      std::lock_guard lock(mu);
      helped.fetch_add(1, std::memory_order_acq_rel);
      done_cv.notify_one();
    });
  }
  run(0);
  int by_workers = 0;
  for (int p = 1; p < parts; ++p) {
    if (Claim(*claims, p))
      run(p);
    else
      ++by_workers;
  }
  // The workers may wait for this very core (the others busy): yield it while spinning.
  const auto until = SpinDeadline();
  while (helped.load(std::memory_order_acquire) != by_workers &&
         std::chrono::steady_clock::now() < until) {
    for (int k = 0; k < 16; ++k) CpuRelax();
    std::this_thread::yield();
  }
  // Taken even when the spin saw every range done: a worker releases mu only after its last
  // touch of this frame.
  std::unique_lock lock(mu);
  done_cv.wait(lock, [&] { return helped.load(std::memory_order_acquire) == by_workers; });
  if (error) std::rethrow_exception(error);
}

}  // namespace dropnet::engine