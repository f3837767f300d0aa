// The commands of the `dropnet` command line that talk to a server (all but bench and demo): each
// prints its result and returns the process's exit status.
#ifndef DROPNET_CLIENT_CLI_COMMANDS_H_
#define DROPNET_CLIENT_CLI_COMMANDS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "client/cli/output.h"
#include "client/client.h"

namespace dropnet::cli {

// Input rows for a model from a CSV file: a target column is dropped by name, or, when the file
// has exactly one column more than the model takes, the last one is.
client::Matrix ReadInputs(client::Client& client, const std::string& model, const std::string& path,
                          const std::string& target);

int Health(client::Client& c, const std::string& service);
// models import: reads `path` and creates model `name` from it; task "" lets the server choose.
int ImportModelCommand(client::Client& c, const std::string& name, const std::string& path,
                       const std::string& task);
// models export: writes the file and prints the server's warnings to stderr.
int ExportModelCommand(client::Client& c, const v1::ExportModelRequest& request,
                       const std::string& path);
Table ModelsTable(const std::vector<v1::ModelInfo>& models);
void PrintModel(const v1::ModelInfo& m, Format f);
Table DatasetsTable(const std::vector<v1::DatasetInfo>& ds);
void PrintDataset(const v1::DatasetInfo& d);

// Streams training progress: with Format::kTable a live bar on a terminal (plain lines in a pipe);
// with kJson one JSON object per event and line, with kCsv a header and a row per event. Their
// fields: kind (started, step, epoch, finished; cancelled after Ctrl-C), epoch, epochs, step,
// total_steps, loss, acc or rmse, val_loss, val_acc or val_rmse, samples_per_second,
// learning_rate, eta_seconds, version, early_stopped. Ctrl-C cancels and returns 130.
// `report_every`: a step event every this many steps (0: epoch events only); nullopt: 10 when
// stdout is a terminal, else 0.
int TrainCommand(client::Client& c, v1::TrainRequest req, const std::string& metric_name,
                 Format f = Format::kTable, std::optional<int> report_every = std::nullopt);
// `version`: a number, a label or "" (the model's default); every row of the output names the
// version that answered. `v2`: ask through the Open Inference Protocol's ModelInfer
// (oip_client.h) instead of dropnet.v1.
int PredictCommand(client::Client& c, const std::string& model, const std::string& version,
                   const std::string& input, const std::string& target, Format f,
                   const std::string& output, bool v2 = false);
// return_samples: prints the T samples instead (records.h, SamplesTable).
int UncertaintyCommand(client::Client& c, const std::string& model, const std::string& version,
                       const std::string& input, const std::string& target, int samples,
                       std::optional<uint64_t> seed, Format f, const std::string& output,
                       bool v2 = false, bool return_samples = false);
// Runs EvaluateStream with a progress line on stderr (plain lines, one a second, when stderr is
// not a terminal); Ctrl-C cancels and returns 130. Prints the metrics as Evaluate's were printed.
int EvaluateCommand(client::Client& c, const std::string& model, const std::string& version,
                    const std::string& data, int mc, std::optional<uint64_t> seed, int64_t limit,
                    Format f);
// The versions of a model: labels, status, epoch metrics and sizes.
Table VersionsTable(const v1::ModelInfo& m);

}  // namespace dropnet::cli

#endif  // DROPNET_CLIENT_CLI_COMMANDS_H_
