#include "server/service/service.h"

#include <chrono>
#include <cmath>
#include <random>

#include <spdlog/spdlog.h>

#include "server/engine/mc.h"
#include "server/engine/metrics.h"
#include "server/engine/random.h"
#include "server/service/handler_common.h"
#include "server/service/request_wire.h"
#include "server/service/transform.h"

namespace dropnet::service {

using engine::Matrix;
using grpc::StatusCode;

namespace {

// A seed for a call that gave none: each thread draws from its own SplitMix64 sequence, started
// from the system's entropy once (opening std::random_device per call cost more than a small
// prediction).
uint64_t FreshSeed() {
  thread_local engine::SplitMix64 rng = [] {
    std::random_device rd;
    return engine::SplitMix64((static_cast<uint64_t>(rd()) << 32) ^ rd());
  }();
  return rng.Next();
}

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

// Reads a request batch, checks its size and applies the model's input transform.
Matrix ReadInputs(const Snapshot& s, const WireTensor& inputs, int64_t max_rows) {
  if (!inputs.shape.empty() && inputs.shape[0] > max_rows) {
    Fail(StatusCode::RESOURCE_EXHAUSTED, "inputs has " + std::to_string(inputs.shape[0]) +
                                             " rows, the limit is " + std::to_string(max_rows));
  }
  Matrix x = inputs.ToMatrix(s.net.input_shape().Size(), "inputs");
  ApplyInputTransform(s, &x);
  return x;
}

int ResolveSamples(int requested, int default_samples, int max_samples) {
  const int t = requested == 0 ? default_samples : requested;
  if (t <= 0) {
    Fail(StatusCode::INVALID_ARGUMENT, "samples must be positive, got " + std::to_string(t));
  }
  if (t > max_samples) {
    Fail(StatusCode::RESOURCE_EXHAUSTED, "samples " + std::to_string(t) +
                                             " exceeds the server limit " +
                                             std::to_string(max_samples));
  }
  return t;
}

// The Monte-Carlo options of a PredictUncertainty or Evaluate call `req`: its T (or the default,
// within the limit), its seed (or a fresh one), the call's engine threads, the memory budget and
// the model's tau; it stops when the call is cancelled or past its deadline. A server that drains
// lets it finish: gRPC cancels it when the shutdown grace runs out. A model without a stochastic
// layer is FAILED_PRECONDITION: its samples would all be equal, and a zero spread would read as
// certainty; `instead` names the deterministic call to use.
template <typename Request>
engine::McOptions MonteCarloOptions(const Request& req, const ServiceConfig& config,
                                    const Snapshot& snap, int threads,
                                    const grpc::ServerContextBase* ctx, const char* instead) {
  engine::McOptions mo;
  mo.samples = ResolveSamples(req.samples(), config.default_samples, config.max_samples);
  if (snap.net.FirstStochasticLayer() >= snap.net.size()) {
    Fail(StatusCode::FAILED_PRECONDITION,
         "model '" + snap.model +
             "' has no stochastic layer: Monte-Carlo samples would all be equal; use " + instead);
  }
  mo.seed = req.has_seed() ? req.seed() : FreshSeed();
  mo.threads = threads;
  mo.memory_budget_bytes = config.mc_memory_budget_bytes;
  mo.tau = snap.tau;
  mo.should_stop = [ctx] { return ctx->IsCancelled() || DeadlinePassed(ctx); };
  return mo;
}

std::string ModeOf(v1::EvalMode m) {
  return m == v1::EVAL_MODE_MONTE_CARLO ? "monte_carlo" : "eval";
}

}  // namespace

DropnetService::DropnetService(Registry* registry, ServiceConfig config, const TokenAuth* auth)
    : registry_(registry),
      auth_(auth),
      config_(std::move(config)),
      scheduler_(config_.compute_threads, config_.workers, config_.max_queued_calls) {}

void DropnetService::StartDraining() {
  draining_ = true;
  registry_->CancelAllTraining();
}

template <typename Body>
grpc::ServerUnaryReactor* DropnetService::Queue(const char* method,
                                                grpc::CallbackServerContext* ctx, Role role,
                                                int64_t work, Body body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto log = std::make_shared<CallLog>(CallLog{method});
  auto run = [this, method, ctx, role, reactor, log,
              body = std::move(body)](const ScheduledCall& call) mutable {
    grpc::Status status;
    // A call that waited past its deadline, or whose client went away, is not computed.
    if (ctx->IsCancelled()) {
      status = grpc::Status(StatusCode::CANCELLED, "the call was cancelled while it waited");
    } else if (DeadlinePassed(ctx)) {
      status = grpc::Status(StatusCode::DEADLINE_EXCEEDED,
                            "the deadline passed while the call waited for a worker");
    } else {
      log->threads = scheduler_.BeginCompute(call);
      status = BoundedMessage(Run(method, ctx, role, body, *log));
      scheduler_.EndCompute();
    }
    // The answer goes out first; the log line is written after it, off the call's latency.
    const double ms = log->ElapsedMs();
    scheduler_.Answered();
    reactor->Finish(status);
    log->Write(status, ms);
  };
  if (!scheduler_.Schedule(work, std::move(run))) {
    const grpc::Status busy(StatusCode::RESOURCE_EXHAUSTED,
                            "the server is busy: " + std::to_string(scheduler_.max_queued()) +
                                " calls already wait for a worker");
    log->Finish(busy);
    reactor->Finish(busy);
  }
  return reactor;
}

// ---- Models ----

grpc::Status DropnetService::CreateModel(grpc::ServerContext* ctx,
                                         const v1::CreateModelRequest* req,
                                         v1::CreateModelResponse* resp) {
  return Handle("CreateModel", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    if (!req->has_spec()) Fail(StatusCode::INVALID_ARGUMENT, "spec is required");
    auto snap = registry_->Create(req->name(), req->spec());
    log.version = snap->version;
    registry_->Describe(*snap, resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::GetModel(grpc::ServerContext* ctx, const v1::GetModelRequest* req,
                                      v1::GetModelResponse* resp) {
  return Handle("GetModel", ctx, Role::kPredict, [&](CallLog& log) {
    log.model = req->name();
    auto snap = registry_->Get(req->name());
    log.version = snap->version;
    registry_->Describe(*snap, resp->mutable_model());
    return grpc::Status::OK;
  });
}

grpc::Status DropnetService::ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                                        v1::ListModelsResponse* resp) {
  return Handle("ListModels", ctx, Role::kPredict, [&](CallLog&) {
    for (const auto& name : registry_->ModelNames()) {
      try {
        registry_->Describe(*registry_->Get(name), resp->add_models());
      } catch (const ServiceError&) {
        resp->mutable_models()->RemoveLast();  // deleted meanwhile
      }
    }
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
                                config_.max_concurrent_trainings, &draining_};
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

grpc::ServerUnaryReactor* DropnetService::Predict(grpc::CallbackServerContext* ctx,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  auto call = std::make_shared<WireCall<v1::PredictRequest, v1::PredictResponse>>();
  call->parsed = ParseRequest(*request, &call->request, &call->inputs);
  const int64_t work = EstimatedWork(*registry_, call->request.model(), call->inputs.shape, 1);
  return Queue("Predict", ctx, Role::kPredict, work, [this, call, response](CallLog& log) {
    call->CheckParsed();
    const v1::PredictRequest* req = &call->request;
    v1::PredictResponse* resp = &call->response;
    log.model = req->model();
    log.mode = "eval";
    SnapshotPtr snap = registry_->Get(req->model());
    log.version = snap->version;
    Matrix x = ReadInputs(*snap, call->inputs, config_.max_batch_rows);
    log.rows = x.rows();
    Matrix var;
    Matrix out = engine::PredictEval(snap->net, snap->task, snap->loss, x, log.threads, nullptr,
                                     nullptr, &var);
    if (snap->task == engine::Task::kRegression) {
      UnstandardizeOutputs(snap->target_standardizer, &out, &var);
    }
    ToTensor(out, resp->mutable_outputs());
    if (var.size()) ToTensor(var, resp->mutable_variances());
    resp->set_version(snap->version);
    resp->set_task(ToProto(snap->task));
    if (snap->task == engine::Task::kClassification) {
      for (int64_t r = 0; r < out.rows(); ++r) {
        Eigen::Index arg;
        out.row(r).maxCoeff(&arg);
        resp->add_predicted_class(static_cast<int32_t>(arg));
      }
      for (const auto& c : snap->class_names) resp->add_class_names(c);
    }
    return SerializeResponse(*resp, response);
  });
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
  return Queue(
      "PredictUncertainty", ctx, Role::kPredict, work, [this, ctx, call, response](CallLog& log) {
        call->CheckParsed();
        const v1::PredictUncertaintyRequest* req = &call->request;
        v1::PredictUncertaintyResponse* resp = &call->response;
        log.model = req->model();
        log.mode = "monte_carlo";
        SnapshotPtr snap = registry_->Get(req->model());
        log.version = snap->version;
        engine::McOptions mo = MonteCarloOptions(*req, config_, *snap, log.threads, ctx, "Predict");
        if (req->interval() != 0) mo.interval = req->interval();
        if (!(mo.interval > 0 && mo.interval < 1)) {
          Fail(StatusCode::INVALID_ARGUMENT,
               "interval must be in (0, 1), got " + std::to_string(mo.interval));
        }
        Matrix x = ReadInputs(*snap, call->inputs, config_.max_batch_rows);
        log.rows = x.rows();
        const int64_t outputs = snap->net.output_shape().Size();
        if (req->return_samples() &&
            static_cast<int64_t>(mo.samples) * x.rows() * outputs > config_.max_returned_samples) {
          Fail(StatusCode::RESOURCE_EXHAUSTED,
               "return_samples would send " + std::to_string(mo.samples * x.rows() * outputs) +
                   " values, the limit is " + std::to_string(config_.max_returned_samples));
        }
        mo.keep_samples = req->return_samples();
        auto r = engine::MonteCarloPredict(snap->net, snap->task, snap->loss, x, mo);
        if (snap->task == engine::Task::kRegression) UnstandardizeMc(snap->target_standardizer, &r);
        ToTensor(r.mean, resp->mutable_mean());
        ToTensor(r.stddev, resp->mutable_stddev());
        if (snap->task == engine::Task::kClassification) {
          auto add = [](const Eigen::VectorXf& v, google::protobuf::RepeatedField<float>* out) {
            out->Add(v.data(), v.data() + v.size());
          };
          add(r.predictive_entropy, resp->mutable_predictive_entropy());
          add(r.expected_entropy, resp->mutable_expected_entropy());
          add(r.mutual_information, resp->mutable_mutual_information());
          add(r.variation_ratio, resp->mutable_variation_ratio());
          resp->mutable_predicted_class()->Add(r.predicted_class.begin(), r.predicted_class.end());
          for (const auto& c : snap->class_names) resp->add_class_names(c);
        } else {
          ToTensor(r.total_variance, resp->mutable_total_variance());
          ToTensor(r.lower, resp->mutable_lower());
          ToTensor(r.upper, resp->mutable_upper());
        }
        if (req->return_samples()) {
          auto* t = resp->mutable_samples();
          const int64_t cols = r.sample_outputs.empty() ? 0 : r.sample_outputs[0].cols();
          t->add_shape(mo.samples);
          t->add_shape(x.rows());
          t->add_shape(cols);
          for (const auto& m : r.sample_outputs) {
            t->mutable_values()->Add(m.data(), m.data() + m.size());
          }
        }
        resp->set_num_samples(mo.samples);
        resp->set_seed(mo.seed);
        resp->set_version(snap->version);
        resp->set_task(ToProto(snap->task));
        return SerializeResponse(*resp, response);
      });
}

grpc::ServerUnaryReactor* DropnetService::Evaluate(grpc::CallbackServerContext* ctx,
                                                   const v1::EvaluateRequest* req,
                                                   v1::EvaluateResponse* resp) {
  return Queue("Evaluate", ctx, Role::kPredict, /*work=*/-1, [this, ctx, req, resp](CallLog& log) {
    ReleaseFreeMemoryOnExit release;  // the data set's rows and the outputs, once freed
    log.model = req->model();
    log.mode = ModeOf(req->mode());
    SnapshotPtr snap = registry_->Get(req->model());
    log.version = snap->version;
    const bool classify = snap->task == engine::Task::kClassification;
    const auto entry = registry_->GetDataset(req->dataset());
    CheckDataFits(*snap, *entry.data, req->dataset());
    if (req->limit() < 0) Fail(StatusCode::INVALID_ARGUMENT, "limit must be >= 0");
    if (req->mode() != v1::EVAL_MODE_UNSPECIFIED && req->mode() != v1::EVAL_MODE_EVAL &&
        req->mode() != v1::EVAL_MODE_MONTE_CARLO) {
      Fail(StatusCode::INVALID_ARGUMENT, "mode " + std::to_string(req->mode()) + " is unknown");
    }
    const int64_t rows =
        req->limit() > 0 ? std::min(req->limit(), entry.data->rows()) : entry.data->rows();
    const Matrix x = DatasetInputs(*snap, *entry.data, rows);
    const Matrix y = entry.data->y.topRows(rows);
    // A regression model with a target standardisation answers in the target's units; the MC
    // log-likelihood is computed on standardised targets and gets the Jacobian term.
    const engine::Standardizer& target = snap->target_standardizer;
    Matrix y_net = y;
    if (!classify) StandardizeTargets(target, &y_net);
    log.rows = rows;
    Matrix mean, var;
    double ll_sum = 0;
    const bool mc = req->mode() == v1::EVAL_MODE_MONTE_CARLO;
    // Both modes compute in batches and stop between two when the call is cancelled or its
    // deadline passes.
    const auto stop_if_asked = [ctx] {
      if (ctx->IsCancelled() || DeadlinePassed(ctx)) {
        throw engine::Cancelled("the call was cancelled or its deadline passed");
      }
    };
    if (!mc) {
      constexpr int64_t kEvalBatch = 8192;
      for (int64_t r0 = 0; r0 == 0 || r0 < rows; r0 += kEvalBatch) {
        stop_if_asked();
        const int64_t n = std::min(kEvalBatch, rows - r0);
        Matrix batch_var;
        const Matrix batch_mean =
            engine::PredictEval(snap->net, snap->task, snap->loss, x.middleRows(r0, n), log.threads,
                                nullptr, nullptr, &batch_var);
        if (r0 == 0) {
          mean.resize(rows, batch_mean.cols());
          var.resize(batch_var.size() ? rows : 0, batch_var.cols());
        }
        mean.middleRows(r0, n) = batch_mean;
        if (var.rows() == rows && batch_var.rows() == n) var.middleRows(r0, n) = batch_var;
      }
    } else {
      engine::McOptions mo =
          MonteCarloOptions(*req, config_, *snap, log.threads, ctx, "Evaluate in eval mode");
      const bool want_ll =
          !classify && (snap->tau > 0 || snap->loss == engine::LossKind::kGaussianNll);
      constexpr int64_t kBatch = 256;
      for (int64_t r0 = 0; r0 < rows; r0 += kBatch) {
        stop_if_asked();
        const int64_t n = std::min(kBatch, rows - r0);
        const Matrix yb = y_net.middleRows(r0, n);
        mo.targets = want_ll ? &yb : nullptr;
        auto r =
            engine::MonteCarloPredict(snap->net, snap->task, snap->loss, x.middleRows(r0, n), mo);
        if (!classify) UnstandardizeMc(target, &r);
        if (r0 == 0) mean.resize(rows, r.mean.cols());
        mean.middleRows(r0, n) = r.mean;
        if (want_ll) ll_sum += r.log_likelihood.sum();
      }
      resp->set_samples(mo.samples);
      resp->set_seed(mo.seed);
      if (want_ll)
        resp->set_log_likelihood(ll_sum / static_cast<double>(rows * y.cols()));
      else if (!classify)
        resp->set_log_likelihood(std::nan(""));
    }
    if (classify) {
      auto m = engine::ScoreClassification(mean, y);
      resp->set_accuracy(m.accuracy);
      resp->set_nll(m.nll);
      resp->set_brier(m.brier);
      resp->set_ece(m.ece);
    } else {
      double tau = snap->tau;
      if (!mc && !target.empty()) {
        // Eval mode's variances (a Gaussian head's, or 1/tau) in the target's units.
        if (var.size() == 0 && tau > 0) var = Matrix::Constant(rows, mean.cols(), 1.0f / tau);
        UnstandardizeOutputs(target, &mean, &var);
        tau = 0;
      }
      auto m = engine::ScoreRegression(mean, y, var, tau);
      resp->set_rmse(m.rmse);
      if (!mc) resp->set_log_likelihood(m.log_likelihood);
    }
    resp->set_rows(rows);
    resp->set_version(snap->version);
    resp->set_mode(mc ? v1::EVAL_MODE_MONTE_CARLO : v1::EVAL_MODE_EVAL);
    resp->set_task(ToProto(snap->task));
    return grpc::Status::OK;
  });
}

}  // namespace dropnet::service