#include "server/engine/parallel.h"

#include "server/engine/conv.h"  // Gemm, the engine's AVX-512 kernel

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace dropnet::engine {
namespace {

thread_local bool in_pool_worker = false;

class Pool {
 public:
  explicit Pool(int n) {
    for (int i = 0; i < n; ++i) {
      workers_.emplace_back([this] {
        in_pool_worker = true;
        for (;;) {
          std::function<void()> task;
          {
            std::unique_lock lock(mu_);
            cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
            if (stop_ && tasks_.empty()) return;
            task = std::move(tasks_.front());
            tasks_.pop_front();
          }
          task();
        }
      });
    }
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
    {
      std::lock_guard lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
};

Pool& SharedPool() {
  // Enough workers for the widest request; idle workers cost nothing but a stack.
  static Pool pool(std::max(HardwareThreads(), 8));
  return pool;
}

}  // namespace

int HardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

void ParallelFor(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int parts = static_cast<int>(std::min<int64_t>(std::max(threads, 1), n));
  if (parts <= 1 || in_pool_worker) {
    fn(0, n);
    return;
  }
  std::mutex mu;
  std::condition_variable done_cv;
  int remaining = parts - 1;
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
      if (--remaining == 0) done_cv.notify_one();
    });
  }
  auto [b, e] = range(0);
  try {
    fn(b, e);
  } catch (...) {
    std::lock_guard lock(mu);
    if (!error) error = std::current_exception();
  }
  std::unique_lock lock(mu);
  done_cv.wait(lock, [&] { return remaining == 0; });
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
  if (rows * cols * inner < (1 << 18)) threads = 1;
  if (FastGemmAvailable()) {
    // The AVX-512 kernel of conv.h: each element's sum runs in the same order whatever the row
    // range, so the thread count does not change the result.
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

}  // namespace dropnet::engine
