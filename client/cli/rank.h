// `dropnet rank`: which rows of a stored data set to label next. Ranks the rows by Monte-Carlo
// dropout uncertainty (the RankDataset call) and prints the top K, best first, with a progress
// line on stderr while the server works; Ctrl-C cancels.
#ifndef DROPNET_CLIENT_CLI_RANK_H_
#define DROPNET_CLIENT_CLI_RANK_H_

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "client/cli/output.h"
#include "client/client.h"

namespace dropnet::cli {

// The command's arguments, filled in by the parser.
struct RankArgs {
  std::string model, data, by = "mutual_information", model_version, output;
  int64_t top = 0;
  int samples = 0, batch_size = 0;
  uint64_t seed = 0;
  CLI::App* command = nullptr;
  CLI::Option* seed_option = nullptr;
};

// Adds `rank` to app; `a` must outlive the parse.
void AddRankCommand(CLI::App& app, RankArgs& a);

// Runs the command; returns the exit status (130 after Ctrl-C).
int RankCommand(client::Client& c, const RankArgs& a, Format f);

}  // namespace dropnet::cli

#endif  // DROPNET_CLIENT_CLI_RANK_H_
