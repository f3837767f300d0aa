#include "server/engine/trainer.h"

#include <chrono>
#include <cmath>
#include <optional>
#include <sstream>

#include "server/engine/thread_pool.h"

namespace dropnet::engine {

void CheckTrainOptions(const TrainOptions& o) {
  auto fail = [](const std::string& field, double v, const char* rule) {
    std::ostringstream msg;
    msg << field << " must be " << rule << ", got " << v;
    throw InvalidArgument(msg.str());
  };
  if (o.epochs <= 0) fail("epochs", o.epochs, "positive");
  if (o.batch_size <= 0) fail("batch_size", o.batch_size, "positive");
  if (!(o.validation_split >= 0 && o.validation_split < 1)) {
    fail("validation_split", o.validation_split, "in [0, 1)");
  }
  if (o.early_stopping_patience < 0)
    fail("early_stopping_patience", o.early_stopping_patience, ">= 0");
  if (o.early_stopping_patience > 0 && o.validation_split == 0) {
    throw InvalidArgument("early_stopping_patience needs a validation_split > 0");
  }
  if (!(o.max_norm >= 0 && std::isfinite(o.max_norm))) {
    fail("max_norm", o.max_norm, "finite and >= 0");
  }
  if (o.threads <= 0) fail("threads", o.threads, "positive");
  CheckOptimizer(o.optimizer);
  CheckSchedule(o.schedule);
}

namespace {

// Correct answers (classification) or squared errors averaged over a row's targets
// (regression), summed over the rows of `pred` (probabilities or logits: the argmax is the same;
// or regression means).
double MetricSum(Task task, const Matrix& pred, const Matrix& y) {
  if (task == Task::kRegression) {
    return (pred - y).cast<double>().squaredNorm() / static_cast<double>(pred.cols());
  }
  double correct = 0;
  for (int64_t r = 0; r < pred.rows(); ++r) {
    Eigen::Index arg;
    pred.row(r).maxCoeff(&arg);
    correct += arg == static_cast<Eigen::Index>(y(r, 0));
  }
  return correct;
}

// Accuracy, or RMSE, from a MetricSum over `rows` rows.
double FinishMetric(Task task, double sum, int64_t rows) {
  const double mean = sum / static_cast<double>(rows);
  return task == Task::kClassification ? mean : std::sqrt(mean);
}

// Copies the rows order[r0 .. r0 + m) of the training set into one batch, on `threads` threads
// when the batch is large enough to pay for the hand-off.
void GatherBatch(const Dataset& train, const std::vector<int64_t>& order, int64_t r0, int64_t m,
                 int threads, Matrix* xb, Matrix* yb) {
  xb->resize(m, train.x.cols());
  yb->resize(m, train.y.cols());
  const bool worth_it = m * train.x.cols() >= (int64_t{1} << 16);
  ParallelFor(m, worth_it ? threads : 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      xb->row(i) = train.x.row(order[r0 + i]);
      yb->row(i) = train.y.row(order[r0 + i]);
    }
  });
}

// The loss is checked before each update; the last update of an epoch is checked here, before
// the epoch's parameters are reported (and published).
void CheckParametersFinite(const Network& net, int epoch) {
  for (const Parameter* param : net.Parameters()) {
    if (!param->value.allFinite()) {
      throw InvalidArgument("the parameters became non-finite at epoch " + std::to_string(epoch) +
                            "; lower the learning rate");
    }
  }
}

}  // namespace

Matrix PredictEval(const Network& net, Task task, LossKind loss, const Matrix& x, int threads,
                   double* mean_loss, const Matrix* targets, Matrix* variance) {
  Context ctx;
  ctx.mode = Mode::kEval;
  ctx.threads = threads;
  const bool cut_softmax = task == Task::kClassification && net.EndsWithSoftmax();
  const int end = cut_softmax ? net.size() - 1 : net.size();
  Matrix out, var;
  double loss_sum = 0;
  constexpr int64_t kBatch = 1024;
  for (int64_t r0 = 0; r0 < x.rows(); r0 += kBatch) {
    const int64_t n = std::min(kBatch, x.rows() - r0);
    // One batch that is all of x goes in as it is, not as a copy of its rows.
    Matrix raw = n == x.rows() ? net.Forward(x, ctx, nullptr, 0, end)
                               : net.Forward(x.middleRows(r0, n), ctx, nullptr, 0, end);
    if (targets) loss_sum += ComputeLoss(loss, raw, targets->middleRows(r0, n), nullptr) * n;
    Matrix pred, v;
    HeadOutputs(task, loss, false, raw, &pred, &v);
    if (r0 == 0) {
      out.resize(x.rows(), pred.cols());
      if (v.size()) var.resize(x.rows(), v.cols());
    }
    out.middleRows(r0, n) = pred;
    if (v.size()) var.middleRows(r0, n) = v;
  }
  if (mean_loss) *mean_loss = x.rows() ? loss_sum / static_cast<double>(x.rows()) : 0.0;
  if (variance) *variance = std::move(var);
  return out;
}

void TrainValidationSplit(const Dataset& data, const TrainOptions& options, Dataset* train,
                          Dataset* validation) {
  if (options.validation_split > 0) {
    SplitDataset(data, options.validation_split, options.seed ^ 0x5eedULL, train, validation);
    if (validation->rows() == 0)
      throw InvalidArgument("validation_split leaves no validation rows");
    if (train->rows() == 0) throw InvalidArgument("validation_split leaves no training rows");
  } else {
    *train = data;
    *validation = Dataset();
  }
}

TrainResult Train(Network* net, Task task, LossKind loss, const Dataset& data,
                  const TrainOptions& options, const ProgressCallback& on_progress,
                  const std::atomic<bool>* cancel) {
  CheckTrainOptions(options);
  if (data.x.cols() != net->input_shape().Size()) {
    throw InvalidArgument("the data has " + std::to_string(data.x.cols()) +
                          " features per row, the network expects " +
                          std::to_string(net->input_shape().Size()));
  }
  const int64_t targets = task == Task::kClassification ? data.num_classes : data.y.cols();
  const bool cut_softmax = task == Task::kClassification && net->EndsWithSoftmax();
  const int end = cut_softmax ? net->size() - 1 : net->size();
  CheckHead(task, loss, net->output_shape().Size(), targets);

  // Without a validation split the batches come from `data` itself: no copy of the data set.
  Dataset split, val;
  if (options.validation_split > 0) TrainValidationSplit(data, options, &split, &val);
  const Dataset& train = options.validation_split > 0 ? split : data;
  const int64_t n = train.rows();
  if (n == 0) throw InvalidArgument("the training set is empty");
  const int64_t batch = std::min<int64_t>(options.batch_size, n);
  const int64_t steps_per_epoch = (n + batch - 1) / batch;
  const int64_t total_steps = steps_per_epoch * options.epochs;

  Optimizer optimizer(options.optimizer, net->Parameters());
  TrainResult result;
  double best_val = std::numeric_limits<double>::infinity();
  std::optional<Network> best;
  int since_best = 0;
  int64_t step = 0;
  ForwardCache cache;
  Gradients grads;
  Matrix xb, yb, grad;

  for (int epoch = 1; epoch <= options.epochs; ++epoch) {
    const auto start = std::chrono::steady_clock::now();
    auto order =
        Permutation(n, options.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch));
    double loss_sum = 0, metric_sum = 0;
    int64_t seen = 0;
    TrainProgress p;
    p.epoch = epoch;
    p.epochs = options.epochs;
    p.total_steps = total_steps;
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      if (cancel && cancel->load()) {
        result.cancelled = true;
        result.steps = step;
        return result;
      }
      const int64_t r0 = s * batch, m = std::min(batch, n - r0);
      GatherBatch(train, order, r0, m, options.threads, &xb, &yb);
      Context ctx;
      ctx.mode = Mode::kTrain;
      ctx.threads = options.threads;
      ctx.rng = RandomStream{options.seed, static_cast<uint64_t>(options.first_step + step), m};
      Matrix out = net->Forward(xb, ctx, &cache, 0, end);
      const double l = ComputeLoss(loss, out, yb, &grad);
      if (!std::isfinite(l)) {
        throw InvalidArgument("the loss became " + std::to_string(l) + " at epoch " +
                              std::to_string(epoch) + "; lower the learning rate");
      }
      net->Backward(grad, cache, &grads, end);
      // Layer regularisers (concrete dropout, sparse VD's KL / N) are part of the objective: the
      // reported training loss is data loss + regulariser; val_loss is the data loss alone.
      const double reg = net->Regularize(n, &grads);
      const double lr = ScheduledLearningRate(options.schedule, options.optimizer.learning_rate,
                                              step, steps_per_epoch, total_steps);
      optimizer.Step(grads, lr, options.threads);
      ApplyMaxNorm(net->Parameters(), options.max_norm);
      net->ApplyTrainStatistics(cache);
      ++step;
      loss_sum += (l + reg) * m;
      if (task == Task::kClassification) {
        metric_sum += MetricSum(task, out, yb);
      } else {
        Matrix means;
        HeadOutputs(task, loss, false, out, &means, nullptr);
        metric_sum += MetricSum(task, means, yb);
      }
      seen += m;
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      p.step = step;
      p.learning_rate = lr;
      p.loss = loss_sum / seen;
      p.metric = FinishMetric(task, metric_sum, seen);
      p.samples_per_second = secs > 0 ? seen / secs : 0;
      if (on_progress && s + 1 < steps_per_epoch) on_progress(p, *net);
    }
    p.end_of_epoch = true;
    CheckParametersFinite(*net, epoch);
    if (val.rows() > 0) {
      double vl = 0;
      Matrix vp = PredictEval(*net, task, loss, val.x, options.threads, &vl, &val.y);
      p.val_loss = vl;
      p.val_metric = FinishMetric(task, MetricSum(task, vp, val.y), val.rows());
      p.best = vl < best_val;
      if (p.best) {
        best_val = vl;
        result.best_epoch = epoch;
        since_best = 0;
        if (options.early_stopping_patience > 0) best = *net;
      } else {
        ++since_best;
      }
    } else {
      p.best = true;
      result.best_epoch = epoch;
    }
    result.history.push_back(p);
    result.epochs_run = epoch;
    result.steps = step;
    if (options.early_stopping_patience > 0 && since_best >= options.early_stopping_patience) {
      if (best) *net = *best;
      result.early_stopped = true;
      if (on_progress) on_progress(p, *net);
      return result;
    }
    if (on_progress) on_progress(p, *net);
  }
  return result;
}

}  // namespace dropnet::engine
