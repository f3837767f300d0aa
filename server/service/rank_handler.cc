// RankDataset: Monte-Carlo dropout over a stored data set, batch by batch, keeping the top K rows
// of a criterion in a heap, so that the call holds one batch and K rows whatever the data set's
// size (the rows themselves are the registry's, shared with every call that reads them).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <string>
#include <vector>

#include "server/engine/mc.h"
#include "server/service/handler_common.h"
#include "server/service/prediction.h"
#include "server/service/transform.h"

namespace dropnet::service {

using engine::Matrix;
using grpc::StatusCode;

namespace {

constexpr int kDefaultRankBatch = 256;
constexpr auto kProgressInterval = std::chrono::milliseconds(100);

struct RankedRow {
  float score = 0;
  int64_t index = 0;
  int32_t predicted_class = 0;
};

// Best first: the highest score (the smallest for margin), equal scores in row order, NaN last.
class BestFirst {
 public:
  explicit BestFirst(bool smallest_first) : smallest_first_(smallest_first) {}
  bool operator()(const RankedRow& a, const RankedRow& b) const {
    const bool a_nan = std::isnan(a.score), b_nan = std::isnan(b.score);
    if (a_nan != b_nan) return b_nan;
    if (!a_nan && a.score != b.score) {
      return smallest_first_ ? a.score < b.score : a.score > b.score;
    }
    return a.index < b.index;
  }

 private:
  bool smallest_first_;
};

// The best `k` rows of those offered, in a heap whose front is the worst kept.
class TopK {
 public:
  TopK(int64_t k, BestFirst order) : k_(static_cast<size_t>(k)), order_(order) {
    heap_.reserve(k_);
  }
  void Offer(const RankedRow& row) {
    if (heap_.size() < k_) {
      heap_.push_back(row);
      std::push_heap(heap_.begin(), heap_.end(), order_);
    } else if (order_(row, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), order_);
      heap_.back() = row;
      std::push_heap(heap_.begin(), heap_.end(), order_);
    }
  }
  // The rows kept, best first.
  std::vector<RankedRow> Take() {
    std::sort_heap(heap_.begin(), heap_.end(), order_);
    return std::move(heap_);
  }

 private:
  size_t k_;
  BestFirst order_;
  std::vector<RankedRow> heap_;
};

v1::RankCriterion CheckCriterion(v1::RankCriterion c) {
  switch (c) {
    case v1::RANK_CRITERION_UNSPECIFIED:
      return v1::RANK_CRITERION_MUTUAL_INFORMATION;
    case v1::RANK_CRITERION_MUTUAL_INFORMATION:
    case v1::RANK_CRITERION_ENTROPY:
    case v1::RANK_CRITERION_VARIATION_RATIO:
    case v1::RANK_CRITERION_MARGIN:
      return c;
    default:
      Fail(StatusCode::INVALID_ARGUMENT, "criterion " + std::to_string(c) + " is unknown");
  }
}

// Row r's score under `c`: the PredictUncertainty field of that name, or the margin between the
// two largest mean probabilities.
float Score(const engine::McResult& m, int64_t r, v1::RankCriterion c) {
  switch (c) {
    case v1::RANK_CRITERION_ENTROPY:
      return m.predictive_entropy[r];
    case v1::RANK_CRITERION_VARIATION_RATIO:
      return m.variation_ratio[r];
    case v1::RANK_CRITERION_MARGIN: {
      float first = -INFINITY, second = -INFINITY;
      for (int64_t j = 0; j < m.mean.cols(); ++j) {
        const float p = m.mean(r, j);
        if (p > first) {
          second = first;
          first = p;
        } else if (p > second) {
          second = p;
        }
      }
      return m.mean.cols() < 2 ? first : first - second;
    }
    default:
      return m.mutual_information[r];
  }
}

}  // namespace

void DropnetService::ComputeOnWorker(grpc::ServerContextBase* ctx, CallLog& log,
                                     const std::function<void(int threads)>& body) {
  std::promise<std::exception_ptr> finished;
  std::future<std::exception_ptr> result = finished.get_future();
  // While it waits for the worker, the call counts once: as a scheduled call.
  sync_in_flight_.fetch_sub(1, std::memory_order_relaxed);
  const bool scheduled = scheduler_.Schedule(/*work=*/-1, [&](const ScheduledCall& call) {
    std::exception_ptr error;
    if (ctx->IsCancelled()) {
      error = std::make_exception_ptr(
          ServiceError(StatusCode::CANCELLED, "the call was cancelled while it waited"));
    } else if (DeadlinePassed(ctx)) {
      error = std::make_exception_ptr(ServiceError(
          StatusCode::DEADLINE_EXCEEDED, "the deadline passed while the call waited for a worker"));
    } else {
      log.threads = scheduler_.BeginCompute(call);
      try {
        body(log.threads);
      } catch (...) {
        error = std::current_exception();
      }
      scheduler_.EndCompute();
    }
    scheduler_.Answered();
    finished.set_value(error);
  });
  const std::exception_ptr error = scheduled ? result.get() : nullptr;
  sync_in_flight_.fetch_add(1, std::memory_order_relaxed);
  if (!scheduled) {
    Fail(StatusCode::RESOURCE_EXHAUSTED,
         "the server is busy: " + std::to_string(scheduler_.max_queued()) +
             " calls already wait for a worker");
  }
  if (error) std::rethrow_exception(error);
}

grpc::Status DropnetService::RankDataset(grpc::ServerContext* ctx,
                                         const v1::RankDatasetRequest* req,
                                         grpc::ServerWriter<v1::RankEvent>* writer) {
  return Handle("RankDataset", ctx, Role::kPredict, [&](CallLog& log) {
    ReleaseFreeMemoryOnExit release;
    log.model = req->model();
    log.mode = "monte_carlo";
    const v1::RankCriterion criterion = CheckCriterion(req->criterion());
    if (req->top_k() <= 0) {
      Fail(StatusCode::INVALID_ARGUMENT,
           "top_k must be positive, got " + std::to_string(req->top_k()));
    }
    if (req->batch_size() < 0 || req->batch_size() > config_.max_batch_rows) {
      Fail(StatusCode::INVALID_ARGUMENT, "batch_size must be in [0, " +
                                             std::to_string(config_.max_batch_rows) + "], got " +
                                             std::to_string(req->batch_size()));
    }
    SnapshotPtr snap = registry_->Resolve(req->model(), req->version());
    log.version = snap->version;
    if (snap->task != engine::Task::kClassification) {
      Fail(StatusCode::FAILED_PRECONDITION,
           "model '" + snap->model +
               "' is a regression model: RankDataset ranks the rows of classifiers only");
    }
    PredictionQuery q;
    q.monte_carlo = true;
    q.samples = req->samples();
    if (req->has_seed()) q.seed = req->seed();
    q.instead = "Predict";
    const auto stop_asked = [ctx] { return ctx->IsCancelled() || DeadlinePassed(ctx); };
    engine::McOptions mo = MonteCarloOptions(q, config_, *snap, 1, stop_asked);
    log.samples = mo.samples;
    const auto entry = registry_->GetDataset(req->dataset());
    const engine::Dataset& data = *entry.data;
    if (data.x.cols() != snap->net.input_shape().Size()) {
      Fail(StatusCode::INVALID_ARGUMENT,
           "data set '" + req->dataset() + "' has " + std::to_string(data.x.cols()) +
               " features per row, model '" + snap->model + "' expects " +
               std::to_string(snap->net.input_shape().Size()));
    }
    const int64_t rows = data.rows();
    if (rows == 0) Fail(StatusCode::INVALID_ARGUMENT, "data set '" + req->dataset() + "' is empty");
    log.rows = rows;
    const int64_t batch = req->batch_size() > 0
                              ? req->batch_size()
                              : std::min<int64_t>(kDefaultRankBatch, config_.max_batch_rows);
    TopK top(std::min<int64_t>(req->top_k(), rows),
             BestFirst(criterion == v1::RANK_CRITERION_MARGIN));
    ComputeOnWorker(ctx, log, [&](int threads) {
      mo.threads = threads;
      auto last_progress = std::chrono::steady_clock::now();
      ForEachBatch(
          "RankDataset", rows, batch, stop_asked, &draining_,
          [&](int64_t r0, int64_t n) {
            const engine::McResult r = engine::MonteCarloPredict(
                snap->net, snap->task, snap->loss, DatasetInputs(*snap, data, r0, n), mo);
            for (int64_t i = 0; i < n; ++i) {
              top.Offer({Score(r, i, criterion), r0 + i, r.predicted_class[i]});
            }
          },
          [&](int64_t done) {
            const auto now = std::chrono::steady_clock::now();
            if (done < rows && now - last_progress < kProgressInterval) return;
            last_progress = now;
            v1::RankEvent event;
            event.mutable_progress()->set_rows_done(done);
            event.mutable_progress()->set_rows_total(rows);
            if (!writer->Write(event)) {
              throw engine::Cancelled("RankDataset stopped: the client went away");
            }
          });
    });
    v1::RankEvent event;
    v1::RankResult* out = event.mutable_result();
    for (const RankedRow& row : top.Take()) {
      out->add_indices(row.index);
      out->add_scores(row.score);
      out->add_predicted_class(row.predicted_class);
    }
    out->set_criterion(criterion);
    out->set_version(snap->version);
    out->set_samples(mo.samples);
    out->set_seed(mo.seed);
    out->set_batch_size(static_cast<int32_t>(batch));
    out->set_rows(rows);
    for (const auto& c : snap->class_names) out->add_class_names(c);
    if (!writer->Write(event)) Fail(StatusCode::CANCELLED, "the client went away");
    return grpc::Status::OK;
  });
}

}  // namespace dropnet::service
