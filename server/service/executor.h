// The pool that prediction calls compute on.
//
// Predict, PredictUncertainty and Evaluate arrive through gRPC's callback API, which accepts any
// number of calls without a thread each; their handlers queue the work here. A fixed number of
// workers take it in arrival order, so that at most `workers` calls compute at a time (each on up
// to --threads engine threads) and the others wait instead of being refused. Past `max_queued`
// waiting calls Submit refuses, and the caller answers RESOURCE_EXHAUSTED.
#ifndef DROPNET_SERVICE_EXECUTOR_H_
#define DROPNET_SERVICE_EXECUTOR_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dropnet::service {

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

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_EXECUTOR_H_
