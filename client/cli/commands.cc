#include "client/cli/commands.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/cli/oip_client.h"

namespace dropnet::cli {
namespace {

namespace dc = dropnet::client;
using json = nlohmann::json;

std::atomic<bool> interrupted{false};

void OnSigint(int) { interrupted = true; }

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

int TrainCommand(dc::Client& c, v1::TrainRequest req, const std::string& metric_name) {
  const bool tty = ::isatty(STDOUT_FILENO);
  if (tty && req.report_every_steps() == 0) req.set_report_every_steps(10);
  std::signal(SIGINT, OnSigint);
  int64_t kept = 0;
  try {
    auto last = c.Train(
        req,
        [&](const v1::TrainEvent& e) {
          kept = e.version() ? e.version() : kept;
          switch (e.kind()) {
            case v1::TrainEvent::KIND_STARTED:
              std::cout << "training '" << req.model() << "' on '" << req.dataset()
                        << "': " << e.epochs() << " epochs, " << e.total_steps()
                        << " steps, from version " << e.version() << "\n";
              break;
            case v1::TrainEvent::KIND_STEP:
              if (tty) {
                const double frac =
                    static_cast<double>(e.step()) / std::max<int64_t>(1, e.total_steps());
                std::cout << "\r\033[K epoch " << e.epoch() << "/" << e.epochs() << " ["
                          << Bar(frac, 30) << "] " << std::setw(3) << static_cast<int>(frac * 100)
                          << "%  loss " << Fixed(e.loss()) << "  " << metric_name << " "
                          << Fixed(e.metric()) << "  " << Fixed(e.samples_per_second(), 0)
                          << " samples/s  ETA " << Duration(e.eta_seconds()) << std::flush;
              } else {
                std::cout << "step " << e.step() << "/" << e.total_steps() << " loss "
                          << Fixed(e.loss()) << "\n";
              }
              break;
            case v1::TrainEvent::KIND_EPOCH:
              if (tty) std::cout << "\r\033[K";
              std::cout << "epoch " << e.epoch() << "/" << e.epochs() << "  loss "
                        << Fixed(e.loss()) << "  " << metric_name << " " << Fixed(e.metric());
              if (!std::isnan(e.val_loss())) {
                std::cout << "  val_loss " << Fixed(e.val_loss()) << "  val_" << metric_name << " "
                          << Fixed(e.val_metric());
              }
              std::cout << "  " << Fixed(e.samples_per_second(), 0) << " samples/s  -> version "
                        << e.version() << "\n";
              break;
            case v1::TrainEvent::KIND_FINISHED:
              std::cout << "done: model '" << req.model() << "' published version " << e.version()
                        << (e.early_stopped() ? " (early stopping restored the best epoch)" : "")
                        << "\n";
              break;
            default:
              break;
          }
          std::cout << std::flush;
        },
        [] { return interrupted.load(); });
    (void)last;
  } catch (const dc::ClientError& e) {
    if (interrupted) {
      if (tty) std::cout << "\r\033[K";
      // The server stops between steps; wait until it has let go of the model, so that the
      // version reported is the one it keeps.
      auto info = c.GetModel(req.model());
      for (int i = 0; i < 200 && info.training(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        info = c.GetModel(req.model());
      }
      std::cout << "cancelled: model '" << req.model() << "' keeps version " << info.version()
                << "\n";
      return 130;
    }
    throw;
  }
  return 0;
}

int PredictCommand(dc::Client& c, const std::string& model, const std::string& version,
                   const std::string& input, const std::string& target, Format f,
                   const std::string& output, bool v2) {
  dc::Matrix x = ReadInputs(c, model, input, target);
  auto r = v2 ? PredictV2(c, model, version, x) : c.Predict(model, version, x);
  dc::Matrix out = dc::ToMatrix(r.outputs());
  Table t;
  t.header = {"row", "version"};
  const bool classify = r.task() != v1::TASK_REGRESSION;
  if (classify) t.header.push_back("class"), t.header.push_back("probability");
  for (int64_t j = 0; j < out.cols(); ++j) {
    t.header.push_back((classify ? "p" : "y") + std::to_string(j));
  }
  for (int64_t i = 0; i < out.rows(); ++i) {
    std::vector<std::string> row = {std::to_string(i), std::to_string(r.version())};
    json jr = {{"row", i}, {"version", r.version()}};
    if (classify) {
      const int k = r.predicted_class(static_cast<int>(i));
      row.push_back(std::to_string(k));
      row.push_back(Fixed(out(i, k)));
      jr["class"] = k;
      jr["probability"] = out(i, k);
      std::vector<float> probs(out.row(i).data(), out.row(i).data() + out.cols());
      jr["probabilities"] = probs;
    } else {
      std::vector<float> ys(out.row(i).data(), out.row(i).data() + out.cols());
      jr["values"] = ys;
    }
    for (int64_t j = 0; j < out.cols(); ++j) row.push_back(Fixed(out(i, j)));
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
                       std::optional<uint64_t> seed, Format f, const std::string& output, bool v2) {
  dc::Matrix x = ReadInputs(c, model, input, target);
  dc::UncertaintyOptions o;
  o.samples = samples;
  o.seed = seed;
  o.version = version;
  auto r =
      v2 ? UncertaintyV2(c, model, version, x, samples, seed) : c.PredictUncertainty(model, x, o);
  dc::Matrix mean = dc::ToMatrix(r.mean()), sd = dc::ToMatrix(r.stddev());
  Table t;
  if (r.task() != v1::TASK_REGRESSION) {
    t.header = {"row", "version", "prediction",  "probability",
                "std", "entropy", "mutual_info", "variation_ratio"};
    for (int64_t i = 0; i < mean.rows(); ++i) {
      const int k = r.predicted_class(static_cast<int>(i));
      t.rows.push_back({std::to_string(i), std::to_string(r.version()), std::to_string(k),
                        Fixed(mean(i, k)), Fixed(sd(i, k)), Fixed(r.predictive_entropy(i)),
                        Fixed(r.mutual_information(i)), Fixed(r.variation_ratio(i))});
      std::vector<float> probs(mean.row(i).data(), mean.row(i).data() + mean.cols());
      t.json_rows.push_back({{"row", i},
                             {"version", r.version()},
                             {"prediction", k},
                             {"probability", mean(i, k)},
                             {"std", sd(i, k)},
                             {"entropy", r.predictive_entropy(i)},
                             {"expected_entropy", r.expected_entropy(i)},
                             {"mutual_information", r.mutual_information(i)},
                             {"variation_ratio", r.variation_ratio(i)},
                             {"probabilities", probs}});
    }
  } else {
    dc::Matrix tv = dc::ToMatrix(r.total_variance()), lo = dc::ToMatrix(r.lower()),
               hi = dc::ToMatrix(r.upper());
    t.header = {"row", "version", "target", "mean", "std", "total_std", "lower", "upper"};
    for (int64_t i = 0; i < mean.rows(); ++i) {
      for (int64_t j = 0; j < mean.cols(); ++j) {
        t.rows.push_back({std::to_string(i), std::to_string(r.version()), std::to_string(j),
                          Fixed(mean(i, j)), Fixed(sd(i, j)), Fixed(std::sqrt(tv(i, j))),
                          Fixed(lo(i, j)), Fixed(hi(i, j))});
        t.json_rows.push_back({{"row", i},
                               {"version", r.version()},
                               {"target", j},
                               {"mean", mean(i, j)},
                               {"std", sd(i, j)},
                               {"total_variance", tv(i, j)},
                               {"lower", lo(i, j)},
                               {"upper", hi(i, j)}});
      }
    }
  }
  Emit(t, f, output);
  std::cerr << "model '" << model << "' version " << r.version()
            << ", Monte-Carlo dropout, T = " << r.num_samples() << ", seed " << r.seed() << "\n";
  return 0;
}

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
  auto r = c.Evaluate(req);
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
