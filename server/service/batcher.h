// Dynamic batching of prediction calls, below the dropnet.v1 handlers, as Triton's and TF
// Serving's batchers do it: calls that arrive close together for the same model version and the
// same question (eval, or Monte Carlo with the same T and interval) become one merged call on one
// worker, and each caller gets its own answer.
//
// A merged answer is the answer the call gets alone, bit for bit. Eval calls are stacked into one
// engine call: the engine computes every row from that row alone (engine::RowsIndependentOfBatch;
// models for which that does not hold are never merged), and one read of the weights serves every
// row. Monte-Carlo calls, each already a batch of T passes, run one after the other in the merged
// call, each exactly as alone (prediction.h says why they are not stacked): what they share is
// the hand-off to a worker.
//
// The first call of a batch opens it and queues it on the CallScheduler's workers; calls that
// arrive before a worker takes it, or within `window` of its opening, join it, up to `max_rows`
// rows. A caller that went away or whose deadline passed is left out of the computation and gets
// its own CANCELLED or DEADLINE_EXCEEDED; an error of a merged computation is retried call by
// call, so every caller gets the answer or error it would have had alone.
#ifndef DROPNET_SERVICE_BATCHER_H_
#define DROPNET_SERVICE_BATCHER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "server/service/executor.h"
#include "server/service/prediction.h"
#include "server/service/snapshot.h"

namespace dropnet::service {

// One call's prediction work, checked and ready for the engine.
struct PredictionPart {
  SnapshotPtr snap;  // keeps work.snap alive
  PreparedPrediction work;
  std::function<bool()> stopped;  // the caller went away or its deadline passed; may be empty
};

class Batcher {
 public:
  struct Options {
    std::chrono::microseconds window{0};  // 0: no merging
    int64_t max_rows = 64;                // rows of one merged call
  };
  // Gets the call's part back with its answer, or with the error it would have had alone.
  using Done =
      std::function<void(std::exception_ptr error, const PredictionPart& part, Prediction output)>;

  // `scheduler` runs the merged calls and must outlive the batcher's calls.
  Batcher(CallScheduler* scheduler, Options options);
  // Logs how many calls the merged calls held.
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  bool enabled() const { return options_.window.count() > 0; }
  // Whether `work` may be merged: enabled, within max_rows, and eval on a model whose rows the
  // engine computes independently, or Monte Carlo without the return of every sample.
  bool Accepts(const PreparedPrediction& work) const;

  // Queues `part` (Accepts holds) for a merged call; `done` runs on a worker once it ran, or at
  // once with RESOURCE_EXHAUSTED when the scheduler's queue is full.
  void Add(PredictionPart part, Done done);

  // Merged calls run so far, and the calls they held (for the tests and the log).
  int64_t merged_calls() const;
  int64_t merged_parts() const;
  // Calls waiting in batches that no worker has taken yet.
  int64_t queued_parts() const;

 private:
  struct Entry {
    PredictionPart part;
    Done done;
  };
  // Snapshot, samples (0: eval) and interval.
  using Key = std::tuple<const Snapshot*, int, double>;
  struct Batch {
    Key key;
    std::chrono::steady_clock::time_point opened;
    std::vector<Entry> entries;
    int64_t rows = 0;
    bool closed = false;
    std::condition_variable full;
  };

  void RunBatch(const std::shared_ptr<Batch>& batch, ScheduledCall call);
  // Waits for the window (unless the batch filled up) and closes the batch to newcomers.
  void Close(const std::shared_ptr<Batch>& batch);

  CallScheduler* scheduler_;
  const Options options_;
  mutable std::mutex mu_;
  std::map<Key, std::shared_ptr<Batch>> open_;
  int64_t merged_calls_ = 0, merged_parts_ = 0;
};

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_BATCHER_H_
