// dropnet-experiment subcommands for convolutional networks and DropConnect: `fashion-cnn`
// (conv32-conv64 3x3, SpatialDropout2D, max-pool, dense 128 with dropout; deterministic vs
// MC-dropout NLL and ECE, seconds per epoch) and `dropconnect-mlp` (an MLP whose hidden layer uses
// DropConnect; mean-weight, moment-matching and MC predictions).
#ifndef DROPNET_APPS_EXPERIMENT_CONV_H_
#define DROPNET_APPS_EXPERIMENT_CONV_H_

#include <string>

#include <CLI/CLI.hpp>

namespace dropnet::apps {

// Registers the subcommands on `app`; they run from their CLI11 callbacks, reading the data
// directory and thread count parsed by the main program, and exit(1) on an error.
void AddConvExperiments(CLI::App* app, const std::string* data_dir, const int* threads);

}  // namespace dropnet::apps

#endif  // DROPNET_APPS_EXPERIMENT_CONV_H_
