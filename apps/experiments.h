// dropnet-experiment's subcommands beyond the main program's own (experiment.cc: `fashion-mlp`,
// `small-data`), and the helpers they share.
//
// experiment_conv.cc: `fashion-cnn` (conv32-conv64 3x3, SpatialDropout2D, max-pool, dense 128 with
// dropout; deterministic vs MC-dropout NLL and ECE, seconds per epoch) and `dropconnect-mlp` (an
// MLP whose hidden layer uses DropConnect; mean-weight, moment-matching and MC predictions).
// experiment_learned.cc: `concrete-rates` (concrete dropout learns a higher rate from less data),
// `sparse-vd` (sparse variational dropout prunes the Fashion-MNIST MLP) and `fashion-lstm` (an
// LSTM or GRU with zoneout reads Fashion-MNIST row by row; MC dropout over its masks).
#ifndef DROPNET_APPS_EXPERIMENTS_H_
#define DROPNET_APPS_EXPERIMENTS_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include <CLI/CLI.hpp>

#include "server/engine/data.h"
#include "server/engine/mc.h"
#include "server/engine/network.h"

namespace dropnet::apps {

// Register the subcommands on `app`; they run from their CLI11 callbacks, reading the data
// directory and thread count parsed by the main program, and exit(1) on an error.
void AddConvExperiments(CLI::App* app, const std::string* data_dir, const int* threads);
void AddLearnedRateExperiments(CLI::App* app, const std::string* data_dir, const int* threads);

// Fashion-MNIST's training and test sets from the IDX files in `dir`.
void LoadFashion(const std::string& dir, engine::Dataset* train, engine::Dataset* test);

// Runs `fn` and exits with its status when not 0, or with 1 on an exception (CLI11 callbacks
// cannot return a status). Keeps freed activation buffers in the heap first (glibc's defaults
// unmap blocks over a few MB, and each new training step would page-fault them back).
void Guard(const std::function<int()>& fn);

// Seconds since `t0`.
double Seconds(std::chrono::steady_clock::time_point t0);

// MC-dropout predictions of a classifier over `x` in batches of 500 rows: `take(r0, result)` for
// each batch, r0 its first row.
void McPredictBatches(const engine::Network& net, const engine::Matrix& x,
                      const engine::McOptions& options,
                      const std::function<void(int64_t, const engine::McResult&)>& take);

}  // namespace dropnet::apps

#endif  // DROPNET_APPS_EXPERIMENTS_H_
