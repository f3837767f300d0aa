#include "server/service/batcher.h"

#include <algorithm>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

#include "server/engine/network.h"
#include "server/engine/trainer.h"
#include "server/service/status.h"

namespace dropnet::service {

using engine::Matrix;

namespace {

bool Stopped(const PredictionPart& p) { return p.stopped && p.stopped(); }

// Rows x parameters x samples of the parts' merged call.
int64_t WorkOf(const std::vector<const PredictionPart*>& parts) {
  int64_t rows = 0;
  for (const auto* p : parts) rows += p->work.x.rows();
  const PreparedPrediction& first = parts.front()->work;
  const int64_t samples = first.monte_carlo ? first.options.samples : 1;
  return std::max<int64_t>(rows, 1) * first.snap->net.ParameterCount() * samples;
}

// Eval parts stacked into one engine call; when it fails, each part alone, so that an error is
// the one call's that causes it.
void ComputeEval(const std::vector<const PredictionPart*>& parts, int threads,
                 std::vector<Prediction>* outs, std::vector<std::exception_ptr>* errors) {
  std::vector<const PreparedPrediction*> work;
  for (const auto* p : parts) work.push_back(&p->work);
  try {
    *outs = ComputePredictions(work, threads, nullptr);
    return;
  } catch (...) {
    if (parts.size() == 1) {
      (*errors)[0] = std::current_exception();
      return;
    }
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    try {
      (*outs)[i] = std::move(ComputePredictions({work[i]}, threads, nullptr).front());
    } catch (...) {
      (*errors)[i] = std::current_exception();
    }
  }
}

}  // namespace

Batcher::Batcher(CallScheduler* scheduler, Options options)
    : scheduler_(scheduler), options_(options) {}

Batcher::~Batcher() {
  if (merged_calls_ == 0) return;
  auto log = spdlog::get("rpc");
  (log ? log : spdlog::default_logger())
      ->info("dynamic batching: {} merged calls held {} calls ({:.2f} a call)", merged_calls_,
             merged_parts_,
             static_cast<double>(merged_parts_) / static_cast<double>(merged_calls_));
}

bool Batcher::Accepts(const PreparedPrediction& work) const {
  const int64_t rows = work.x.rows();
  if (!enabled() || rows < 1 || rows > options_.max_rows) return false;
  // Monte-Carlo calls of a merged call run one at a time, each exactly as alone.
  return work.monte_carlo ? !work.options.keep_samples
                          : engine::RowsIndependentOfBatch(work.snap->net);
}

void Batcher::Add(PredictionPart part, Done done) {
  const PreparedPrediction& w = part.work;
  const Key key{w.snap, w.monte_carlo ? w.options.samples : 0,
                w.monte_carlo ? w.options.interval : 0.0};
  const int64_t rows = w.x.rows();
  // Before the call is published in open_: from then on others append to its batch's entries.
  const int64_t work = WorkOf({&part});
  auto fresh = std::make_shared<Batch>();
  {
    std::lock_guard lock(mu_);
    auto it = open_.find(key);
    if (it != open_.end()) {
      Batch& b = *it->second;
      if (b.rows + rows <= options_.max_rows) {
        b.entries.push_back(Entry{std::move(part), std::move(done)});
        b.rows += rows;
        if (b.rows >= options_.max_rows) {
          b.closed = true;
          b.full.notify_one();
          open_.erase(it);
        }
        return;
      }
      // Too full for this call: it runs as it is, and this call opens the next one.
      b.closed = true;
      b.full.notify_one();
      open_.erase(it);
    }
    fresh->opened = std::chrono::steady_clock::now();
    fresh->key = key;
    fresh->rows = rows;
    fresh->entries.push_back(Entry{std::move(part), std::move(done)});
    if (rows >= options_.max_rows)
      fresh->closed = true;
    else
      open_[key] = fresh;
  }
  if (scheduler_->Enqueue(work,
                          [this, fresh](const ScheduledCall& call) { RunBatch(fresh, call); }))
    return;
  // Refused: every call that joined meanwhile is told so.
  std::vector<Entry> refused;
  {
    std::lock_guard lock(mu_);
    auto it = open_.find(key);
    if (it != open_.end() && it->second == fresh) open_.erase(it);
    fresh->closed = true;
    refused = std::move(fresh->entries);
  }
  const auto busy = std::make_exception_ptr(
      ServiceError(grpc::StatusCode::RESOURCE_EXHAUSTED,
                   "the server is busy: " + std::to_string(scheduler_->max_queued()) +
                       " calls already wait for a worker"));
  for (auto& e : refused) e.done(busy, e.part, {});
}

void Batcher::Close(const std::shared_ptr<Batch>& batch) {
  std::unique_lock lock(mu_);
  batch->full.wait_until(lock, batch->opened + options_.window, [&] { return batch->closed; });
  if (batch->closed) return;
  batch->closed = true;
  auto it = open_.find(batch->key);
  if (it != open_.end() && it->second == batch) open_.erase(it);
}

void Batcher::RunBatch(const std::shared_ptr<Batch>& batch, ScheduledCall call) {
  Close(batch);
  // Closed: no call joins any more, and the entries are this worker's alone.
  std::vector<Entry> entries = std::move(batch->entries);
  const auto cancelled = [] {
    return std::make_exception_ptr(
        engine::Cancelled("the call was cancelled, or its deadline passed, before its answer"));
  };
  std::vector<Entry*> live;
  for (auto& e : entries) {
    if (Stopped(e.part))
      e.done(cancelled(), e.part, {});
    else
      live.push_back(&e);
  }
  if (!live.empty()) {
    std::vector<const PredictionPart*> parts;
    for (const auto* e : live) parts.push_back(&e->part);
    call.work = WorkOf(parts);
    {
      // Counted before any answer goes out, so that a caller who has its answer sees it counted.
      std::lock_guard lock(mu_);
      ++merged_calls_;
      merged_parts_ += static_cast<int64_t>(live.size());
    }
    const int threads = scheduler_->BeginCompute(call);
    std::vector<Prediction> outs(live.size());
    std::vector<std::exception_ptr> errors(live.size());
    const auto answer = [&](size_t i) {
      if (errors[i])
        live[i]->done(errors[i], live[i]->part, {});
      else if (Stopped(live[i]->part))
        live[i]->done(cancelled(), live[i]->part, {});
      else
        live[i]->done(nullptr, live[i]->part, std::move(outs[i]));
    };
    if (parts.front()->work.monte_carlo) {
      // One call after the other (prediction.h says why), each answered as soon as it is done and
      // each polling its own caller.
      for (size_t i = 0; i < parts.size(); ++i) {
        try {
          if (!Stopped(*parts[i])) {
            outs[i] = std::move(
                ComputePredictions({&parts[i]->work}, threads, parts[i]->stopped).front());
          }
        } catch (...) {
          errors[i] = std::current_exception();
        }
        answer(i);
      }
      scheduler_->EndCompute();
    } else {
      ComputeEval(parts, threads, &outs, &errors);
      scheduler_->EndCompute();
      for (size_t i = 0; i < live.size(); ++i) answer(i);
    }
  }
  scheduler_->Answered();
}

int64_t Batcher::merged_calls() const {
  std::lock_guard lock(mu_);
  return merged_calls_;
}

int64_t Batcher::merged_parts() const {
  std::lock_guard lock(mu_);
  return merged_parts_;
}

int64_t Batcher::queued_parts() const {
  std::lock_guard lock(mu_);
  int64_t n = 0;
  for (const auto& [key, batch] : open_) n += static_cast<int64_t>(batch->entries.size());
  return n;
}

}  // namespace dropnet::service
