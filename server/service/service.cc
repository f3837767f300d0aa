#include "server/service/service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>

#include <spdlog/spdlog.h>

#include "server/engine/mc.h"
#include "server/engine/random.h"
#include "server/service/handler_common.h"
#include "server/service/prediction.h"
#include "server/service/request_wire.h"
#include "server/service/transform.h"

namespace dropnet::service {

using engine::Matrix;
using grpc::StatusCode;

namespace {

// A Predict or PredictUncertainty call: its request, read from its bytes (request_wire.h), and its
// answer, serialised by the call's body when it succeeds.
template <typename Request, typename Response>
struct WireCall {
  Request request;  // all but the inputs
  WireTensor inputs;
  bool parsed = false;
  Response response;

  // Throws for a request that was not a valid message; the call's body checks this first, after
  // the call's token.
  void CheckParsed() const {
    if (!parsed) {
      Fail(StatusCode::INVALID_ARGUMENT,
           "the request is not a valid " + Request::descriptor()->full_name() + " message");
    }
  }
};

grpc::Status SerializeResponse(const google::protobuf::Message& response, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  return grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(response, out,
                                                                                    &own_buffer);
}

// The version GetModel and ListModels describe: the one served by default, or the newest when
// that cannot be loaded (a corrupt labelled version), so that the model's state stays visible.
SnapshotPtr SnapshotToDescribe(const Registry& registry, const std::string& name) {
  try {
    return registry.Get(name);
  } catch (const ServiceError& e) {
    if (e.code() == StatusCode::NOT_FOUND) throw;
    return registry.Newest(name);
  }
}

// A call's prediction computed alone, polling its caller between Monte-Carlo chunks.
Prediction RunPrepared(const PredictionPart& part, int threads) {
  return std::move(ComputePredictions({&part.work}, threads, part.stopped).front());
}

// The answer of a PredictUncertainty call from its statistics.
grpc::Status RespondUncertainty(const Snapshot& snap, const Prediction& p,
                                v1::PredictUncertaintyResponse* resp, grpc::ByteBuffer* out) {
  const engine::McResult& r = p.mc;
  const engine::McOptions& mo = p.options;
  ToTensor(r.mean, resp->mutable_mean());
  ToTensor(r.stddev, resp->mutable_stddev());
  if (snap.task == engine::Task::kClassification) {
    auto add = [](const Eigen::VectorXf& v, google::protobuf::RepeatedField<float>* field) {
      field->Add(v.data(), v.data() + v.size());
    };
    add(r.predictive_entropy, resp->mutable_predictive_entropy());
    add(r.expected_entropy, resp->mutable_expected_entropy());
    add(r.mutual_information, resp->mutable_mutual_information());
    add(r.variation_ratio, resp->mutable_variation_ratio());
    resp->mutable_predicted_class()->Add(r.predicted_class.begin(), r.predicted_class.end());
    for (const auto& c : snap.class_names) resp->add_class_names(c);
  } else {
    ToTensor(r.total_variance, resp->mutable_total_variance());
    ToTensor(r.lower, resp->mutable_lower());
    ToTensor(r.upper, resp->mutable_upper());
  }
  if (mo.keep_samples) {
    auto* t = resp->mutable_samples();
    const int64_t cols = r.sample_outputs.empty() ? 0 : r.sample_outputs[0].cols();
    t->add_shape(mo.samples);
    t->add_shape(p.rows);
    t->add_shape(cols);
    for (const auto& m : r.sample_outputs) t->mutable_values()->Add(m.data(), m.data() + m.size());
  }
  resp->set_num_samples(mo.samples);
  resp->set_seed(mo.seed);
  resp->set_version(snap.version);
  resp->set_task(ToProto(snap.task));
  return SerializeResponse(*resp, out);
}

}  // namespace

DropnetService::DropnetService(Registry* registry, ServiceConfig config, const TokenAuth* auth,
                               ServiceMetrics* metrics)
    : registry_(registry),
      auth_(auth),
      metrics_(metrics),
      config_(std::move(config)),
      batcher_(
          &scheduler_,
          Batcher::Options{std::chrono::microseconds(std::max<int64_t>(0, config_.batch_window_us)),
                           std::max<int64_t>(1, config_.batch_max_rows)}),
      scheduler_(config_.compute_threads, config_.workers, config_.max_queued_calls) {}

void DropnetService::StartDraining() {
  draining_ = true;
  registry_->CancelAllTraining();
}

grpc::Status DropnetService::RunQueued(
    const char* method, int64_t work,
    const std::function<grpc::Status(int threads, CallLog&)>& body) {
  CallLog log{method};
  std::promise<grpc::Status> answered;
  std::future<grpc::Status> answer = answered.get_future();
  const bool scheduled = scheduler_.Schedule(work, [&](const ScheduledCall& call) {
    grpc::Status status;
    if (draining_) {
      status = grpc::Status(StatusCode::UNAVAILABLE, "the server is shutting down");
    } else {
      log.threads = scheduler_.BeginCompute(call);
      try {
        status = body(log.threads, log);
      } catch (...) {
        status = ToStatus(std::current_exception());
      }
      scheduler_.EndCompute();
    }
    scheduler_.Answered();
    answered.set_value(BoundedMessage(status));
  });
  const grpc::Status status =
      scheduled ? answer.get()
                : grpc::Status(StatusCode::RESOURCE_EXHAUSTED,
                               "the server is busy: " + std::to_string(scheduler_.max_queued()) +
                                   " calls already wait for a worker");
  log.Finish(status);
  return status;
}

// ---- Models ----

grpc::Status DropnetService::CreateModel(grpc::ServerContext* ctx,
                                         const v1::CreateModelRequest* req,
                                         v1::CreateModelResponse* resp) {
  return Handle("CreateModel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    if (!req->has_spec()) Fail(StatusCode::INVALID_ARGUMENT, "spec is required");
    auto snap = registry_->Create(req->name(), req->spec(),
                                  ModelOptions{req->serving_label(), req->keep_versions()});
    snap = registry_->Get(req->name());
    log.version = snap->version;
    registry_->Describe(*snap, resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::GetModel(grpc::ServerContext* ctx, const v1::GetModelRequest* req,
                                      v1::GetModelResponse* resp) {
  return Handle("GetModel", ctx, Role::kPredict, [&](CallLog& log) {
    log.model = req->name();
    auto snap = SnapshotToDescribe(*registry_, req->name());
    log.version = snap->version;
    registry_->Describe(*snap, resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest* req,
                                        v1::ListModelsResponse* resp) {
  return Handle("ListModels", ctx, Role::kPredict, [&](CallLog&) {
    constexpr int kDefaultPage = 100, kMaxPage = 1000;
    if (req->page_size() < 0 || req->page_size() > kMaxPage) {
      Fail(StatusCode::INVALID_ARGUMENT, "page_size must be in [0, " + std::to_string(kMaxPage) +
                                             "], got " + std::to_string(req->page_size()));
    }
    const int page = req->page_size() == 0 ? kDefaultPage : req->page_size();
    // The token is the last name of the previous page: the next page starts after it, whatever
    // was created or deleted meanwhile.
    if (!req->page_token().empty()) CheckName("page_token", req->page_token());
    const auto names = registry_->ModelNames();  // sorted
    auto it = std::upper_bound(names.begin(), names.end(), req->page_token());
    for (; it != names.end() && resp->models_size() < page; ++it) {
      try {
        registry_->Describe(*SnapshotToDescribe(*registry_, *it), resp->add_models());
      } catch (const ServiceError&) {
        resp->mutable_models()->RemoveLast();  // deleted meanwhile
      }
    }
    if (it != names.end() && resp->models_size() > 0) {
      resp->set_next_page_token(resp->models(resp->models_size() - 1).name());
    }
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::SetVersionLabel(grpc::ServerContext* ctx,
                                             const v1::SetVersionLabelRequest* req,
                                             v1::SetVersionLabelResponse* resp) {
  return Handle("SetVersionLabel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->model();
    log.version = req->version();
    registry_->SetLabel(req->model(), req->label(), req->version());
    registry_->Describe(*registry_->Get(req->model()), resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::RemoveVersionLabel(grpc::ServerContext* ctx,
                                                const v1::RemoveVersionLabelRequest* req,
                                                v1::RemoveVersionLabelResponse* resp) {
  return Handle("RemoveVersionLabel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->model();
    if (req->label().empty()) Fail(StatusCode::INVALID_ARGUMENT, "label is required");
    registry_->RemoveLabel(req->model(), req->label());
    registry_->Describe(*registry_->Get(req->model()), resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::UpdateModel(grpc::ServerContext* ctx,
                                         const v1::UpdateModelRequest* req,
                                         v1::UpdateModelResponse* resp) {
  return Handle("UpdateModel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->model();
    registry_->UpdateSettings(
        req->model(),
        req->has_serving_label() ? std::optional<std::string>(req->serving_label()) : std::nullopt,
        req->has_keep_versions() ? std::optional<int32_t>(req->keep_versions()) : std::nullopt);
    registry_->Describe(*registry_->Get(req->model()), resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::DeleteModel(grpc::ServerContext* ctx,
                                         const v1::DeleteModelRequest* req,
                                         v1::DeleteModelResponse*) {
  return Handle("DeleteModel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    registry_->Delete(req->name());
    return grpc::Status::OK;
  });
}

// ---- Training ----

grpc::Status DropnetService::RunTraining(const v1::TrainRequest& request, const TrainSink& sink,
                                         const std::function<bool()>& stop) {
  const TrainingEnvironment env{registry_, config_.compute_threads,
                                config_.max_concurrent_trainings, &draining_, metrics_};
  return service::RunTraining(env, request, sink, stop);
}

grpc::Status DropnetService::Train(grpc::ServerContext* ctx, const v1::TrainRequest* req,
                                   grpc::ServerWriter<v1::TrainEvent>* writer) {
  return Handle("Train", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->model();
    log.mode = "train";
    grpc::Status s = RunTraining(
        *req,
        [&](const v1::TrainEvent& e) {
          log.version = e.version();
          return writer->Write(e);
        },
        [&] { return ctx->IsCancelled() || draining_.load(); });
    return s;
  });
}

// ---- Prediction ----

template <typename Prepare, typename Respond>
grpc::ServerUnaryReactor* DropnetService::QueuePrediction(const char* method,
                                                          grpc::CallbackServerContext* ctx,
                                                          int64_t work, bool mergeable,
                                                          Prepare prepare, Respond respond) {
  if (!mergeable || !batcher_.enabled() || scheduler_.Idle()) {
    return Queue(method, ctx, Role::kPredict, work, [prepare, respond](CallLog& log) {
      const PredictionPart part = prepare(log);
      Prediction p = RunPrepared(part, log.threads);
      return respond(log, part, p);
    });
  }
  // Prepared here, on the thread that received the call: a few rows, and the batcher needs the
  // model version and the call's rows to place it.
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto log = std::make_shared<CallLog>(CallLog{method, metrics_});
  auto part = std::make_shared<PredictionPart>();
  bool merge = false;
  const grpc::Status status = BoundedMessage(Run(
      method, ctx, Role::kPredict,
      [&](CallLog& l) {
        *part = prepare(l);
        merge = batcher_.Accepts(part->work);
        return grpc::Status::OK;
      },
      *log));
  if (!status.ok()) {
    log->Finish(status);
    reactor->Finish(status);
    return reactor;
  }
  if (!merge) {
    // A model whose rows depend on the batch: computed alone, as it is prepared.
    return Queue(method, ctx, Role::kPredict, work, [part, log, respond](CallLog& l) {
      l.model = log->model;
      l.mode = log->mode;
      l.version = log->version;
      l.rows = log->rows;
      l.samples = log->samples;
      Prediction p = RunPrepared(*part, l.threads);
      return respond(l, *part, p);
    });
  }
  batcher_.Add(std::move(*part),
               [ctx, reactor, log, respond](std::exception_ptr error, const PredictionPart& p,
                                            Prediction out) mutable {
                 grpc::Status s;
                 try {
                   if (error) std::rethrow_exception(error);
                   s = respond(*log, p, out);
                 } catch (...) {
                   s = ToStatus(std::current_exception(), DeadlinePassed(ctx));
                 }
                 s = BoundedMessage(s);
                 const double ms = log->ElapsedMs();
                 reactor->Finish(s);
                 log->Write(s, ms);
               });
  return reactor;
}

grpc::ServerUnaryReactor* DropnetService::Predict(grpc::CallbackServerContext* ctx,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  auto call = std::make_shared<WireCall<v1::PredictRequest, v1::PredictResponse>>();
  call->parsed = ParseRequest(*request, &call->request, &call->inputs);
  const int64_t work = EstimatedWork(*registry_, call->request.model(), call->inputs.shape, 1);
  const bool mergeable = call->parsed && !call->inputs.shape.empty() &&
                         call->inputs.shape[0] <= config_.batch_max_rows;
  auto prepare = [this, ctx, call](CallLog& log) {
    call->CheckParsed();
    const v1::PredictRequest* req = &call->request;
    log.model = req->model();
    log.mode = "eval";
    PredictionPart part;
    part.snap = registry_->Resolve(req->model(), req->version());
    log.version = part.snap->version;
    part.work = PreparePrediction(*part.snap, call->inputs, PredictionQuery{}, config_);
    log.rows = part.work.x.rows();
    part.stopped = [ctx] { return ctx->IsCancelled() || DeadlinePassed(ctx); };
    return part;
  };
  auto respond = [call, response](CallLog&, const PredictionPart& part, const Prediction& p) {
    const Snapshot& snap = *part.snap;
    v1::PredictResponse* resp = &call->response;
    const Matrix& out = p.output;
    ToTensor(out, resp->mutable_outputs());
    if (p.variance.size()) ToTensor(p.variance, resp->mutable_variances());
    resp->set_version(snap.version);
    resp->set_task(ToProto(snap.task));
    if (snap.task == engine::Task::kClassification) {
      for (int64_t r = 0; r < out.rows(); ++r) {
        Eigen::Index arg;
        out.row(r).maxCoeff(&arg);
        resp->add_predicted_class(static_cast<int32_t>(arg));
      }
      for (const auto& c : snap.class_names) resp->add_class_names(c);
    }
    return SerializeResponse(*resp, response);
  };
  return QueuePrediction("Predict", ctx, work, mergeable, std::move(prepare), std::move(respond));
}

grpc::ServerUnaryReactor* DropnetService::PredictUncertainty(grpc::CallbackServerContext* ctx,
                                                             const grpc::ByteBuffer* request,
                                                             grpc::ByteBuffer* response) {
  auto call =
      std::make_shared<WireCall<v1::PredictUncertaintyRequest, v1::PredictUncertaintyResponse>>();
  call->parsed = ParseRequest(*request, &call->request, &call->inputs);
  const int samples = call->request.samples();
  const int64_t work = EstimatedWork(*registry_, call->request.model(), call->inputs.shape,
                                     samples > 0 ? samples : config_.default_samples);
  const bool mergeable = call->parsed && !call->request.return_samples() &&
                         !call->inputs.shape.empty() &&
                         call->inputs.shape[0] <= config_.batch_max_rows;
  auto prepare = [this, ctx, call](CallLog& log) {
    call->CheckParsed();
    const v1::PredictUncertaintyRequest* req = &call->request;
    log.model = req->model();
    log.mode = "monte_carlo";
    PredictionPart part;
    part.snap = registry_->Resolve(req->model(), req->version());
    log.version = part.snap->version;
    PredictionQuery q;
    q.monte_carlo = true;
    q.samples = req->samples();
    if (req->has_seed()) q.seed = req->seed();
    q.interval = req->interval();
    q.keep_samples = req->return_samples();
    part.work = PreparePrediction(*part.snap, call->inputs, q, config_);
    log.rows = part.work.x.rows();
    log.samples = part.work.options.samples;
    part.stopped = [ctx] { return ctx->IsCancelled() || DeadlinePassed(ctx); };
    return part;
  };
  auto respond = [call, response](CallLog&, const PredictionPart& part, const Prediction& p) {
    return RespondUncertainty(*part.snap, p, &call->response, response);
  };
  return QueuePrediction("PredictUncertainty", ctx, work, mergeable, std::move(prepare),
                         std::move(respond));
}

}  // namespace dropnet::service