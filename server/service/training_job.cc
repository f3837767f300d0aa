#include "server/service/training_job.h"

#include <chrono>
#include <cmath>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "server/service/handler_common.h"
#include "server/service/transform.h"

namespace dropnet::service {

using grpc::StatusCode;

namespace {
// The engine's kind that `table` maps the proto enum `value` to; INVALID_ARGUMENT naming the field
// for a value the table does not hold.
template <typename Kind, typename Proto>
Kind KindOf(Proto value, const char* field, std::initializer_list<std::pair<Proto, Kind>> table) {
  for (const auto& [proto, kind] : table) {
    if (proto == value) return kind;
  }
  Fail(StatusCode::INVALID_ARGUMENT,
       std::string(field) + " " + std::to_string(value) + " is unknown");
}
}  // namespace

engine::TrainOptions TrainOptionsFromRequest(const v1::TrainRequest& req, int threads) {
  engine::TrainOptions o;
  o.epochs = req.epochs() == 0 ? 10 : req.epochs();
  o.batch_size = req.batch_size() == 0 ? 128 : req.batch_size();
  using Opt = engine::OptimizerKind;
  o.optimizer.type = KindOf<Opt>(req.optimizer(), "optimizer",
                                 {{v1::OPTIMIZER_UNSPECIFIED, Opt::kAdam},
                                  {v1::OPTIMIZER_SGD, Opt::kSgd},
                                  {v1::OPTIMIZER_ADAM, Opt::kAdam},
                                  {v1::OPTIMIZER_ADAMW, Opt::kAdamW}});
  o.optimizer.learning_rate = req.learning_rate() != 0
                                  ? req.learning_rate()
                                  : (o.optimizer.type == engine::OptimizerKind::kSgd ? 0.01 : 1e-3);
  if (req.has_momentum()) o.optimizer.momentum = req.momentum();
  o.optimizer.nesterov = req.nesterov();
  o.optimizer.weight_decay = req.weight_decay();
  o.max_norm = req.max_norm();
  o.validation_split = req.validation_split();
  o.early_stopping_patience = req.early_stopping_patience();
  o.seed = req.seed();
  o.threads = threads;
  using Schedule = engine::ScheduleKind;
  o.schedule.type = KindOf<Schedule>(req.schedule(), "schedule",
                                     {{v1::SCHEDULE_UNSPECIFIED, Schedule::kConstant},
                                      {v1::SCHEDULE_CONSTANT, Schedule::kConstant},
                                      {v1::SCHEDULE_STEP, Schedule::kStep},
                                      {v1::SCHEDULE_COSINE, Schedule::kCosine}});

  if (req.schedule_step_epochs() != 0) o.schedule.step_epochs = req.schedule_step_epochs();
  if (req.schedule_gamma() != 0) o.schedule.gamma = req.schedule_gamma();
  if (req.report_every_steps() < 0) {
    Fail(StatusCode::INVALID_ARGUMENT, "report_every_steps must be >= 0");
  }
  engine::CheckTrainOptions(o);
  return o;
}

namespace {

// One training under its lease: the private network's rows and standardisation, the versions it
// publishes, the epoch history and the events it reports.
class TrainingJob {
 public:
  TrainingJob(const v1::TrainRequest& req, const engine::TrainOptions& options, SnapshotPtr base,
              std::vector<v1::EpochRecord> history, std::unique_ptr<Registry::TrainingLease> lease,
              const TrainSink& sink, ServiceMetrics* metrics)
      : req_(req),
        o_(options),
        base_(std::move(base)),
        lease_(std::move(lease)),
        sink_(sink),
        input_scale_(base_->input_scale),
        standardizer_(base_->standardizer),
        target_standardizer_(base_->target_standardizer),
        class_names_(base_->class_names),
        history_(std::move(history)),
        published_version_(base_->version),
        log_(Logger("train")),
        metrics_(metrics) {}

  // Trains on `data` (as stored: the job standardises a copy when it needs to).
  grpc::Status Run(const std::shared_ptr<const engine::Dataset>& data,
                   const std::function<bool()>& stop, const std::atomic<bool>& draining);

 private:
  // The rows the network trains on: `data`, or a copy standardised as the request asks.
  std::shared_ptr<const engine::Dataset> TrainingRows(
      const std::shared_ptr<const engine::Dataset>& data);
  // Publishes n as the next version; an epoch's record gets that version number too.
  int64_t Publish(const engine::Network& n, int64_t run_steps, const std::string& note,
                  bool epoch_record = false);
  v1::TrainEvent Event(v1::TrainEvent::Kind kind, const engine::TrainProgress& p) const;
  // The engine's progress callback, after `stop` was polled.
  void OnProgress(const engine::TrainProgress& p, const engine::Network& current);
  // Publishes what the run left to publish and reports how it ended.
  grpc::Status Finish(const engine::Network& net, const engine::TrainResult& result,
                      const engine::TrainProgress& start, bool draining);

  const v1::TrainRequest& req_;
  const engine::TrainOptions o_;
  const SnapshotPtr base_;
  const std::unique_ptr<Registry::TrainingLease> lease_;
  const TrainSink& sink_;
  float input_scale_;
  engine::Standardizer standardizer_;
  engine::Standardizer target_standardizer_;
  // The class names every version of this run carries: the data set's, when it names its classes.
  std::vector<std::string> class_names_;
  std::vector<v1::EpochRecord> history_;
  int64_t published_version_;
  int64_t published_steps_ = 0;
  std::chrono::steady_clock::time_point run_start_;
  std::shared_ptr<spdlog::logger> log_;
  ServiceMetrics* metrics_;
};

grpc::Status TrainingJob::Run(const std::shared_ptr<const engine::Dataset>& data,
                              const std::function<bool()>& stop,
                              const std::atomic<bool>& draining) {
  engine::Network net = base_->net;  // the private copy that trains
  const std::shared_ptr<const engine::Dataset> train_data = TrainingRows(data);
  if (base_->task == engine::Task::kClassification && !data->class_names.empty()) {
    class_names_ = data->class_names;
  }
  run_start_ = std::chrono::steady_clock::now();
  std::atomic<bool>& cancel = lease_->cancel();
  engine::TrainProgress start;
  start.epochs = o_.epochs;
  {
    const int64_t n = static_cast<int64_t>(
        std::llround(static_cast<double>(data->rows()) * (1.0 - o_.validation_split)));
    const int64_t batch = std::min<int64_t>(o_.batch_size, std::max<int64_t>(n, 1));
    start.total_steps = (n + batch - 1) / batch * o_.epochs;
  }
  if (!sink_(Event(v1::TrainEvent::KIND_STARTED, start))) cancel = true;
  log_->info("model {} training on '{}' from version {}: {} epochs, batch {}, {} lr {}",
             req_.model(), req_.dataset(), base_->version, o_.epochs, o_.batch_size,
             engine::OptimizerName(o_.optimizer.type), o_.optimizer.learning_rate);

  engine::TrainResult result;
  try {
    result = engine::Train(
        &net, base_->task, base_->loss, *train_data, o_,
        [&](const engine::TrainProgress& p, const engine::Network& current) {
          if (stop()) cancel = true;
          OnProgress(p, current);
        },
        &cancel);
  } catch (const ServiceError& e) {
    // A failed save leaves the previous version served; say which.
    throw ServiceError(e.code(), std::string(e.what()) + "; version " +
                                     std::to_string(published_version_) + " is still served");
  }
  return Finish(net, result, start, draining.load());
}

std::shared_ptr<const engine::Dataset> TrainingJob::TrainingRows(
    const std::shared_ptr<const engine::Dataset>& data) {
  input_scale_ = data->input_scale;
  const bool regression = base_->task == engine::Task::kRegression;
  if (req_.standardize()) {
    engine::Dataset fit_rows, unused;
    engine::TrainValidationSplit(*data, o_, &fit_rows, &unused);
    if (input_scale_ != 1.0f) fit_rows.x *= input_scale_;
    standardizer_ = engine::Standardizer::Fit(fit_rows.x);
    if (regression) target_standardizer_ = engine::Standardizer::Fit(fit_rows.y);
  }
  const bool scale_targets = regression && !target_standardizer_.empty();
  if (standardizer_.empty() && input_scale_ == 1.0f && !scale_targets) return data;
  auto copy = std::make_shared<engine::Dataset>(*data);
  if (input_scale_ != 1.0f) copy->x *= input_scale_;
  copy->input_scale = 1.0f;
  standardizer_.Apply(&copy->x);
  if (scale_targets) StandardizeTargets(target_standardizer_, &copy->y);
  return copy;
}

int64_t TrainingJob::Publish(const engine::Network& n, int64_t run_steps, const std::string& note,
                             bool epoch_record) {
  auto next = std::make_shared<Snapshot>(n);
  next->model = base_->model;
  next->spec = base_->spec;
  next->task = base_->task;
  next->loss = base_->loss;
  next->tau = base_->tau;
  next->input_scale = input_scale_;
  next->standardizer = standardizer_;
  next->target_standardizer = target_standardizer_;
  next->class_names = class_names_;
  next->steps = base_->steps + run_steps;
  next->note = note;
  published_version_ =
      lease_->Publish(std::move(next), epoch_record ? &history_.back() : nullptr)->version;
  published_steps_ = run_steps;
  return published_version_;
}

v1::TrainEvent TrainingJob::Event(v1::TrainEvent::Kind kind, const engine::TrainProgress& p) const {
  v1::TrainEvent e;
  e.set_kind(kind);
  e.set_epoch(p.epoch);
  e.set_epochs(o_.epochs);
  e.set_step(p.step);
  e.set_total_steps(p.total_steps);
  e.set_loss(p.loss);
  e.set_metric(p.metric);
  e.set_val_loss(p.val_loss);
  e.set_val_metric(p.val_metric);
  e.set_samples_per_second(p.samples_per_second);
  e.set_learning_rate(p.learning_rate);
  e.set_version(published_version_);
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start_).count();
  if (p.step > 0) {
    e.set_eta_seconds(elapsed / static_cast<double>(p.step) *
                      static_cast<double>(p.total_steps - p.step));
  }
  return e;
}

void TrainingJob::OnProgress(const engine::TrainProgress& raw, const engine::Network& current) {
  std::atomic<bool>& cancel = lease_->cancel();
  // RMSE in the target's units when the model learns one standardised target column.
  engine::TrainProgress p = raw;
  if (base_->task == engine::Task::kRegression && target_standardizer_.scale.size() == 1) {
    p.metric *= target_standardizer_.scale(0);
    p.val_metric *= target_standardizer_.scale(0);
  }
  if (p.end_of_epoch) {
    v1::EpochRecord rec;
    rec.set_epoch(static_cast<int32_t>(history_.size()) + 1);
    rec.set_loss(p.loss);
    rec.set_metric(p.metric);
    rec.set_val_loss(p.val_loss);
    rec.set_val_metric(p.val_metric);
    rec.set_samples_per_second(p.samples_per_second);
    rec.set_dataset(req_.dataset());
    history_.push_back(rec);
    Publish(current, p.step, "epoch " + std::to_string(rec.epoch()), true);
    if (metrics_) metrics_->ObserveEpoch(req_.model());
    log_->info("model {} epoch {}/{} loss {:.4f} metric {:.4f} -> version {}", req_.model(),
               p.epoch, p.epochs, p.loss, p.metric, published_version_);
    if (!sink_(Event(v1::TrainEvent::KIND_EPOCH, p))) cancel = true;
  } else if (req_.report_every_steps() > 0 && p.step % req_.report_every_steps() == 0) {
    if (!sink_(Event(v1::TrainEvent::KIND_STEP, p))) cancel = true;
  }
}

grpc::Status TrainingJob::Finish(const engine::Network& net, const engine::TrainResult& result,
                                 const engine::TrainProgress& start, bool draining) {
  if (result.cancelled) {
    if (draining) {
      // Shutting down: keep the work of the unfinished epoch as a version of its own (when a
      // step ran since the last epoch), and say UNAVAILABLE even at an epoch boundary.
      if (result.steps > published_steps_) {
        Publish(net, result.steps, "interrupted at step " + std::to_string(result.steps));
      }
      log_->info("model {} training interrupted by shutdown, saved as version {}", req_.model(),
                 published_version_);
      return grpc::Status(StatusCode::UNAVAILABLE,
                          "the server is shutting down; training saved as version " +
                              std::to_string(published_version_));
    }
    log_->info("model {} training cancelled, version {} kept", req_.model(), published_version_);
    return grpc::Status(StatusCode::CANCELLED, "training cancelled; version " +
                                                   std::to_string(published_version_) + " kept");
  }
  if (result.early_stopped) {
    Publish(net, result.steps,
            "early stopping: epoch " + std::to_string(result.best_epoch) + " of the run restored");
  }
  engine::TrainProgress last = result.history.empty() ? start : result.history.back();
  v1::TrainEvent done = Event(v1::TrainEvent::KIND_FINISHED, last);
  done.set_early_stopped(result.early_stopped);
  done.set_eta_seconds(0);
  sink_(done);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status RunTraining(const TrainingEnvironment& env, const v1::TrainRequest& req,
                         const TrainSink& sink, const std::function<bool()>& stop) {
  ReleaseFreeMemoryOnExit release;  // the private network, optimizer state and rows, once freed
  auto start_snap = env.registry->Newest(req.model());
  const auto data_entry = env.registry->GetDataset(req.dataset());
  CheckDataFits(*start_snap, *data_entry.data, req.dataset());
  engine::TrainOptions o = TrainOptionsFromRequest(req, env.threads);

  auto lease = env.registry->BeginTraining(req.model(), env.max_concurrent_trainings);
  // Take the model again under the lease: nothing can publish between here and the end.
  // Training continues from the newest version, whatever label is served.
  SnapshotPtr base = env.registry->Newest(req.model());
  o.first_step = base->steps;
  TrainingJob job(req, o, std::move(base), env.registry->History(req.model()), std::move(lease),
                  sink, env.metrics);
  return job.Run(data_entry.data, stop, *env.draining);
}

}  // namespace dropnet::service
