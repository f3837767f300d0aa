// Evaluate and EvaluateStream: a stored, labelled data set scored in eval mode or with
// Monte-Carlo dropout. Both run one Evaluation, batch by batch (ForEachBatch, handler_common.h):
// the unary call on a worker of the scheduler, the stream on a gRPC thread that waits while a
// worker computes and sends a progress event after every batch. So both answer the same numbers,
// bit for bit, for the same request, seed and version.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "server/engine/mc.h"
#include "server/engine/metrics.h"
#include "server/service/handler_common.h"
#include "server/service/prediction.h"
#include "server/service/transform.h"

namespace dropnet::service {

using engine::Matrix;
using grpc::StatusCode;

namespace {

constexpr int64_t kEvalBatch = 8192;  // eval mode: rows a batch
constexpr int64_t kMcBatch = 256;     // Monte Carlo: rows a batch

void AddReliability(const std::vector<engine::ReliabilityBin>& bins, v1::EvaluateResponse* resp) {
  for (const auto& b : bins) {
    v1::ReliabilityBin* out = resp->add_reliability();
    out->set_lower(b.lower);
    out->set_upper(b.upper);
    out->set_count(b.count);
    out->set_confidence(b.confidence);
    out->set_accuracy(b.accuracy);
  }
}

std::string ModeOf(v1::EvalMode m) {
  return m == v1::EVAL_MODE_MONTE_CARLO ? "monte_carlo" : "eval";
}

// One Evaluate request: checked and resolved (model version, data set, T) when it is built, so
// that a bad request fails before it waits for a worker; computed by Run.
class Evaluation {
 public:
  // `method` names the call in the message of a cancelled call.
  Evaluation(const char* method, const v1::EvaluateRequest& req, const Registry& registry,
             const ServiceConfig& config, const std::function<bool()>& stop_asked,
             DropnetService::CallLog& log)
      : method_(method), stop_asked_(stop_asked) {
    log.model = req.model();
    log.mode = ModeOf(req.mode());
    snap_ = registry.Resolve(req.model(), req.version());
    log.version = snap_->version;
    entry_ = registry.GetDataset(req.dataset());
    CheckDataFits(*snap_, *entry_.data, req.dataset());
    if (req.limit() < 0) {
      Fail(StatusCode::INVALID_ARGUMENT, "limit must be >= 0, got " + std::to_string(req.limit()));
    }
    if (req.mode() != v1::EVAL_MODE_UNSPECIFIED && req.mode() != v1::EVAL_MODE_EVAL &&
        req.mode() != v1::EVAL_MODE_MONTE_CARLO) {
      Fail(StatusCode::INVALID_ARGUMENT, "mode " + std::to_string(req.mode()) + " is unknown");
    }
    rows_ = req.limit() > 0 ? std::min(req.limit(), entry_.data->rows()) : entry_.data->rows();
    if (rows_ == 0) Fail(StatusCode::INVALID_ARGUMENT, "data set '" + req.dataset() + "' is empty");
    log.rows = rows_;
    mc_ = req.mode() == v1::EVAL_MODE_MONTE_CARLO;
    if (mc_) {
      PredictionQuery q;
      q.monte_carlo = true;
      q.samples = req.samples();
      if (req.has_seed()) q.seed = req.seed();
      q.instead = "Evaluate in eval mode";
      mo_ = MonteCarloOptions(q, config, *snap_, 1, stop_asked);
      log.samples = mo_.samples;
    }
  }

  // The rows scored: the data set's, or the request's limit.
  int64_t rows() const { return rows_; }

  // Computes on `threads` engine threads, batch by batch (progress(rows_done) after each, when
  // given), and fills `resp`. Throws engine::Cancelled between batches (and Monte-Carlo chunks)
  // once stop_asked answers true. A call that is running when the server starts draining goes on
  // through the shutdown grace period.
  void Run(int threads, const std::function<void(int64_t rows_done)>& progress,
           v1::EvaluateResponse* resp) {
    const bool classify = snap_->task == engine::Task::kClassification;
    const Matrix x = DatasetInputs(*snap_, *entry_.data, rows_);
    const Matrix y = entry_.data->y.topRows(rows_);
    // A regression model with a target standardisation answers in the target's units; the MC
    // log-likelihood is computed on standardised targets and gets the Jacobian term.
    const engine::Standardizer& target = snap_->target_standardizer;
    Matrix y_net = y;
    if (!classify) StandardizeTargets(target, &y_net);
    Matrix mean, var;
    double ll_sum = 0;
    if (!mc_) {
      ForEachBatch(
          method_, rows_, kEvalBatch, stop_asked_, /*draining=*/nullptr,
          [&](int64_t r0, int64_t n) {
            Matrix batch_var;
            const Matrix batch_mean =
                engine::PredictEval(snap_->net, snap_->task, snap_->loss, x.middleRows(r0, n),
                                    threads, nullptr, nullptr, &batch_var);
            if (r0 == 0) {
              mean.resize(rows_, batch_mean.cols());
              var.resize(batch_var.size() ? rows_ : 0, batch_var.cols());
            }
            mean.middleRows(r0, n) = batch_mean;
            if (var.rows() == rows_ && batch_var.rows() == n) var.middleRows(r0, n) = batch_var;
          },
          progress);
    } else {
      mo_.threads = threads;
      const bool want_ll =
          !classify && (snap_->tau > 0 || snap_->loss == engine::LossKind::kGaussianNll);
      ForEachBatch(
          method_, rows_, kMcBatch, stop_asked_, /*draining=*/nullptr,
          [&](int64_t r0, int64_t n) {
            const Matrix yb = y_net.middleRows(r0, n);
            mo_.targets = want_ll ? &yb : nullptr;
            auto r = engine::MonteCarloPredict(snap_->net, snap_->task, snap_->loss,
                                               x.middleRows(r0, n), mo_);
            mo_.targets = nullptr;
            if (!classify) UnstandardizeMc(target, &r);
            if (r0 == 0) mean.resize(rows_, r.mean.cols());
            mean.middleRows(r0, n) = r.mean;
            if (want_ll) ll_sum += r.log_likelihood.sum();
          },
          progress);
      resp->set_samples(mo_.samples);
      resp->set_seed(mo_.seed);
      if (want_ll) {
        resp->set_log_likelihood(ll_sum / static_cast<double>(rows_ * y.cols()));
      } else if (!classify) {
        resp->set_log_likelihood(std::nan(""));
      }
    }
    Score(mean, y, std::move(var), resp);
  }

 private:
  // The metrics of the outputs `mean` (and eval mode's variances `var`) against the targets `y`.
  void Score(Matrix& mean, const Matrix& y, Matrix var, v1::EvaluateResponse* resp) const {
    if (snap_->task == engine::Task::kClassification) {
      auto m = engine::ScoreClassification(mean, y);
      resp->set_accuracy(m.accuracy);
      resp->set_nll(m.nll);
      resp->set_brier(m.brier);
      resp->set_ece(m.ece);
      AddReliability(m.reliability, resp);
    } else {
      const engine::Standardizer& target = snap_->target_standardizer;
      double tau = snap_->tau;
      if (!mc_ && !target.empty()) {
        // Eval mode's variances (a Gaussian head's, or 1/tau) in the target's units.
        if (var.size() == 0 && tau > 0) var = Matrix::Constant(rows_, mean.cols(), 1.0f / tau);
        UnstandardizeOutputs(target, &mean, &var);
        tau = 0;
      }
      auto m = engine::ScoreRegression(mean, y, var, tau);
      resp->set_rmse(m.rmse);
      if (!mc_) resp->set_log_likelihood(m.log_likelihood);
    }
    resp->set_rows(rows_);
    resp->set_version(snap_->version);
    resp->set_mode(mc_ ? v1::EVAL_MODE_MONTE_CARLO : v1::EVAL_MODE_EVAL);
    resp->set_task(ToProto(snap_->task));
  }

  const char* method_;
  std::function<bool()> stop_asked_;
  SnapshotPtr snap_;
  StoredDatasetEntry entry_;
  int64_t rows_ = 0;
  bool mc_ = false;
  engine::McOptions mo_;
};

}  // namespace

grpc::ServerUnaryReactor* DropnetService::Evaluate(grpc::CallbackServerContext* ctx,
                                                   const v1::EvaluateRequest* req,
                                                   v1::EvaluateResponse* resp) {
  return Queue("Evaluate", ctx, Role::kPredict, /*work=*/-1, [this, ctx, req, resp](CallLog& log) {
    ReleaseFreeMemoryOnExit release;  // the data set's rows and the outputs, once freed
    Evaluation evaluation(
        "Evaluate", *req, *registry_, config_,
        [ctx] { return ctx->IsCancelled() || DeadlinePassed(ctx); }, log);
    evaluation.Run(log.threads, {}, resp);
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::EvaluateStream(grpc::ServerContext* ctx,
                                            const v1::EvaluateRequest* req,
                                            grpc::ServerWriter<v1::EvaluateEvent>* writer) {
  return Handle("EvaluateStream", ctx, Role::kPredict, [&](CallLog& log) {
    ReleaseFreeMemoryOnExit release;
    Evaluation evaluation(
        "EvaluateStream", *req, *registry_, config_,
        [ctx] { return ctx->IsCancelled() || DeadlinePassed(ctx); }, log);
    v1::EvaluateEvent last;
    ComputeOnWorker(ctx, log, [&](int threads) {
      const auto start = std::chrono::steady_clock::now();
      evaluation.Run(
          threads,
          [&](int64_t done) {
            v1::EvaluateEvent event;
            v1::EvaluateEvent::Progress* p = event.mutable_progress();
            p->set_rows_done(done);
            p->set_rows_total(evaluation.rows());
            p->set_elapsed_seconds(
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
            if (!writer->Write(event)) {
              throw engine::Cancelled("EvaluateStream stopped: the client went away");
            }
          },
          last.mutable_result());
    });
    if (!writer->Write(last)) Fail(StatusCode::CANCELLED, "the client went away");
    return grpc::Status::OK;
  });
}

}  // namespace dropnet::service
