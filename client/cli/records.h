// Machine-readable records of the `dropnet` command line beyond one table per answer: the T
// Monte-Carlo samples of `uncertainty --return-samples`, and the events of `train` as people read
// them, as JSON lines or as CSV rows.
#ifndef DROPNET_CLIENT_CLI_RECORDS_H_
#define DROPNET_CLIENT_CLI_RECORDS_H_

#include <string>
#include <vector>

#include "client/cli/output.h"
#include "dropnet/v1/service.pb.h"

namespace dropnet::cli {

// The T samples of a response with return_samples: JSON an array [T][rows][outputs] (a sample a
// line), CSV a line per (sample, row) with the columns sample, row, out0...; a table the votes of
// the samples per row (classification) or their min, median and max per row and target
// (regression). Throws std::runtime_error when the response holds no samples.
Table SamplesTable(const v1::PredictUncertaintyResponse& r, Format f);

// One training event as people read it: a live bar on a terminal (`tty`), plain lines in a pipe.
void PrintTrainEventText(const v1::TrainEvent& e, const v1::TrainRequest& req,
                         const std::string& metric_name, bool tty);

// "started", "step", "epoch", "finished".
std::string TrainEventKind(v1::TrainEvent::Kind k);

// kind, epoch, epochs, step, total_steps, loss, METRIC, val_loss, val_METRIC, samples_per_second,
// learning_rate, eta_seconds, version, early_stopped (METRIC: acc or rmse).
std::vector<std::string> TrainEventColumns(const std::string& metric_name);

// One event on stdout as a JSON line or a CSV row of TrainEventColumns (f is kJson or kCsv), its
// kind named `kind`. NaN (no validation split) is null in JSON, nan in CSV.
void PrintTrainEventRecord(const v1::TrainEvent& e, const std::string& kind,
                           const std::string& metric_name, Format f);

}  // namespace dropnet::cli

#endif  // DROPNET_CLIENT_CLI_RECORDS_H_
