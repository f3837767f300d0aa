#include "client/cli/rank.h"

#include <unistd.h>

#include <iostream>
#include <map>

namespace dropnet::cli {
namespace {

namespace dc = dropnet::client;

const std::map<std::string, v1::RankCriterion>& Criteria() {
  static const std::map<std::string, v1::RankCriterion> criteria = {
      {"mutual_information", v1::RANK_CRITERION_MUTUAL_INFORMATION},
      {"entropy", v1::RANK_CRITERION_ENTROPY},
      {"variation_ratio", v1::RANK_CRITERION_VARIATION_RATIO},
      {"margin", v1::RANK_CRITERION_MARGIN}};
  return criteria;
}

std::string CriterionName(v1::RankCriterion c) {
  for (const auto& [name, value] : Criteria()) {
    if (value == c) return name;
  }
  return "unknown";
}

}  // namespace

void AddRankCommand(CLI::App& app, RankArgs& a) {
  a.command = app.add_subcommand(
      "rank", "which rows to label next: a data set's top K by Monte-Carlo dropout uncertainty");
  CLI::App* r = a.command;
  r->add_option("model", a.model, "a classification model with a dropout layer")->required();
  r->add_option("--data", a.data, "stored data set to rank (its labels are not read)")->required();
  r->add_option("--by", a.by,
                "mutual_information (BALD), entropy or variation_ratio (highest first), or "
                "margin (top-1 minus top-2 mean probability, smallest first)")
      ->check(CLI::IsMember({"mutual_information", "entropy", "variation_ratio", "margin"}))
      ->capture_default_str();
  r->add_option("--top,-k", a.top, "how many rows to print (more than the data set: all)")
      ->required()
      ->check(CLI::PositiveNumber);
  r->add_option("--samples,-T", a.samples, "stochastic passes T (default: the server's, 50)")
      ->check(CLI::PositiveNumber);
  a.seed_option = r->add_option("--seed", a.seed, "mask seed (default: the server picks; echoed)");
  r->add_option("--batch-size", a.batch_size, "rows per batch (default 256)")
      ->check(CLI::PositiveNumber);
  r->add_option("--model-version", a.model_version,
                "the model version: a number (12), a label (stable) or the model's default");
  r->add_option("--output", a.output, "write to this file instead of stdout");
}

int RankCommand(dc::Client& c, const RankArgs& a, Format f) {
  v1::RankDatasetRequest req;
  req.set_model(a.model);
  req.set_dataset(a.data);
  req.set_criterion(Criteria().at(a.by));
  req.set_top_k(a.top);
  req.set_samples(a.samples);
  if (a.seed_option->count()) req.set_seed(a.seed);
  req.set_batch_size(a.batch_size);
  req.set_version(a.model_version);
  const bool tty = ::isatty(STDERR_FILENO);
  CatchInterrupts();
  v1::RankResult r;
  try {
    r = c.RankDataset(
        req,
        [&](const v1::RankProgress& p) {
          const double frac =
              static_cast<double>(p.rows_done()) / std::max<int64_t>(1, p.rows_total());
          if (tty) {
            std::cerr << "\r\033[K ranking '" << a.data << "' [" << Bar(frac, 30) << "] "
                      << static_cast<int>(frac * 100) << "%  " << p.rows_done() << "/"
                      << p.rows_total() << " rows" << std::flush;
          } else {
            std::cerr << "ranked " << p.rows_done() << "/" << p.rows_total() << " rows\n";
          }
        },
        Interrupted);
  } catch (const dc::ClientError&) {
    if (tty) std::cerr << "\r\033[K";
    if (Interrupted()) {
      std::cerr << "cancelled\n";
      return 130;
    }
    throw;
  }
  if (tty) std::cerr << "\r\033[K";
  const std::string by = CriterionName(r.criterion());
  Table t;
  t.header = {"rank", "row", by, "prediction"};
  for (int i = 0; i < r.indices_size(); ++i) {
    const int k = r.predicted_class(i);
    const std::string label = k < r.class_names_size() ? r.class_names(k) : std::to_string(k);
    t.rows.push_back(
        {std::to_string(i + 1), std::to_string(r.indices(i)), Cell(r.scores(i), f), label});
    t.json_rows.push_back({{"rank", i + 1},
                           {"row", r.indices(i)},
                           {"criterion", by},
                           {"score", JsonNumber(r.scores(i))},
                           {"prediction", k},
                           {"class", label},
                           {"version", r.version()},
                           {"samples", r.samples()},
                           {"seed", r.seed()}});
  }
  Emit(t, f, a.output);
  std::cerr << "model '" << a.model << "' version " << r.version() << ": " << r.rows()
            << " rows of '" << a.data << "' ranked by " << by
            << (r.criterion() == v1::RANK_CRITERION_MARGIN ? " (smallest first)"
                                                           : " (highest first)")
            << ", Monte-Carlo dropout, T = " << r.samples() << ", seed " << r.seed() << "\n";
  return 0;
}

}  // namespace dropnet::cli
