// Minibatch training with seeded shuffling, validation, early stopping and progress reports.
//
// Step s of training draws its dropout masks at stream s, and epoch e shuffles with a key derived
// from (seed, e), so a run is bit-reproducible at a fixed thread count. Early stopping (Prechelt
// 1998) watches the validation loss and restores the best epoch's parameters. The callback is
// called after every step and every epoch; the cancel flag is read between steps.
#ifndef DROPNET_ENGINE_TRAINER_H_
#define DROPNET_ENGINE_TRAINER_H_

#include <atomic>
#include <functional>
#include <limits>
#include <vector>

#include "server/engine/data.h"
#include "server/engine/loss.h"
#include "server/engine/network.h"
#include "server/engine/optimizer.h"

namespace dropnet::engine {

struct TrainOptions {
  int epochs = 10;
  int batch_size = 128;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  double max_norm = 0.0;            // > 0: max-norm constraint on Dense weight columns
  double validation_split = 0.0;    // fraction of rows held out, in [0, 1)
  int early_stopping_patience = 0;  // > 0: stop after this many epochs without a better val loss
  uint64_t seed = 0;                // shuffling and dropout masks
  int threads = 1;
  int64_t first_step = 0;  // stream of the first step (resuming a model keeps going)
};

struct TrainProgress {
  bool end_of_epoch = false;
  int epoch = 0;  // 1-based
  int epochs = 0;
  int64_t step = 0;  // steps done in this run
  int64_t total_steps = 0;
  double learning_rate = 0;
  double loss = 0;    // running mean over the epoch so far, data loss plus the layer
                      // regularisers (Network::Regularize); val_loss is data loss only
  double metric = 0;  // accuracy (classification) or RMSE (regression), same window
  double val_loss = std::numeric_limits<double>::quiet_NaN();
  double val_metric = std::numeric_limits<double>::quiet_NaN();
  double samples_per_second = 0;  // over the epoch so far
  bool best = false;              // end of epoch: the best validation loss so far
};

struct TrainResult {
  int epochs_run = 0;
  int64_t steps = 0;
  bool cancelled = false;
  bool early_stopped = false;
  int best_epoch = 0;                  // restored epoch when early stopping, else the last
  std::vector<TrainProgress> history;  // one entry per finished epoch
};

using ProgressCallback = std::function<void(const TrainProgress&, const Network&)>;

// Throws InvalidArgument naming the field for bad options or data that does not fit the network.
void CheckTrainOptions(const TrainOptions& options);

// The rows Train learns from and the rows it validates on, as Train splits them (seeded by
// options.seed); callers fit input standardisation on `train` so that validation stays unseen.
void TrainValidationSplit(const Dataset& data, const TrainOptions& options, Dataset* train,
                          Dataset* validation);

// Trains `net` in place. `on_progress` may be empty.
TrainResult Train(Network* net, Task task, LossKind loss, const Dataset& data,
                  const TrainOptions& options, const ProgressCallback& on_progress = {},
                  const std::atomic<bool>* cancel = nullptr);

// Eval-mode predictions (probabilities or means) in batches, and the mean loss over the rows.
Matrix PredictEval(const Network& net, Task task, LossKind loss, const Matrix& x, int threads = 1,
                   double* mean_loss = nullptr, const Matrix* targets = nullptr,
                   Matrix* variance = nullptr);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_TRAINER_H_
