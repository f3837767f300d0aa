#include "server/service/executor.h"

#include <algorithm>

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

}  // namespace dropnet::service
