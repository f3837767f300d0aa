// dropnet: the command line for a dropnet server.
//
//   dropnet health
//   dropnet models list | get NAME | create NAME --spec FILE.json | delete NAME
//   dropnet models import NAME FILE.onnx [--task T]
//   dropnet models export NAME --format onnx [--model-version V] [--mode eval|train] -o FILE
//   dropnet data upload NAME FILE.csv | import NAME PATH [LABELS] | list | delete NAME
//   dropnet train MODEL --data NAME [--epochs N ... --report-every N]
//   dropnet predict MODEL --input FILE.csv [--format table|csv|json]
//   dropnet uncertainty MODEL --input FILE.csv --samples T [--seed N] [--return-samples]
//   dropnet evaluate MODEL --data NAME [--mc-samples T] (progress on stderr)
//   dropnet rank MODEL --data NAME --top K [--by mutual_information|entropy|variation_ratio|margin]
//   dropnet bench MODEL [--concurrency 1,2,4,8 --duration S --count N --json ...]
//   dropnet demo [--wait SECONDS]
//   dropnet help [COMMAND...] | completion bash | --version
//
// Global options (--server, --timeout, --tls, --ca, --cert, --key, --token-file, -o/--format) go
// anywhere on the line. The server comes from --server or DROPNET_SERVER (default
// 127.0.0.1:50051); a bearer token from DROPNET_TOKEN or --token-file. Exit status: 0 on success, 1
// for a local error (a file that cannot be read), 2 for bad usage, 10 + the gRPC status code for an
// error from the server (15 for NOT_FOUND, 13 for INVALID_ARGUMENT, ...), 130 after Ctrl-C.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "client/cli/bench.h"
#include "client/cli/commands.h"
#include "client/cli/demo.h"
#include "client/cli/output.h"
#include "client/cli/rank.h"
#include "client/cli/usage.h"
#include "client/client.h"

namespace dc = dropnet::client;
namespace v1 = dropnet::v1;
namespace cli = dropnet::cli;

namespace {

struct Global {
  std::string server = "127.0.0.1:50051";
  double timeout = 30;
  bool tls = false;
  std::string ca, cert, key, token_file;
  CLI::Option* timeout_opt = nullptr;
};

dc::ClientOptions MakeClientOptions(const Global& g) {
  dc::ClientOptions o;
  o.target = g.server;
  o.deadline = std::chrono::milliseconds(static_cast<int64_t>(g.timeout * 1000));
  o.use_tls = g.tls || !g.ca.empty();
  o.ca_file = g.ca;
  o.cert_file = g.cert;
  o.key_file = g.key;
  if (!g.token_file.empty()) {
    std::ifstream in(g.token_file);
    if (!in) throw std::runtime_error("cannot read token file '" + g.token_file + "'");
    std::getline(in, o.token);
  } else if (const char* t = std::getenv("DROPNET_TOKEN")) {
    o.token = t;
  }
  return o;
}

// Every option's value and every subcommand, filled in by the parser.
struct Args {
  Global g;
  std::string format = "table", output, target, task = "classification", spec, name, path, labels;
  std::string health_service;
  std::vector<std::string> help_words;
  std::string shell;
  CLI::App *help = nullptr, *completion = nullptr;
  CLI::App *health = nullptr, *m_list = nullptr, *m_get = nullptr, *m_create = nullptr,
           *m_delete = nullptr, *m_label = nullptr, *m_unlabel = nullptr, *m_set = nullptr,
           *m_import = nullptr, *m_export = nullptr;
  // models: labels and settings; predict, uncertainty, evaluate: --model-version
  std::string label, model_version, serving_label;
  int64_t label_version = 0;
  int keep_versions = 0;
  // models import / export
  std::string import_task, export_format = "onnx", export_mode = "eval", export_file;
  int64_t export_version = 0;
  // data
  bool overwrite = false;
  int64_t limit = 0;
  CLI::App *d_upload = nullptr, *d_import = nullptr, *d_list = nullptr, *d_delete = nullptr,
           *d_split = nullptr;
  std::vector<double> fractions = {0.8, 0.2};
  std::vector<std::string> split_names;
  uint64_t split_seed = 0;
  // train
  std::string optimizer = "adam", data_name;
  int epochs = 10, batch = 128, patience = 0;
  double lr = 0, vsplit = 0, wd = 0, max_norm = 0;
  uint64_t tseed = 0;
  bool standardize = false;
  int report_every = 0;
  CLI::App* train = nullptr;
  CLI::Option* report_every_opt = nullptr;
  // predict, uncertainty, evaluate
  std::string input;
  int samples = 50, mc_samples = 0;
  uint64_t seed = 0;
  bool return_samples = false;
  CLI::App *predict = nullptr, *unc = nullptr, *evaluate = nullptr;
  CLI::Option *seed_opt = nullptr, *eval_seed = nullptr;
  std::string protocol = "v1";
  // bench
  cli::BenchOptions bench_options;
  std::vector<std::string> bench_workloads = {"health", "predict", "predict-batch", "uncertainty"};
  bool bench_json = false, bench_shared = false, bench_quiet = false;
  CLI::App* bench = nullptr;
  // rank
  cli::RankArgs rank;
  // demo
  std::string demo_data = "/usr/share/datasets/fashion-mnist";
  double demo_wait = 60;
  CLI::App* demo = nullptr;
};

void AddGlobalOptions(CLI::App& app, Args& a) {
  Global& g = a.g;
  app.add_option("-o,--format", a.format, "output: table, csv or json")
      ->check(CLI::IsMember({"table", "csv", "json"}))
      ->capture_default_str();
  app.add_option("--server", g.server, "host:port of the server")
      ->envname("DROPNET_SERVER")
      ->capture_default_str();
  g.timeout_opt =
      app.add_option("--timeout", g.timeout, "seconds each call may take (training excepted)")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
  app.add_flag("--tls", g.tls, "connect with TLS (system roots unless --ca)");
  app.add_option("--ca", g.ca, "CA certificate (PEM) to verify the server; implies --tls")
      ->check(CLI::ExistingFile);
  app.add_option("--cert", g.cert, "client certificate (PEM) for mutual TLS")
      ->check(CLI::ExistingFile);
  app.add_option("--key", g.key, "client key (PEM) for mutual TLS")->check(CLI::ExistingFile);
  app.add_option("--token-file", g.token_file, "file holding the bearer token (else DROPNET_TOKEN)")
      ->check(CLI::ExistingFile);
}

void AddModelCommands(CLI::App& app, Args& a) {
  a.health = app.add_subcommand("health", "is the server serving?");
  a.health->add_option("--service", a.health_service, "a service name (default: the whole server)");

  auto* models = app.add_subcommand("models", "list, inspect, create and delete models");
  models->require_subcommand(1);
  a.m_list = models->add_subcommand("list", "all models");
  a.m_get = models->add_subcommand("get", "one model: spec, versions, history");
  a.m_get->add_option("name", a.name)->required();
  a.m_create = models->add_subcommand("create", "create a model from a spec file (JSON)");
  a.m_create->add_option("name", a.name)->required();
  a.m_create->add_option("--spec", a.spec, "ModelSpec as JSON, e.g. examples/fashion_mlp.json")
      ->required()
      ->check(CLI::ExistingFile);
  a.m_delete = models->add_subcommand("delete", "delete a model and all its versions");
  a.m_delete->add_option("name", a.name)->required();
  a.m_label =
      models->add_subcommand("label", "point a label at a version: models label m stable 12");
  a.m_label->add_option("name", a.name)->required();
  a.m_label->add_option("label", a.label, "e.g. stable, canary")->required();
  a.m_label->add_option("version", a.label_version)->required()->check(CLI::PositiveNumber);
  a.m_unlabel = models->add_subcommand("unlabel", "remove a label: models unlabel m canary");
  a.m_unlabel->add_option("name", a.name)->required();
  a.m_unlabel->add_option("label", a.label)->required();
  a.m_set = models->add_subcommand("set", "change a model's serving label or retention");
  a.m_set->add_option("name", a.name)->required();
  for (auto* s : {a.m_create, a.m_set}) {
    s->add_option("--serving-label", a.serving_label,
                  "label that calls without a version get (\"\": the newest version)");
    s->add_option("--keep-versions", a.keep_versions,
                  "newest versions kept (0: the server's default)");
  }
  a.m_import = models->add_subcommand("import", "create a model from an ONNX file");
  a.m_import->add_option("name", a.name)->required();
  a.m_import->add_option("file", a.path, "the .onnx file")->required()->check(CLI::ExistingFile);
  a.m_import
      ->add_option("--task", a.import_task,
                   "classification or regression (default: from "
                   "the file; a softmax head means classification)")
      ->check(CLI::IsMember({"classification", "regression"}));
  a.m_export = models->add_subcommand("export", "write a model version as an ONNX file");
  a.m_export->add_option("name", a.name)->required();
  a.m_export->add_option("--format", a.export_format, "file format")
      ->check(CLI::IsMember({"onnx"}))
      ->capture_default_str();
  a.m_export->add_option("--model-version", a.export_version, "version (default: the served one)")
      ->check(CLI::NonNegativeNumber);
  a.m_export
      ->add_option("--mode", a.export_mode,
                   "eval (dropout off in ONNX Runtime) or train (dropout samples)")
      ->check(CLI::IsMember({"eval", "train"}))
      ->capture_default_str();
  a.m_export->add_option("-o,--output", a.export_file, "the .onnx file to write")->required();
}

void AddDataCommands(CLI::App& app, Args& a) {
  auto* data = app.add_subcommand("data", "upload, import, list and delete data sets");
  data->require_subcommand(1);
  a.d_upload = data->add_subcommand("upload", "upload a CSV file (header row, numbers)");
  a.d_upload->add_option("name", a.name)->required();
  a.d_upload->add_option("file", a.path)->required()->check(CLI::ExistingFile);
  a.d_import =
      data->add_subcommand("import", "read a CSV or IDX file under the server's data root");
  a.d_import->add_option("name", a.name)->required();
  a.d_import->add_option("path", a.path, "CSV file, or IDX images, relative to the data root")
      ->required();
  a.d_import->add_option("labels", a.labels, "IDX labels file, relative to the data root");
  a.d_import->add_option("--limit", a.limit, "keep only the first N rows");
  for (auto* s : {a.d_upload, a.d_import}) {
    s->add_option("--target", a.target, "target column (default: the last)");
    s->add_option("--task", a.task)
        ->check(CLI::IsMember({"classification", "regression"}))
        ->capture_default_str();
    s->add_flag("--overwrite", a.overwrite, "replace a data set of that name");
  }
  a.d_list = data->add_subcommand("list", "all data sets");
  a.d_delete = data->add_subcommand("delete", "delete a data set");
  a.d_delete->add_option("name", a.name)->required();
  a.d_split = data->add_subcommand(
      "split", "cut a stored data set into new ones (default NAME-train and NAME-test)");
  a.d_split->add_option("name", a.name)->required();
  a.d_split->add_option("--fractions", a.fractions, "one per part, summing to 1")
      ->delimiter(',')
      ->capture_default_str();
  a.d_split->add_option("--seed", a.split_seed, "row shuffle seed")->capture_default_str();
  a.d_split->add_option("--names", a.split_names, "names of the parts, comma-separated")
      ->delimiter(',');
  a.d_split->add_flag("--overwrite", a.overwrite, "replace data sets of those names");
}

void AddTrainCommand(CLI::App& app, Args& a) {
  a.train = app.add_subcommand(
      "train",
      "train a model, with live progress (-o json|csv: a record per event); Ctrl-C cancels");
  auto* train = a.train;
  train->add_option("model", a.name)->required();
  train->add_option("--data", a.data_name, "data set to train on")->required();
  train->add_option("--epochs", a.epochs)->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--batch-size", a.batch)->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--lr", a.lr, "learning rate (default 0.001, SGD 0.01)");
  train->add_option("--optimizer", a.optimizer)
      ->check(CLI::IsMember({"sgd", "adam", "adamw"}))
      ->capture_default_str();
  train->add_option("--weight-decay", a.wd)->capture_default_str();
  train->add_option("--max-norm", a.max_norm, "max-norm constraint on incoming weights (0: off)");
  train->add_option("--validation-split", a.vsplit)->capture_default_str();
  train->add_option("--early-stopping", a.patience,
                    "patience in epochs (needs --validation-split)");
  train->add_option("--seed", a.tseed)->capture_default_str();
  train->add_flag("--standardize", a.standardize,
                  "fit per-feature standardisation on the training rows");
  a.report_every_opt =
      train
          ->add_option("--report-every", a.report_every,
                       "a step event every N steps, in every format (0: epoch events only; "
                       "default: 10 when stdout is a terminal, else 0)")
          ->check(CLI::NonNegativeNumber);
}

void AddPredictCommands(CLI::App& app, Args& a) {
  a.predict = app.add_subcommand("predict", "eval-mode predictions for the rows of a CSV file");
  a.predict->add_option("model", a.name)->required();
  a.unc = app.add_subcommand("uncertainty", "Monte-Carlo dropout: prediction, std, entropy, MI");
  a.unc->add_option("model", a.name)->required();
  a.unc->add_option("--samples,-T", a.samples, "stochastic passes T")->capture_default_str();
  a.seed_opt = a.unc->add_option("--seed", a.seed, "mask seed (default: the server picks; echoed)");
  a.unc->add_flag("--return-samples", a.return_samples,
                  "print the T samples' outputs instead (-o json: [T][rows][outputs]; -o csv: "
                  "sample,row,out0,...; table: the votes or range per row)");
  for (auto* s : {a.predict, a.unc}) {
    s->add_option("--input", a.input, "CSV file with a header row")
        ->required()
        ->check(CLI::ExistingFile);
    s->add_option("--target", a.target, "a column to ignore (the target)");
    s->add_option("--output", a.output, "write to this file instead of stdout");
    s->add_option("--protocol", a.protocol,
                  "v1 (dropnet.v1) or v2 (the Open Inference Protocol's ModelInfer, KServe v2)")
        ->check(CLI::IsMember({"v1", "v2"}))
        ->capture_default_str();
  }

  a.evaluate = app.add_subcommand("evaluate", "score a stored, labelled data set");
  a.evaluate->add_option("model", a.name)->required();
  a.evaluate->add_option("--data", a.data_name)->required();
  a.evaluate->add_option("--mc-samples", a.mc_samples,
                         "Monte-Carlo dropout with T passes (0: eval mode)");
  a.eval_seed = a.evaluate->add_option("--seed", a.seed, "Monte-Carlo seed");
  a.evaluate->add_option("--limit", a.limit, "only the first N rows");
  // `--version` alone prints the program's version.
  for (auto* s : {a.predict, a.unc, a.evaluate}) {
    s->add_option("--model-version", a.model_version,
                  "the model version: a number (12), a label (stable) or the model's default");
  }
}

void AddBenchAndDemo(CLI::App& app, Args& a) {
  cli::BenchOptions& bo = a.bench_options;
  a.bench = app.add_subcommand(
      "bench", "load test: latency and throughput of health, Predict and PredictUncertainty");
  auto* bench = a.bench;
  bench->add_option("model", bo.model)->required();
  bench
      ->add_option("--concurrency,-c", bo.concurrency,
                   "concurrent callers, one level after another")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  auto* bench_duration =
      bench
          ->add_option("--duration", bo.duration_seconds, "measured seconds per workload and level")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
  bench
      ->add_option("--count", bo.count,
                   "measured calls per workload and level, instead of --duration")
      ->check(CLI::PositiveNumber)
      ->excludes(bench_duration);
  bench->add_option("--warmup", bo.warmup_seconds, "unrecorded seconds before each measurement")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  bench
      ->add_option("--workloads", a.bench_workloads,
                   "any of health, predict (1 row), predict-batch, uncertainty (1 row), infer "
                   "(KServe v2 ModelInfer, 1 row), rest (KServe v2 REST infer, 1 row; --http)")
      ->delimiter(',')
      ->capture_default_str()
      ->check(
          CLI::IsMember({"health", "predict", "predict-batch", "uncertainty", "infer", "rest"}));
  bench->add_option("--http", bo.http, "host:port of the server's HTTP port (rest workload)")
      ->envname("DROPNET_HTTP");
  bench->add_option("--batch", bo.batch, "rows of the predict-batch workload")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  bench->add_option("--samples,-T", bo.samples, "T of the uncertainty workload")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  bench
      ->add_option("--data", bo.data_path,
                   "CSV rows to send (default: uniform random values in [0, 1))")
      ->check(CLI::ExistingFile);
  bench->add_option("--target", bo.target_column, "a CSV column to leave out");
  bench->add_option("--seed", bo.seed, "picks the rows")->capture_default_str();
  bench->add_flag("--shared-channel", a.bench_shared,
                  "every worker on one channel (one connection) instead of one each");
  bench->add_flag("--json", a.bench_json, "machine-readable results on stdout (as -o json)");
  bench->add_flag("--quiet,-q", a.bench_quiet, "no progress lines on stderr");

  a.demo = app.add_subcommand("demo", "a tour: a confident and an ambiguous item side by side");
  a.demo->add_option("--data-dir", a.demo_data, "Fashion-MNIST IDX directory")
      ->capture_default_str();
  a.demo->add_option("--wait", a.demo_wait, "seconds to wait for a trained version of the model")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

int RunBench(const dc::ClientOptions& client_options, Args& a) {
  a.bench_options.workloads.clear();
  for (const auto& w : a.bench_workloads) {
    a.bench_options.workloads.push_back(cli::ParseWorkload(w));
  }
  a.bench_options.shared_channel = a.bench_shared;
  auto report =
      cli::RunBench(client_options, a.bench_options, a.bench_quiet ? nullptr : &std::cerr);
  if (a.bench_json || a.format == "json")
    std::cout << report.ToJson().dump(2) << "\n";
  else if (a.format == "csv")
    report.PrintCsv(std::cout);
  else
    report.PrintTable(std::cout);
  int64_t errors = 0;
  for (const auto& r : report.results) errors += r.errors;
  return errors ? 1 : 0;
}

v1::Task TaskOf(const std::string& task) {
  return task == "regression" ? v1::TASK_REGRESSION : v1::TASK_CLASSIFICATION;
}

// models label, unlabel and set. nullopt: not one of them.
std::optional<int> RunLabelCommand(dc::Client& c, const Args& a, cli::Format f) {
  std::optional<v1::ModelInfo> info;
  if (*a.m_label) info = c.SetVersionLabel(a.name, a.label, a.label_version);
  if (*a.m_unlabel) info = c.RemoveVersionLabel(a.name, a.label);
  if (*a.m_set) {
    v1::UpdateModelRequest req;
    req.set_model(a.name);
    // The options were added to create and set in turn: look them up on `set` by name.
    if (a.m_set->get_option("--serving-label")->count()) req.set_serving_label(a.serving_label);
    if (a.m_set->get_option("--keep-versions")->count()) req.set_keep_versions(a.keep_versions);
    info = c.UpdateModel(req);
  }
  if (!info) return std::nullopt;
  if (f == cli::Format::kJson) return cli::PrintModel(*info, f), 0;
  std::cout << "model '" << info->name() << "' serves version " << info->version();
  if (!info->serving_label().empty()) std::cout << " (label " << info->serving_label() << ")";
  std::cout << "\n";
  cli::VersionsTable(*info).Print(std::cout, cli::Format::kTable);
  return 0;
}

// models and data: the commands that manage what the server stores. nullopt: not one of them.
std::optional<int> RunStoreCommand(dc::Client& c, const Args& a, cli::Format f) {
  if (*a.health) return cli::Health(c, a.health_service);
  if (*a.m_list) return cli::ModelsTable(c.ListModels()).Print(std::cout, f), 0;
  if (*a.m_get) return cli::PrintModel(c.GetModel(a.name), f), 0;
  if (auto rc = RunLabelCommand(c, a, f)) return *rc;
  if (*a.m_create) {
    v1::CreateModelRequest req;
    req.set_name(a.name);
    *req.mutable_spec() = dc::ReadSpecFile(a.spec);
    req.set_serving_label(a.serving_label);
    req.set_keep_versions(a.keep_versions);
    auto info = c.CreateModel(req);
    std::cout << "created model '" << info.name() << "': " << info.parameter_count()
              << " parameters, version " << info.version() << "\n";
    return 0;
  }
  if (*a.m_import) return cli::ImportModelCommand(c, a.name, a.path, a.import_task);
  if (*a.m_export) {
    v1::ExportModelRequest r;
    r.set_name(a.name);
    r.set_version(a.export_version);
    r.set_format(v1::MODEL_FORMAT_ONNX);
    r.set_mode(a.export_mode == "train" ? v1::EXPORT_MODE_TRAIN : v1::EXPORT_MODE_EVAL);
    return cli::ExportModelCommand(c, r, a.export_file);
  }
  if (*a.m_delete) {
    c.DeleteModel(a.name);
    std::cout << "deleted model '" << a.name << "'\n";
    return 0;
  }
  if (*a.d_upload) {
    std::ifstream in(a.path, std::ios::binary);
    std::string csv((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    v1::DatasetHeader h;
    h.set_name(a.name);
    h.set_task(TaskOf(a.task));
    h.set_target_column(a.target);
    h.set_overwrite(a.overwrite);
    cli::PrintDataset(c.UploadCsv(h, csv, 1 << 20, dc::CallOptions{std::chrono::minutes(10)}));
    return 0;
  }
  if (*a.d_import) {
    v1::ImportDatasetRequest r;
    r.set_name(a.name);
    r.set_path(a.path);
    r.set_label_path(a.labels);
    r.set_task(TaskOf(a.task));
    r.set_target_column(a.target);
    r.set_overwrite(a.overwrite);
    r.set_limit(a.limit);
    cli::PrintDataset(c.ImportDataset(r, dc::CallOptions{std::chrono::minutes(10)}));
    return 0;
  }
  if (*a.d_list) return cli::DatasetsTable(c.ListDatasets()).Print(std::cout, f), 0;
  if (*a.d_split) {
    v1::SplitDatasetRequest r;
    r.set_name(a.name);
    for (double v : a.fractions) r.add_fractions(v);
    for (const auto& n : a.split_names) r.add_output_names(n);
    r.set_seed(a.split_seed);
    r.set_overwrite(a.overwrite);
    return cli::DatasetsTable(c.SplitDataset(r, dc::CallOptions{std::chrono::minutes(10)}))
               .Print(std::cout, f),
           0;
  }
  if (*a.d_delete) {
    c.DeleteDataset(a.name);
    std::cout << "deleted data set '" << a.name << "'\n";
    return 0;
  }
  return std::nullopt;
}

int RunTrain(dc::Client& c, const Args& a, cli::Format f) {
  v1::TrainRequest treq;
  treq.set_model(a.name);
  treq.set_dataset(a.data_name);
  treq.set_epochs(a.epochs);
  treq.set_batch_size(a.batch);
  treq.set_optimizer(a.optimizer == "sgd"     ? v1::OPTIMIZER_SGD
                     : a.optimizer == "adamw" ? v1::OPTIMIZER_ADAMW
                                              : v1::OPTIMIZER_ADAM);
  treq.set_learning_rate(a.lr);
  treq.set_weight_decay(a.wd);
  treq.set_max_norm(a.max_norm);
  treq.set_validation_split(a.vsplit);
  treq.set_early_stopping_patience(a.patience);
  treq.set_seed(a.tseed);
  treq.set_standardize(a.standardize);
  const auto info = c.GetModel(a.name);
  return cli::TrainCommand(
      c, treq, info.spec().task() == v1::TASK_REGRESSION ? "rmse" : "acc", f,
      a.report_every_opt->count() ? std::optional<int>(a.report_every) : std::nullopt);
}

int Run(const Args& a, const dc::ClientOptions& client_options) {
  dc::Client c(client_options);
  const cli::Format f = cli::ParseFormat(a.format);
  if (auto rc = RunStoreCommand(c, a, f)) return *rc;
  if (*a.train) return RunTrain(c, a, f);
  const bool v2 = a.protocol == "v2";
  if (*a.predict) {
    return cli::PredictCommand(c, a.name, a.model_version, a.input, a.target, f, a.output, v2);
  }
  if (*a.unc) {
    return cli::UncertaintyCommand(
        c, a.name, a.model_version, a.input, a.target, a.samples,
        a.seed_opt->count() ? std::optional<uint64_t>(a.seed) : std::nullopt, f, a.output, v2,
        a.return_samples);
  }
  if (*a.evaluate) {
    return cli::EvaluateCommand(
        c, a.name, a.model_version, a.data_name, a.mc_samples,
        a.eval_seed->count() ? std::optional<uint64_t>(a.seed) : std::nullopt, a.limit, f);
  }
  if (*a.rank.command) return cli::RankCommand(c, a.rank, f);
  if (*a.demo) return cli::Demo(c, a.demo_data, a.demo_wait);
  return 0;
}

void AddHelpCommands(CLI::App& app, Args& a) {
  a.help = app.add_subcommand("help", "help about any command: dropnet help models list");
  a.help->add_option("command", a.help_words, "the command words");
  a.completion =
      app.add_subcommand("completion", "a shell completion script: dropnet completion bash");
  a.completion->add_option("shell", a.shell)->required()->check(CLI::IsMember({"bash"}));
}

// `dropnet help [COMMAND...]`: that command's help on stdout.
int RunHelp(const CLI::App& app, const Args& a) {
  std::vector<std::string> path;
  for (const auto& w : a.help_words) {
    const CLI::App* parent = cli::FindCommand(app, path);
    path.push_back(w);
    if (cli::FindCommand(app, path) == nullptr) {
      std::cerr << "dropnet: unknown help topic '" << w << "'";
      if (auto near = cli::NearestName(w, cli::SubcommandNames(*parent))) {
        std::cerr << ", did you mean '" << *near << "'?";
      }
      std::cerr << "\n";
      return 2;
    }
  }
  // Usage lines name the whole command: "dropnet models list".
  std::string name = "dropnet";
  for (const auto& w : path) name += " " + w;
  const CLI::App* command = cli::FindCommand(app, path);
  std::cout << command->get_formatter()->make_help(command, name, CLI::AppFormatMode::Normal);
  return 0;
}

// The client's options; evaluate and rank, which may run Monte-Carlo dropout over a whole data
// set, get ten minutes unless --timeout says otherwise.
dc::ClientOptions ClientOptionsFor(const Args& a) {
  dc::ClientOptions o = MakeClientOptions(a.g);
  if ((*a.evaluate || *a.rank.command) && a.g.timeout_opt->count() == 0)
    o.deadline = std::chrono::minutes(10);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dropnet: train, query and inspect models on a dropnet server"};
  app.name("dropnet");
  app.require_subcommand(1);
  app.fallthrough();  // global options anywhere on the line, as kubectl takes them
  app.set_version_flag("--version", std::string("dropnet ") + DROPNET_VERSION);
  Args a;
  AddGlobalOptions(app, a);
  AddModelCommands(app, a);
  AddDataCommands(app, a);
  AddTrainCommand(app, a);
  AddPredictCommands(app, a);
  cli::AddRankCommand(app, a.rank);
  AddBenchAndDemo(app, a);
  AddHelpCommands(app, a);
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {  // as git: the command list, exit status 1
    std::cout << app.help();
    return 1;
  }
  if (const std::string message = cli::CheckCommandWords(app, args); !message.empty()) {
    std::cerr << "dropnet: " << message << "\nRun 'dropnet help' for the list of commands.\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  if (*a.help) return RunHelp(app, a);
  if (*a.completion) {
    cli::WriteBashCompletion(app, "dropnet", std::cout);
    return 0;
  }
  try {
    const dc::ClientOptions client_options = ClientOptionsFor(a);
    if (*a.bench) return RunBench(client_options, a);
    return Run(a, client_options);
  } catch (const dc::ClientError& e) {
    std::cerr << "dropnet: " << e.code_name() << ": " << e.what() << "\n";
    if (e.code() == grpc::StatusCode::UNAVAILABLE) {
      std::cerr << "(is dropnet-server running at " << a.g.server
                << "? scripts/run.sh starts one)\n";
    }
    if (e.code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      std::cerr << "(the call took longer than its deadline; give it more time with --timeout "
                   "SECONDS)\n";
    }
    return 10 + static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::cerr << "dropnet: " << e.what() << "\n";
    return 1;
  }
}
