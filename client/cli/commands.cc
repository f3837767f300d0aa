#include "client/cli/commands.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/cli/oip_client.h"
#include "client/cli/records.h"

namespace dropnet::cli {
namespace {

namespace dc = dropnet::client;
using json = nlohmann::json;

}  // namespace

dc::Matrix ReadInputs(dc::Client& client, const std::string& model, const std::string& path,
                      const std::string& target) {
  const auto info = client.GetModel(model);
  int64_t width = 1;
  for (int d : info.spec().input_shape()) width *= d;
  auto table = dc::ReadCsvFile(path, target);
  if (target.empty() && table.values.cols() == width + 1) {
    std::cerr << "note: " << path << " has one column more than model '" << model
              << "' takes; ignoring the last column ('" << table.header.back()
              << "') as the target\n";
    dc::Matrix x = table.values.leftCols(width);
    return x;
  }
  if (table.values.cols() != width) {
    throw std::runtime_error(path + " has " + std::to_string(table.values.cols()) +
                             " feature columns, model '" + model + "' takes " +
                             std::to_string(width));
  }
  return table.values;
}

int Health(dc::Client& c, const std::string& service) {
  const bool ok = c.Healthy(service);
  std::cout << (ok ? "SERVING" : "NOT_SERVING") << "\n";
  return ok ? 0 : 1;
}

int ImportModelCommand(dc::Client& c, const std::string& name, const std::string& path,
                       const std::string& task) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw std::runtime_error("cannot read '" + path + "'");
  const v1::Task t = task.empty()           ? v1::TASK_UNSPECIFIED
                     : task == "regression" ? v1::TASK_REGRESSION
                                            : v1::TASK_CLASSIFICATION;
  const auto info = c.ImportModel(name, bytes, t, dc::CallOptions{std::chrono::minutes(5)});
  std::cout << "imported model '" << info.name() << "' from " << path << ": "
            << info.spec().layers_size() << " layers, " << info.parameter_count() << " parameters, "
            << TaskName(info.spec().task()) << ", " << (info.stochastic() ? "with" : "without")
            << " a stochastic layer (Monte-Carlo dropout "
            << (info.stochastic() ? "available" : "unavailable") << ")\n";
  return 0;
}

int ExportModelCommand(dc::Client& c, const v1::ExportModelRequest& request,
                       const std::string& path) {
  const auto resp = c.ExportModel(request, dc::CallOptions{std::chrono::minutes(5)});
  for (const auto& w : resp.warnings()) std::cerr << "warning: " << w << "\n";
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(resp.onnx_model().data(), static_cast<std::streamsize>(resp.onnx_model().size()));
  out.close();
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
  std::cout << "wrote model '" << request.name() << "' version " << resp.version() << " to " << path
            << " (" << resp.onnx_model().size() << " bytes, ONNX)\n";
  return 0;
}

Table ModelsTable(const std::vector<v1::ModelInfo>& models) {
  Table t;
  t.header = {"name", "task", "input", "parameters", "version", "epochs", "training"};
  for (const auto& m : models) {
    t.rows.push_back({m.name(), TaskName(m.spec().task()), ShapeText(m.spec().input_shape()),
                      std::to_string(m.parameter_count()), std::to_string(m.version()),
                      std::to_string(m.history_size()), m.training() ? "yes" : "no"});
    t.json_rows.push_back({{"name", m.name()},
                           {"task", TaskName(m.spec().task())},
                           {"parameters", m.parameter_count()},
                           {"version", m.version()},
                           {"epochs", m.history_size()},
                           {"training", m.training()}});
  }
  return t;
}

namespace {
// How the model transforms a request's inputs, in one line.
std::string InputTransformText(const v1::ModelInfo& m) {
  std::string s;
  if (m.input_scale() != 0 && m.input_scale() != 1.0f) {
    s = "x * " + std::to_string(m.input_scale());
    if (std::abs(m.input_scale() * 255.0f - 1.0f) < 1e-6f) s += " (1/255: send raw 0..255 pixels)";
  }
  if (m.input_standardization().mean_size() > 0) {
    s += std::string(s.empty() ? "" : ", then ") + "standardised per feature (" +
         std::to_string(m.input_standardization().mean_size()) + " means and scales)";
  }
  return s.empty() ? "as given" : s;
}
}  // namespace

void PrintModel(const v1::ModelInfo& m, Format f) {
  if (f == Format::kJson) {
    std::cout << Json(m) << "\n";
    return;
  }
  std::cout << "model       " << m.name() << "\n"
            << "task        " << TaskName(m.spec().task()) << "\n"
            << "input       " << ShapeText(m.spec().input_shape()) << "\n"
            << "outputs     " << m.output_size() << "\n"
            << "parameters  " << m.parameter_count() << "\n"
            << "version     " << m.version() << " (of";
  for (auto v : m.versions()) std::cout << " " << v;
  std::cout << ")\n"
            << "training    " << (m.training() ? "yes" : "no") << "\n"
            << "steps       " << m.steps() << "\n";
  if (!m.spec().description().empty()) {
    std::cout << "about       " << m.spec().description() << "\n";
  }
  if (m.class_names_size()) {
    std::cout << "classes    ";
    for (int i = 0; i < m.class_names_size(); ++i)
      std::cout << (i ? ", " : " ") << m.class_names(i);
    std::cout << "\n";
  }
  std::cout << "inputs      " << InputTransformText(m) << "\n";
  if (m.target_standardization().mean_size() > 0) {
    std::cout << "targets     standardised, answers in the target's units (mean";
    for (float v : m.target_standardization().mean()) std::cout << " " << v;
    std::cout << ", scale";
    for (float v : m.target_standardization().scale()) std::cout << " " << v;
    std::cout << ")\n";
  }
  std::cout << "layers\n";
  for (int i = 0; i < m.spec().layers_size(); ++i) {
    const auto& l = m.spec().layers(i);
    std::cout << "  " << std::setw(2) << i << "  " << l.type();
    if (l.units()) std::cout << " " << l.units();
    if (l.rate() > 0) std::cout << " rate " << l.rate();
    const v1::LearnedRateRange* range = nullptr;
    for (const auto& r : m.learned_rate_ranges())
      if (r.layer() == i) range = &r;
    auto it = m.learned_rates().find(i);
    if (range && range->count() > 1) {
      std::cout << " (learned rates min " << Fixed(range->min()) << ", mean "
                << Fixed(range->mean()) << ", max " << Fixed(range->max()) << ")";
    } else if (it != m.learned_rates().end()) {
      std::cout << " (learned rate " << Fixed(it->second) << ")";
    }
    auto pruned = m.pruned_fraction().find(i);
    if (pruned != m.pruned_fraction().end()) {
      std::cout << " (pruned " << Fixed(100 * pruned->second, 1) << "%)";
    }
    std::cout << "\n";
  }
  if (m.version_details_size()) {
    std::cout << "versions\n";
    VersionsTable(m).Print(std::cout, Format::kTable);
  }
  if (m.history_size()) {
    std::cout << "history\n";
    Table t;
    t.header = {"  epoch",  "version",    "loss",      "metric",
                "val_loss", "val_metric", "samples/s", "data"};
    for (const auto& h : m.history()) {
      t.rows.push_back({"  " + std::to_string(h.epoch()), std::to_string(h.version()),
                        Fixed(h.loss()), Fixed(h.metric()), Fixed(h.val_loss()),
                        Fixed(h.val_metric()), Fixed(h.samples_per_second(), 0), h.dataset()});
    }
    t.Print(std::cout, Format::kTable);
  }
}

Table VersionsTable(const v1::ModelInfo& m) {
  Table t;
  t.header = {"  version", "labels",     "status", "epoch", "loss",
              "metric",    "val_metric", "bytes",  "note"};
  for (const auto& d : m.version_details()) {
    std::string labels;
    for (const auto& l : d.labels()) labels += (labels.empty() ? "" : ",") + l;
    if (d.version() == m.version()) labels += labels.empty() ? "(served)" : " (served)";
    if (d.best()) labels += labels.empty() ? "(best)" : " (best)";
    const bool corrupt = d.status() == v1::VersionInfo::STATUS_CORRUPT;
    t.rows.push_back({"  " + std::to_string(d.version()), labels.empty() ? "-" : labels,
                      corrupt ? "corrupt" : "ok",
                      d.has_epoch() ? std::to_string(d.epoch().epoch()) : "-",
                      d.has_epoch() ? Fixed(d.epoch().loss()) : "-",
                      d.has_epoch() ? Fixed(d.epoch().metric()) : "-",
                      d.has_epoch() ? Fixed(d.epoch().val_metric()) : "-",
                      std::to_string(d.size_bytes()), corrupt ? d.error() : d.note()});
  }
  return t;
}

Table DatasetsTable(const std::vector<v1::DatasetInfo>& ds) {
  Table t;
  t.header = {"name", "task", "rows", "input", "classes", "source"};
  for (const auto& d : ds) {
    t.rows.push_back(
        {d.name(), TaskName(d.task()), std::to_string(d.rows()), ShapeText(d.input_shape()),
         d.task() == v1::TASK_CLASSIFICATION ? std::to_string(d.num_classes()) : "-", d.source()});
    t.json_rows.push_back({{"name", d.name()},
                           {"task", TaskName(d.task())},
                           {"rows", d.rows()},
                           {"num_classes", d.num_classes()},
                           {"source", d.source()}});
  }
  return t;
}

void PrintDataset(const v1::DatasetInfo& d) {
  std::cout << "data set '" << d.name() << "': " << d.rows() << " rows of "
            << ShapeText(d.input_shape()) << ", " << TaskName(d.task());
  if (d.task() == v1::TASK_CLASSIFICATION) std::cout << ", " << d.num_classes() << " classes";
  std::cout << "\n";
}

int TrainCommand(dc::Client& c, v1::TrainRequest req, const std::string& metric_name, Format f,
                 std::optional<int> report_every) {
  const bool tty = ::isatty(STDOUT_FILENO);
  req.set_report_every_steps(report_every.value_or(tty ? 10 : 0));
  CatchInterrupts();
  if (f == Format::kCsv) {
    const auto columns = TrainEventColumns(metric_name);
    for (size_t i = 0; i < columns.size(); ++i) std::cout << (i ? "," : "") << columns[i];
    std::cout << "\n";
  }
  try {
    c.Train(
        req,
        [&](const v1::TrainEvent& e) {
          if (f == Format::kTable) {
            PrintTrainEventText(e, req, metric_name, tty);
          } else {
            PrintTrainEventRecord(e, TrainEventKind(e.kind()), metric_name, f);
          }
          std::cout << std::flush;
        },
        Interrupted);
  } catch (const dc::ClientError& e) {
    if (Interrupted()) {
      if (tty && f == Format::kTable) std::cout << "\r\033[K";
      // The server stops between steps; wait until it has let go of the model, so that the
      // version reported is the one it keeps.
      auto info = c.GetModel(req.model());
      for (int i = 0; i < 200 && info.training(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        info = c.GetModel(req.model());
      }
      if (f == Format::kTable) {
        std::cout << "cancelled: model '" << req.model() << "' keeps version " << info.version()
                  << "\n";
      } else {
        v1::TrainEvent kept;
        kept.set_version(info.version());
        kept.set_val_loss(std::nan(""));
        kept.set_val_metric(std::nan(""));
        PrintTrainEventRecord(kept, "cancelled", metric_name, f);
      }
      return 130;
    }
    throw;
  }
  return 0;
}

namespace {
// Row i of m as a JSON array of exact numbers.
json JsonRow(const dc::Matrix& m, int64_t i) {
  json a = json::array();
  for (int64_t j = 0; j < m.cols(); ++j) a.push_back(JsonNumber(m(i, j)));
  return a;
}
}  // namespace

int PredictCommand(dc::Client& c, const std::string& model, const std::string& version,
                   const std::string& input, const std::string& target, Format f,
                   const std::string& output, bool v2) {
  dc::Matrix x = ReadInputs(c, model, input, target);
  auto r = v2 ? PredictV2(c, model, version, x) : c.Predict(model, version, x);
  dc::Matrix out = dc::ToMatrix(r.outputs());
  // Gaussian NLL heads: the predicted (aleatoric) variance of each target.
  const bool has_var = r.variances().values_size() > 0;
  dc::Matrix var = has_var ? dc::ToMatrix(r.variances()) : dc::Matrix();
  Table t;
  t.header = {"row", "version"};
  const bool classify = r.task() != v1::TASK_REGRESSION;
  if (classify) t.header.push_back("class"), t.header.push_back("probability");
  for (int64_t j = 0; j < out.cols(); ++j) {
    t.header.push_back((classify ? "p" : "y") + std::to_string(j));
  }
  for (int64_t j = 0; has_var && j < var.cols(); ++j) t.header.push_back("var" + std::to_string(j));
  for (int64_t i = 0; i < out.rows(); ++i) {
    std::vector<std::string> row = {std::to_string(i), std::to_string(r.version())};
    json jr = {{"row", i}, {"version", r.version()}};
    if (classify) {
      const int k = r.predicted_class(static_cast<int>(i));
      row.push_back(std::to_string(k));
      row.push_back(Cell(out(i, k), f));
      jr["class"] = k;
      jr["probability"] = JsonNumber(out(i, k));
      jr["probabilities"] = JsonRow(out, i);
    } else {
      jr["values"] = JsonRow(out, i);
    }
    if (has_var) jr["variances"] = JsonRow(var, i);
    for (int64_t j = 0; j < out.cols(); ++j) row.push_back(Cell(out(i, j), f));
    for (int64_t j = 0; has_var && j < var.cols(); ++j) row.push_back(Cell(var(i, j), f));
    t.rows.push_back(row);
    t.json_rows.push_back(jr);
  }
  Emit(t, f, output);
  std::cerr << "model '" << model << "' version " << r.version() << ", eval mode, " << out.rows()
            << " rows\n";
  return 0;
}

int UncertaintyCommand(dc::Client& c, const std::string& model, const std::string& version,
                       const std::string& input, const std::string& target, int samples,
                       std::optional<uint64_t> seed, Format f, const std::string& output, bool v2,
                       bool return_samples) {
  if (v2 && return_samples) {
    throw std::runtime_error("--return-samples needs --protocol v1 (dropnet.v1)");
  }
  dc::Matrix x = ReadInputs(c, model, input, target);
  dc::UncertaintyOptions o;
  o.samples = samples;
  o.seed = seed;
  o.version = version;
  o.return_samples = return_samples;
  auto r =
      v2 ? UncertaintyV2(c, model, version, x, samples, seed) : c.PredictUncertainty(model, x, o);
  if (return_samples) {
    Emit(SamplesTable(r, f), f, output);
    std::cerr << "model '" << model << "' version " << r.version() << ", Monte-Carlo dropout, the "
              << r.num_samples() << " samples of " << x.rows() << " rows, seed " << r.seed()
              << (f == Format::kTable ? " (every sample's outputs: -o csv or -o json)" : "")
              << "\n";
    return 0;
  }
  dc::Matrix mean = dc::ToMatrix(r.mean()), sd = dc::ToMatrix(r.stddev());
  Table t;
  if (r.task() != v1::TASK_REGRESSION) {
    t.header = {"row", "version", "prediction",  "probability",
                "std", "entropy", "mutual_info", "variation_ratio"};
    for (int64_t i = 0; i < mean.rows(); ++i) {
      const int k = r.predicted_class(static_cast<int>(i));
      const int n = static_cast<int>(i);
      t.rows.push_back({std::to_string(i), std::to_string(r.version()), std::to_string(k),
                        Cell(mean(i, k), f), Cell(sd(i, k), f), Cell(r.predictive_entropy(n), f),
                        Cell(r.mutual_information(n), f), Cell(r.variation_ratio(n), f)});
      t.json_rows.push_back({{"row", i},
                             {"version", r.version()},
                             {"prediction", k},
                             {"probability", JsonNumber(mean(i, k))},
                             {"std", JsonNumber(sd(i, k))},
                             {"entropy", JsonNumber(r.predictive_entropy(n))},
                             {"expected_entropy", JsonNumber(r.expected_entropy(n))},
                             {"mutual_information", JsonNumber(r.mutual_information(n))},
                             {"variation_ratio", JsonNumber(r.variation_ratio(n))},
                             {"probabilities", JsonRow(mean, i)}});
    }
  } else {
    dc::Matrix tv = dc::ToMatrix(r.total_variance()), lo = dc::ToMatrix(r.lower()),
               hi = dc::ToMatrix(r.upper());
    t.header = {"row", "version", "target", "mean", "std", "total_variance", "lower", "upper"};
    for (int64_t i = 0; i < mean.rows(); ++i) {
      for (int64_t j = 0; j < mean.cols(); ++j) {
        t.rows.push_back({std::to_string(i), std::to_string(r.version()), std::to_string(j),
                          Cell(mean(i, j), f), Cell(sd(i, j), f), Cell(tv(i, j), f),
                          Cell(lo(i, j), f), Cell(hi(i, j), f)});
        t.json_rows.push_back({{"row", i},
                               {"version", r.version()},
                               {"target", j},
                               {"mean", JsonNumber(mean(i, j))},
                               {"std", JsonNumber(sd(i, j))},
                               {"total_variance", JsonNumber(tv(i, j))},
                               {"lower", JsonNumber(lo(i, j))},
                               {"upper", JsonNumber(hi(i, j))}});
      }
    }
  }
  Emit(t, f, output);
  std::cerr << "model '" << model << "' version " << r.version()
            << ", Monte-Carlo dropout, T = " << r.num_samples() << ", seed " << r.seed() << "\n";
  return 0;
}

namespace {
// EvaluateStream with its progress on stderr: a line redrawn in place on a terminal, otherwise a
// line a second and one at the end. Ctrl-C cancels: nullopt after "cancelled".
std::optional<v1::EvaluateResponse> EvaluateWithProgress(dc::Client& c,
                                                         const v1::EvaluateRequest& req) {
  const bool tty = ::isatty(STDERR_FILENO);
  CatchInterrupts();
  auto last_line = std::chrono::steady_clock::now();
  v1::EvaluateResponse r;
  try {
    r = c.EvaluateStream(
        req,
        [&](const v1::EvaluateEvent::Progress& p) {
          const double frac =
              static_cast<double>(p.rows_done()) / std::max<int64_t>(1, p.rows_total());
          const auto now = std::chrono::steady_clock::now();
          if (tty) {
            std::cerr << "\r\033[K evaluating '" << req.dataset() << "' [" << Bar(frac, 30) << "] "
                      << static_cast<int>(frac * 100) << "%  " << p.rows_done() << "/"
                      << p.rows_total() << " rows  " << std::fixed << std::setprecision(1)
                      << p.elapsed_seconds() << " s" << std::defaultfloat << std::flush;
          } else if (p.rows_done() == p.rows_total() ||
                     now - last_line >= std::chrono::seconds(1)) {
            last_line = now;
            std::cerr << "evaluated " << p.rows_done() << "/" << p.rows_total() << " rows in "
                      << std::fixed << std::setprecision(1) << p.elapsed_seconds() << " s\n"
                      << std::defaultfloat;
          }
        },
        Interrupted);
  } catch (const dc::ClientError&) {
    if (tty) std::cerr << "\r\033[K";
    if (Interrupted()) {
      std::cerr << "cancelled\n";
      return std::nullopt;
    }
    throw;
  }
  if (tty) std::cerr << "\r\033[K";
  return r;
}
}  // namespace

int EvaluateCommand(dc::Client& c, const std::string& model, const std::string& version,
                    const std::string& data, int mc, std::optional<uint64_t> seed, int64_t limit,
                    Format f) {
  v1::EvaluateRequest req;
  req.set_model(model);
  req.set_version(version);
  req.set_dataset(data);
  req.set_limit(limit);
  if (mc > 0) {
    req.set_mode(v1::EVAL_MODE_MONTE_CARLO);
    req.set_samples(mc);
    if (seed) req.set_seed(*seed);
  }
  const std::optional<v1::EvaluateResponse> done = EvaluateWithProgress(c, req);
  if (!done) return 130;
  const v1::EvaluateResponse& r = *done;
  if (f == Format::kJson) {
    std::cout << Json(r) << "\n";
    return 0;
  }
  Table t;
  t.header = {"model", "version", "data", "rows", "mode"};
  std::vector<std::string> row = {model, std::to_string(r.version()), data,
                                  std::to_string(r.rows()),
                                  mc > 0 ? "monte_carlo T=" + std::to_string(r.samples()) : "eval"};
  if (r.task() != v1::TASK_REGRESSION) {
    for (auto h : {"accuracy", "nll", "brier", "ece"}) t.header.push_back(h);
    for (double v : {r.accuracy(), r.nll(), r.brier(), r.ece()}) row.push_back(Fixed(v));
  } else {
    t.header.push_back("rmse");
    t.header.push_back("log_likelihood");
    row.push_back(Fixed(r.rmse()));
    row.push_back(Fixed(r.log_likelihood()));
  }
  t.rows.push_back(row);
  t.Print(std::cout, f);
  return 0;
}

}  // namespace dropnet::cli
