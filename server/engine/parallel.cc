#include "server/engine/parallel.h"

#include "server/engine/conv.h"  // Gemm, the engine's AVX-512 kernel

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <deque>
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

// Products with fewer multiply-adds run on one thread: the hand-off would cost more than it saves.
constexpr int64_t kMinParallel = int64_t{1} << 16;

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

void ParallelFor(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int parts = static_cast<int>(std::min<int64_t>(std::max(threads, 1), n));
  if (parts <= 1 || in_pool_worker) {
    fn(0, n);
    return;
  }
  std::mutex mu;
  std::condition_variable done_cv;
  std::atomic<int> remaining{parts - 1};
  std::exception_ptr error;
  auto range = [&](int p) {
    return std::pair<int64_t, int64_t>(n * p / parts, n * (p + 1) / parts);
  };
  for (int p = 1; p < parts; ++p) {
    SharedPool().Submit([&, p] {
      auto [b, e] = range(p);
      try {
        fn(b, e);
      } catch (...) {
        std::lock_guard lock(mu);
        if (!error) error = std::current_exception();
      }
      std::lock_guard lock(mu);
      if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) done_cv.notify_one();
    });
  }
  auto [b, e] = range(0);
  try {
    fn(b, e);
  } catch (...) {
    std::lock_guard lock(mu);
    if (!error) error = std::current_exception();
  }
  // The helpers may wait for this very core (the others busy): yield it while spinning.
  const auto until = SpinDeadline();
  while (remaining.load(std::memory_order_acquire) != 0 && std::chrono::steady_clock::now() < until) {
    for (int k = 0; k < 16; ++k) CpuRelax();
    std::this_thread::yield();
  }
  std::unique_lock lock(mu);
  done_cv.wait(lock, [&] { return remaining.load(std::memory_order_acquire) == 0; });
  if (error) std::rethrow_exception(error);
}

void MatMul(const Matrix& a, bool transpose_a, const Matrix& b, bool transpose_b, Matrix* c,
            int threads, bool accumulate) {
  const int64_t rows = transpose_a ? a.cols() : a.rows();
  const int64_t inner = transpose_a ? a.rows() : a.cols();
  const int64_t cols = transpose_b ? b.rows() : b.cols();
  const int64_t inner_b = transpose_b ? b.cols() : b.rows();
  if (inner != inner_b) throw InvalidArgument("MatMul: inner dimensions differ");
  if (!accumulate) c->resize(rows, cols);
  // Small products are not worth a hand-off.
  if (rows * cols * inner < kMinParallel) threads = 1;
  if (FastGemmAvailable()) {
    // The AVX-512 kernel of conv.h: each element's sum runs in the same order whatever the row
    // or column range, so the thread count does not change the result.
    if (cols >= 64 * threads && (rows < 8 * threads || rows <= cols)) {
      // Few rows (eval at small batch), or a right factor at least as wide as the product is
      // tall: split the columns, in multiples of 64, so each thread packs and streams only its
      // own part of B (which, for small batches, then stays in that core's cache between calls).
      const int64_t blocks = (cols + 63) / 64;
      ParallelFor(blocks, threads, [&](int64_t b0, int64_t b1) {
        const int64_t c0 = b0 * 64, c1 = std::min(cols, b1 * 64);
        const float* bp = transpose_b ? b.data() + c0 * b.cols() : b.data() + c0;
        Gemm(transpose_a, transpose_b, rows, c1 - c0, inner, 1.0f, a.data(), a.cols(), bp,
             b.cols(), accumulate ? 1.0f : 0.0f, c->data() + c0, cols);
      });
      return;
    }
    ParallelFor(rows, threads, [&](int64_t r0, int64_t r1) {
      const float* a0 = transpose_a ? a.data() + r0 : a.data() + r0 * a.cols();
      Gemm(transpose_a, transpose_b, r1 - r0, cols, inner, 1.0f, a0, a.cols(), b.data(), b.cols(),
           accumulate ? 1.0f : 0.0f, c->data() + r0 * cols, cols);
    });
    return;
  }
  ParallelFor(rows, threads, [&](int64_t r0, int64_t r1) {
    auto out = c->middleRows(r0, r1 - r0);
    const int64_t nr = r1 - r0;
    auto run = [&](const auto& lhs) {
      if (transpose_b) {
        if (accumulate) out.noalias() += lhs * b.transpose(); else out.noalias() = lhs * b.transpose();
      } else {
        if (accumulate) out.noalias() += lhs * b; else out.noalias() = lhs * b;
      }
    };
    if (transpose_a) run(a.middleCols(r0, nr).transpose());
    else run(a.middleRows(r0, nr));
  });
}

void MatMulSkippingZeroColumns(const Matrix& a, const Matrix& b, Matrix* c, int threads) {
  const int64_t rows = a.rows(), inner = a.cols(), cols = b.cols();
  if (inner != b.rows()) throw InvalidArgument("MatMul: inner dimensions differ");
  std::vector<int32_t> index;
  bool worth_it = FastGemmAvailable();
  if (worth_it) {
    // A column is used when any row holds a value other than +0 or -0 there: OR the bits of the
    // rows (sign bit cleared), eight rows at a time, and stop as soon as fewer than a quarter of
    // the columns can still be all zero.
    thread_local std::vector<uint32_t> used;
    used.assign(inner, 0);
    uint32_t* u = used.data();
    for (int64_t r0 = 0; r0 < rows && worth_it; r0 += 8) {
      const int64_t r1 = std::min(rows, r0 + 8);
      for (int64_t r = r0; r < r1; ++r) {
        const float* ar = a.row(r).data();
        for (int64_t j = 0; j < inner; ++j) u[j] |= std::bit_cast<uint32_t>(ar[j]) & 0x7fffffffu;
      }
      int64_t used_count = 0;
      for (int64_t j = 0; j < inner; ++j) used_count += u[j] != 0;
      worth_it = used_count * 4 <= inner * 3;
    }
    if (worth_it) {
      for (int64_t j = 0; j < inner; ++j)
        if (u[j]) index.push_back(static_cast<int32_t>(j));
    }
  }
  if (!worth_it) {
    MatMul(a, false, b, false, c, threads);
    return;
  }
  const int64_t kn = static_cast<int64_t>(index.size());
  Matrix packed(rows, kn);
  GatherColumns(a.data(), rows, inner, index.data(), kn, packed.data());
  c->resize(rows, cols);
  if (rows * cols * kn < kMinParallel) threads = 1;
  if (cols >= 64 * threads && (rows < 8 * threads || rows <= cols)) {
    const int64_t blocks = (cols + 63) / 64;
    ParallelFor(blocks, threads, [&](int64_t b0, int64_t b1) {
      const int64_t c0 = b0 * 64, c1 = std::min(cols, b1 * 64);
      GemmSelectedK(rows, c1 - c0, packed.data(), kn, index.data(), kn, b.data() + c0, cols,
                    c->data() + c0, cols);
    });
    return;
  }
  ParallelFor(rows, threads, [&](int64_t r0, int64_t r1) {
    GemmSelectedK(r1 - r0, cols, packed.data() + r0 * kn, kn, index.data(), kn, b.data(), cols,
                  c->data() + r0 * cols, cols);
  });
}

}  // namespace dropnet::engine
