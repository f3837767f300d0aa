// dropnet-experiment subcommands for learned dropout rates and recurrent networks:
// `concrete-rates` (concrete dropout learns a higher rate from less data), `sparse-vd` (sparse
// variational dropout prunes the Fashion-MNIST MLP) and `fashion-lstm` (an LSTM or GRU with
// zoneout reads Fashion-MNIST row by row; MC dropout over its masks gives uncertainty).
#ifndef DROPNET_APPS_EXPERIMENT_LEARNED_H_
#define DROPNET_APPS_EXPERIMENT_LEARNED_H_

#include <string>

#include <CLI/CLI.hpp>

namespace dropnet::apps {

// Registers the subcommands on `app`; they run from their CLI11 callbacks, reading the data
// directory and thread count parsed by the main program, and exit(1) on an error.
void AddLearnedRateExperiments(CLI::App* app, const std::string* data_dir, const int* threads);

}  // namespace dropnet::apps

#endif  // DROPNET_APPS_EXPERIMENT_LEARNED_H_
