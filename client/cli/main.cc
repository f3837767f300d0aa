// dropnet: the command line for a dropnet server.
//
//   dropnet health
//   dropnet models list | get NAME | create NAME --spec FILE.json | delete NAME
//   dropnet data upload NAME FILE.csv | import NAME PATH [LABELS] | list | delete NAME
//   dropnet train MODEL --data NAME [--epochs N ...]
//   dropnet predict MODEL --input FILE.csv [--format table|csv|json]
//   dropnet uncertainty MODEL --input FILE.csv --samples T [--seed N]
//   dropnet evaluate MODEL --data NAME [--mc-samples T]
//   dropnet bench MODEL [--concurrency 1,2,4,8 --duration S --count N --json ...]
//   dropnet demo
//
// The server comes from --server or DROPNET_SERVER (default 127.0.0.1:50051); a bearer token from
// DROPNET_TOKEN or --token-file. Exit status: 0 on success, 1 for a local error (a file that cannot
// be read), 2 for bad usage, 10 + the gRPC status code for an error from the server (15 for
// NOT_FOUND, 13 for INVALID_ARGUMENT, ...), 130 after Ctrl-C.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "client/cli/bench.h"
#include "client/client.h"
#include "server/engine/data.h"

namespace dc = dropnet::client;
namespace v1 = dropnet::v1;
using json = nlohmann::json;

namespace {

std::atomic<bool> interrupted{false};

void OnSigint(int) { interrupted = true; }

struct Global {
  std::string server = "127.0.0.1:50051";
  double timeout = 30;
  bool tls = false;
  std::string ca, cert, key, token_file;
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

// ---- Output ----

enum class Format { kTable, kCsv, kJson };

Format ParseFormat(const std::string& f) {
  if (f == "csv") return Format::kCsv;
  if (f == "json") return Format::kJson;
  return Format::kTable;
}

std::string Fixed(double v, int digits = 4) {
  if (std::isnan(v)) return "-";
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

// Rows of cells printed as an aligned table, CSV, or JSON objects keyed by the header.
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<json> json_rows;  // typed values for --format json

  void Print(std::ostream& out, Format f) const {
    if (f == Format::kJson) {
      out << json(json_rows).dump(2) << "\n";
      return;
    }
    if (f == Format::kCsv) {
      auto line = [&](const std::vector<std::string>& cells) {
        for (size_t i = 0; i < cells.size(); ++i) out << (i ? "," : "") << cells[i];
        out << "\n";
      };
      line(header);
      for (const auto& r : rows) line(r);
      return;
    }
    std::vector<size_t> w(header.size());
    for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
    for (const auto& r : rows)
      for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
    auto line = [&](const std::vector<std::string>& cells) {
      for (size_t i = 0; i < cells.size(); ++i) {
        out << (i ? "  " : "") << std::left << std::setw(static_cast<int>(w[i])) << cells[i];
      }
      out << "\n";
    };
    line(header);
    for (const auto& r : rows) line(r);
  }
};

void Emit(const Table& t, Format f, const std::string& output) {
  if (output.empty()) {
    t.Print(std::cout, f);
    return;
  }
  std::ofstream out(output);
  if (!out) throw std::runtime_error("cannot write '" + output + "'");
  t.Print(out, f);
  std::cerr << "wrote " << t.rows.size() << " rows to " << output << "\n";
}

std::string Json(const google::protobuf::Message& m) {
  std::string s;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &s, o);
  return s;
}

std::string TaskName(v1::Task t) { return t == v1::TASK_REGRESSION ? "regression" : "classification"; }

std::string Shape(const google::protobuf::RepeatedField<int32_t>& s) {
  std::string out;
  for (int i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out;
}

// Input rows for a model from a CSV file: a target column is dropped by name, or, when the file
// has exactly one column more than the model takes, the last one is.
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

// ---- Commands ----

int Health(dc::Client& c, const std::string& service) {
  const bool ok = c.Healthy(service);
  std::cout << (ok ? "SERVING" : "NOT_SERVING") << "\n";
  return ok ? 0 : 1;
}

Table ModelsTable(const std::vector<v1::ModelInfo>& models) {
  Table t;
  t.header = {"name", "task", "input", "parameters", "version", "epochs", "training"};
  for (const auto& m : models) {
    t.rows.push_back({m.name(), TaskName(m.spec().task()), Shape(m.spec().input_shape()),
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

void PrintModel(const v1::ModelInfo& m, Format f) {
  if (f == Format::kJson) {
    std::cout << Json(m) << "\n";
    return;
  }
  std::cout << "model       " << m.name() << "\n"
            << "task        " << TaskName(m.spec().task()) << "\n"
            << "input       " << Shape(m.spec().input_shape()) << "\n"
            << "outputs     " << m.output_size() << "\n"
            << "parameters  " << m.parameter_count() << "\n"
            << "version     " << m.version() << " (of";
  for (auto v : m.versions()) std::cout << " " << v;
  std::cout << ")\n"
            << "training    " << (m.training() ? "yes" : "no") << "\n"
            << "steps       " << m.steps() << "\n";
  if (!m.spec().description().empty()) std::cout << "about       " << m.spec().description() << "\n";
  std::cout << "layers\n";
  for (int i = 0; i < m.spec().layers_size(); ++i) {
    const auto& l = m.spec().layers(i);
    std::cout << "  " << std::setw(2) << i << "  " << l.type();
    if (l.units()) std::cout << " " << l.units();
    if (l.rate() > 0) std::cout << " rate " << l.rate();
    auto it = m.learned_rates().find(i);
    if (it != m.learned_rates().end()) std::cout << " (learned rate " << Fixed(it->second) << ")";
    std::cout << "\n";
  }
  if (m.history_size()) {
    std::cout << "history\n";
    Table t;
    t.header = {"  epoch", "version", "loss", "metric", "val_loss", "val_metric", "samples/s", "data"};
    for (const auto& h : m.history()) {
      t.rows.push_back({"  " + std::to_string(h.epoch()), std::to_string(h.version()), Fixed(h.loss()),
                        Fixed(h.metric()), Fixed(h.val_loss()), Fixed(h.val_metric()),
                        Fixed(h.samples_per_second(), 0), h.dataset()});
    }
    t.Print(std::cout, Format::kTable);
  }
}

Table DatasetsTable(const std::vector<v1::DatasetInfo>& ds) {
  Table t;
  t.header = {"name", "task", "rows", "input", "classes", "source"};
  for (const auto& d : ds) {
    t.rows.push_back({d.name(), TaskName(d.task()), std::to_string(d.rows()), Shape(d.input_shape()),
                      d.task() == v1::TASK_CLASSIFICATION ? std::to_string(d.num_classes()) : "-",
                      d.source()});
    t.json_rows.push_back({{"name", d.name()},
                           {"task", TaskName(d.task())},
                           {"rows", d.rows()},
                           {"num_classes", d.num_classes()},
                           {"source", d.source()}});
  }
  return t;
}

void PrintDataset(const v1::DatasetInfo& d) {
  std::cout << "data set '" << d.name() << "': " << d.rows() << " rows of " << Shape(d.input_shape())
            << ", " << TaskName(d.task());
  if (d.task() == v1::TASK_CLASSIFICATION) std::cout << ", " << d.num_classes() << " classes";
  std::cout << "\n";
}

std::string Bar(double fraction, int width) {
  const int filled = static_cast<int>(std::round(std::clamp(fraction, 0.0, 1.0) * width));
  return std::string(filled, '#') + std::string(width - filled, '.');
}

std::string Duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  std::ostringstream o;
  const int secs = static_cast<int>(std::round(s));
  if (secs >= 60) o << secs / 60 << "m" << std::setw(2) << std::setfill('0') << secs % 60 << "s";
  else o << secs << "s";
  return o.str();
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
              std::cout << "training '" << req.model() << "' on '" << req.dataset() << "': "
                        << e.epochs() << " epochs, " << e.total_steps() << " steps, from version "
                        << e.version() << "\n";
              break;
            case v1::TrainEvent::KIND_STEP:
              if (tty) {
                const double frac = static_cast<double>(e.step()) / std::max<int64_t>(1, e.total_steps());
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
              std::cout << "epoch " << e.epoch() << "/" << e.epochs() << "  loss " << Fixed(e.loss())
                        << "  " << metric_name << " " << Fixed(e.metric());
              if (!std::isnan(e.val_loss())) {
                std::cout << "  val_loss " << Fixed(e.val_loss()) << "  val_" << metric_name << " "
                          << Fixed(e.val_metric());
              }
              std::cout << "  " << Fixed(e.samples_per_second(), 0) << " samples/s  -> version "
                        << e.version() << "\n";
              break;
            case v1::TrainEvent::KIND_FINISHED:
              std::cout << "done: model '" << req.model() << "' serves version " << e.version()
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

int PredictCommand(dc::Client& c, const std::string& model, const std::string& input,
                   const std::string& target, Format f, const std::string& output) {
  dc::Matrix x = ReadInputs(c, model, input, target);
  auto r = c.Predict(model, x);
  dc::Matrix out = dc::ToMatrix(r.outputs());
  Table t;
  t.header = {"row"};
  const bool classify = r.task() != v1::TASK_REGRESSION;
  if (classify) t.header.push_back("class"), t.header.push_back("probability");
  for (int64_t j = 0; j < out.cols(); ++j) t.header.push_back((classify ? "p" : "y") + std::to_string(j));
  for (int64_t i = 0; i < out.rows(); ++i) {
    std::vector<std::string> row = {std::to_string(i)};
    json jr = {{"row", i}};
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

int UncertaintyCommand(dc::Client& c, const std::string& model, const std::string& input,
                       const std::string& target, int samples, std::optional<uint64_t> seed,
                       Format f, const std::string& output) {
  dc::Matrix x = ReadInputs(c, model, input, target);
  dc::UncertaintyOptions o;
  o.samples = samples;
  o.seed = seed;
  auto r = c.PredictUncertainty(model, x, o);
  dc::Matrix mean = dc::ToMatrix(r.mean()), sd = dc::ToMatrix(r.stddev());
  Table t;
  if (r.task() != v1::TASK_REGRESSION) {
    t.header = {"row", "prediction", "probability", "std", "entropy", "mutual_info", "variation_ratio"};
    for (int64_t i = 0; i < mean.rows(); ++i) {
      const int k = r.predicted_class(static_cast<int>(i));
      t.rows.push_back({std::to_string(i), std::to_string(k), Fixed(mean(i, k)), Fixed(sd(i, k)),
                        Fixed(r.predictive_entropy(i)), Fixed(r.mutual_information(i)),
                        Fixed(r.variation_ratio(i))});
      std::vector<float> probs(mean.row(i).data(), mean.row(i).data() + mean.cols());
      t.json_rows.push_back({{"row", i},
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
    t.header = {"row", "target", "mean", "std", "total_std", "lower", "upper"};
    for (int64_t i = 0; i < mean.rows(); ++i) {
      for (int64_t j = 0; j < mean.cols(); ++j) {
        t.rows.push_back({std::to_string(i), std::to_string(j), Fixed(mean(i, j)), Fixed(sd(i, j)),
                          Fixed(std::sqrt(tv(i, j))), Fixed(lo(i, j)), Fixed(hi(i, j))});
        t.json_rows.push_back({{"row", i},
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
  std::cerr << "model '" << model << "' version " << r.version() << ", Monte-Carlo dropout, T = "
            << r.num_samples() << ", seed " << r.seed() << "\n";
  return 0;
}

int EvaluateCommand(dc::Client& c, const std::string& model, const std::string& data, int mc,
                    std::optional<uint64_t> seed, int64_t limit, Format f) {
  v1::EvaluateRequest req;
  req.set_model(model);
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
  std::vector<std::string> row = {model, std::to_string(r.version()), data, std::to_string(r.rows()),
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

// ---- demo ----

const char* kFashionClasses[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

std::vector<std::string> Ascii(const dc::Matrix& x, int64_t row) {
  static const char* kShades = " .:-=+*#%@";
  std::vector<std::string> lines;
  for (int r = 0; r < 28; r += 2) {
    std::string line;
    for (int c = 0; c < 28; ++c) {
      const float v = 0.5f * (x(row, r * 28 + c) + x(row, (r + 1) * 28 + c));
      line += kShades[std::clamp(static_cast<int>(v * 9.99f), 0, 9)];
    }
    lines.push_back(line);
  }
  return lines;
}

int Demo(dc::Client& c, const std::string& data_dir) {
  std::cout << "dropnet demo against " << c.options().target << "\n\n";
  std::cout << "1. health: " << (c.Healthy() ? "SERVING" : "NOT_SERVING") << "\n";
  v1::ModelInfo info;
  try {
    info = c.GetModel("fashion-mlp");
  } catch (const dc::ClientError& e) {
    if (e.code() != grpc::StatusCode::NOT_FOUND) throw;
    std::cout << "\nThe example model 'fashion-mlp' is not on this server. Start the server with "
                 "--example (scripts/run.sh does) on an empty store, or create it:\n"
                 "  dropnet models create fashion-mlp --spec examples/fashion_mlp.json\n"
                 "  dropnet data import fashion-mnist-train fashion-mnist/train-images-idx3-ubyte.gz "
                 "fashion-mnist/train-labels-idx1-ubyte.gz\n"
                 "  dropnet train fashion-mlp --data fashion-mnist-train --epochs 1\n";
    return 1;
  }
  std::cout << "2. model 'fashion-mlp': " << info.spec().description() << ", version "
            << info.version() << ", " << info.history_size() << " epoch(s) trained"
            << (info.training() ? " (training right now: answers come from the newest version)" : "")
            << "\n";
  auto test = dropnet::engine::LoadIdx(data_dir + "/t10k-images-idx3-ubyte.gz",
                                       data_dir + "/t10k-labels-idx1-ubyte.gz");
  const int64_t n = 300;
  dc::Matrix x = test.x.topRows(n);
  dc::UncertaintyOptions o;
  o.samples = 100;
  o.seed = 7;
  auto r = c.PredictUncertainty("fashion-mlp", x, o);
  std::cout << "3. PredictUncertainty on the first " << n << " test images: T = " << r.num_samples()
            << " dropout masks each (seed " << r.seed() << ")\n\n";
  int64_t confident = 0, ambiguous = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (r.mutual_information(i) < r.mutual_information(confident)) confident = i;
    if (r.predictive_entropy(i) > r.predictive_entropy(ambiguous)) ambiguous = i;
  }
  dc::Matrix mean = dc::ToMatrix(r.mean()), sd = dc::ToMatrix(r.stddev());
  auto left = Ascii(x, confident), right = Ascii(x, ambiguous);
  std::cout << "   a confident item (#" << confident << ")           an ambiguous item (#" << ambiguous
            << ")\n";
  for (size_t i = 0; i < left.size(); ++i) std::cout << "   " << left[i] << "    " << right[i] << "\n";
  auto describe = [&](int64_t i) {
    const int k = r.predicted_class(static_cast<int>(i));
    std::ostringstream s;
    s << "true " << kFashionClasses[static_cast<int>(test.y(i, 0))] << ", predicted "
      << kFashionClasses[k] << " p=" << Fixed(mean(i, k), 2) << "+-" << Fixed(sd(i, k), 2);
    return s.str();
  };
  std::cout << "\n   #" << confident << ": " << describe(confident) << "\n   #" << ambiguous << ": "
            << describe(ambiguous) << "\n\n";
  Table t;
  t.header = {"   figure", "#" + std::to_string(confident), "#" + std::to_string(ambiguous), "what it means"};
  t.rows = {
      {"   predictive entropy", Fixed(r.predictive_entropy(confident)), Fixed(r.predictive_entropy(ambiguous)),
       "total uncertainty of the mean prediction (0 = certain, ln 10 = 2.30 = uniform)"},
      {"   expected entropy", Fixed(r.expected_entropy(confident)), Fixed(r.expected_entropy(ambiguous)),
       "uncertainty each single pass already has (noise in the data: aleatoric)"},
      {"   mutual information", Fixed(r.mutual_information(confident)), Fixed(r.mutual_information(ambiguous)),
       "how much the dropout masks disagree (what the model does not know: epistemic)"},
      {"   variation ratio", Fixed(r.variation_ratio(confident)), Fixed(r.variation_ratio(ambiguous)),
       "share of passes that voted against the majority class"},
  };
  t.Print(std::cout, Format::kTable);
  std::cout << "\nNext: score the whole test set in eval and in Monte-Carlo mode,\n"
               "  dropnet evaluate fashion-mlp --data fashion-mnist-test\n"
               "  dropnet evaluate fashion-mlp --data fashion-mnist-test --mc-samples 50\n"
               "and train a model of your own: README.md, 'A first session'.\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dropnet: train, query and inspect models on a dropnet server"};
  app.require_subcommand(1);
  Global g;
  app.add_option("--server", g.server, "host:port of the server")
      ->envname("DROPNET_SERVER")->capture_default_str();
  app.add_option("--timeout", g.timeout, "seconds each call may take (training excepted)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_flag("--tls", g.tls, "connect with TLS (system roots unless --ca)");
  app.add_option("--ca", g.ca, "CA certificate (PEM) to verify the server; implies --tls")
      ->check(CLI::ExistingFile);
  app.add_option("--cert", g.cert, "client certificate (PEM) for mutual TLS")->check(CLI::ExistingFile);
  app.add_option("--key", g.key, "client key (PEM) for mutual TLS")->check(CLI::ExistingFile);
  app.add_option("--token-file", g.token_file, "file holding the bearer token (else DROPNET_TOKEN)")
      ->check(CLI::ExistingFile);

  std::string format = "table", output, target, task = "classification", spec, name, path, labels;
  std::string health_service;
  auto* health = app.add_subcommand("health", "is the server serving?");
  health->add_option("--service", health_service, "a service name (default: the whole server)");

  auto* models = app.add_subcommand("models", "list, inspect, create and delete models");
  models->require_subcommand(1);
  auto* m_list = models->add_subcommand("list", "all models");
  auto* m_get = models->add_subcommand("get", "one model: spec, versions, history");
  m_get->add_option("name", name)->required();
  auto* m_create = models->add_subcommand("create", "create a model from a spec file (JSON)");
  m_create->add_option("name", name)->required();
  m_create->add_option("--spec", spec, "ModelSpec as JSON, e.g. examples/fashion_mlp.json")
      ->required()->check(CLI::ExistingFile);
  auto* m_delete = models->add_subcommand("delete", "delete a model and all its versions");
  m_delete->add_option("name", name)->required();
  for (auto* s : {m_list, m_get}) {
    s->add_option("--format", format)->check(CLI::IsMember({"table", "json"}))->capture_default_str();
  }

  bool overwrite = false;
  int64_t limit = 0;
  auto* data = app.add_subcommand("data", "upload, import, list and delete data sets");
  data->require_subcommand(1);
  auto* d_upload = data->add_subcommand("upload", "upload a CSV file (header row, numbers)");
  d_upload->add_option("name", name)->required();
  d_upload->add_option("file", path)->required()->check(CLI::ExistingFile);
  auto* d_import = data->add_subcommand("import", "read a CSV or IDX file under the server's data root");
  d_import->add_option("name", name)->required();
  d_import->add_option("path", path, "CSV file, or IDX images, relative to the data root")->required();
  d_import->add_option("labels", labels, "IDX labels file, relative to the data root");
  d_import->add_option("--limit", limit, "keep only the first N rows");
  for (auto* s : {d_upload, d_import}) {
    s->add_option("--target", target, "target column (default: the last)");
    s->add_option("--task", task)->check(CLI::IsMember({"classification", "regression"}))
        ->capture_default_str();
    s->add_flag("--overwrite", overwrite, "replace a data set of that name");
  }
  auto* d_list = data->add_subcommand("list", "all data sets");
  d_list->add_option("--format", format)->check(CLI::IsMember({"table", "csv", "json"}));
  auto* d_delete = data->add_subcommand("delete", "delete a data set");
  d_delete->add_option("name", name)->required();

  v1::TrainRequest treq;
  std::string optimizer = "adam";
  int epochs = 10, batch = 128, patience = 0;
  double lr = 0, vsplit = 0, wd = 0, max_norm = 0;
  uint64_t tseed = 0;
  bool standardize = false;
  std::string data_name;
  auto* train = app.add_subcommand("train", "train a model, with live progress; Ctrl-C cancels");
  train->add_option("model", name)->required();
  train->add_option("--data", data_name, "data set to train on")->required();
  train->add_option("--epochs", epochs)->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--batch-size", batch)->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--lr", lr, "learning rate (default 0.001, SGD 0.01)");
  train->add_option("--optimizer", optimizer)->check(CLI::IsMember({"sgd", "adam", "adamw"}))
      ->capture_default_str();
  train->add_option("--weight-decay", wd)->capture_default_str();
  train->add_option("--max-norm", max_norm, "max-norm constraint on incoming weights (0: off)");
  train->add_option("--validation-split", vsplit)->capture_default_str();
  train->add_option("--early-stopping", patience, "patience in epochs (needs --validation-split)");
  train->add_option("--seed", tseed)->capture_default_str();
  train->add_flag("--standardize", standardize, "fit per-feature standardisation on the training rows");

  std::string input;
  auto* predict = app.add_subcommand("predict", "eval-mode predictions for the rows of a CSV file");
  predict->add_option("model", name)->required();
  int samples = 50;
  uint64_t seed = 0;
  auto* unc = app.add_subcommand("uncertainty", "Monte-Carlo dropout: prediction, std, entropy, MI");
  unc->add_option("model", name)->required();
  unc->add_option("--samples,-T", samples, "stochastic passes T")->capture_default_str();
  CLI::Option* seed_opt = unc->add_option("--seed", seed, "mask seed (default: the server picks; echoed)");
  for (auto* s : {predict, unc}) {
    s->add_option("--input", input, "CSV file with a header row")->required()->check(CLI::ExistingFile);
    s->add_option("--target", target, "a column to ignore (the target)");
    s->add_option("--format", format)->check(CLI::IsMember({"table", "csv", "json"}))->capture_default_str();
    s->add_option("--output", output, "write to this file instead of stdout");
  }

  int mc_samples = 0;
  auto* evaluate = app.add_subcommand("evaluate", "score a stored, labelled data set");
  evaluate->add_option("model", name)->required();
  evaluate->add_option("--data", data_name)->required();
  evaluate->add_option("--mc-samples", mc_samples, "Monte-Carlo dropout with T passes (0: eval mode)");
  CLI::Option* eval_seed = evaluate->add_option("--seed", seed, "Monte-Carlo seed");
  evaluate->add_option("--limit", limit, "only the first N rows");
  evaluate->add_option("--format", format)->check(CLI::IsMember({"table", "csv", "json"}));

  dropnet::cli::BenchOptions bench_options;
  std::vector<std::string> bench_workloads = {"health", "predict", "predict-batch", "uncertainty"};
  bool bench_json = false, bench_shared = false, bench_quiet = false;
  auto* bench = app.add_subcommand(
      "bench", "load test: latency and throughput of health, Predict and PredictUncertainty");
  bench->add_option("model", bench_options.model)->required();
  bench->add_option("--concurrency,-c", bench_options.concurrency,
                    "concurrent callers, one level after another")
      ->delimiter(',')->capture_default_str()->check(CLI::PositiveNumber);
  auto* bench_duration = bench->add_option("--duration", bench_options.duration_seconds,
                                           "measured seconds per workload and level")
      ->capture_default_str()->check(CLI::PositiveNumber);
  bench->add_option("--count", bench_options.count,
                    "measured calls per workload and level, instead of --duration")
      ->check(CLI::PositiveNumber)->excludes(bench_duration);
  bench->add_option("--warmup", bench_options.warmup_seconds,
                    "unrecorded seconds before each measurement")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  bench->add_option("--workloads", bench_workloads,
                    "any of health, predict (1 row), predict-batch, uncertainty (1 row)")
      ->delimiter(',')->capture_default_str()
      ->check(CLI::IsMember({"health", "predict", "predict-batch", "uncertainty"}));
  bench->add_option("--batch", bench_options.batch, "rows of the predict-batch workload")
      ->capture_default_str()->check(CLI::PositiveNumber);
  bench->add_option("--samples,-T", bench_options.samples, "T of the uncertainty workload")
      ->capture_default_str()->check(CLI::PositiveNumber);
  bench->add_option("--data", bench_options.data_path,
                    "CSV rows to send (default: uniform random values in [0, 1))")
      ->check(CLI::ExistingFile);
  bench->add_option("--target", bench_options.target_column, "a CSV column to leave out");
  bench->add_option("--seed", bench_options.seed, "picks the rows")->capture_default_str();
  bench->add_flag("--shared-channel", bench_shared,
                  "every worker on one channel (one connection) instead of one each");
  bench->add_flag("--json", bench_json, "machine-readable results on stdout");
  bench->add_flag("--quiet,-q", bench_quiet, "no progress lines on stderr");

  std::string demo_data = "/usr/share/datasets/fashion-mnist";
  auto* demo = app.add_subcommand("demo", "a tour: a confident and an ambiguous item side by side");
  demo->add_option("--data-dir", demo_data, "Fashion-MNIST IDX directory")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  try {
    const dc::ClientOptions client_options = MakeClientOptions(g);
    if (*bench) {
      bench_options.workloads.clear();
      for (const auto& w : bench_workloads) {
        bench_options.workloads.push_back(dropnet::cli::ParseWorkload(w));
      }
      bench_options.shared_channel = bench_shared;
      auto report = dropnet::cli::RunBench(client_options, bench_options,
                                           bench_quiet ? nullptr : &std::cerr);
      if (bench_json) std::cout << report.ToJson().dump(2) << "\n";
      else report.PrintTable(std::cout);
      int64_t errors = 0;
      for (const auto& r : report.results) errors += r.errors;
      return errors ? 1 : 0;
    }
    dc::Client c(client_options);
    const Format f = ParseFormat(format);
    if (*health) return Health(c, health_service);
    if (*m_list) return ModelsTable(c.ListModels()).Print(std::cout, f), 0;
    if (*m_get) return PrintModel(c.GetModel(name), f), 0;
    if (*m_create) {
      auto info = c.CreateModel(name, dc::ReadSpecFile(spec));
      std::cout << "created model '" << info.name() << "': " << info.parameter_count()
                << " parameters, version " << info.version() << "\n";
      return 0;
    }
    if (*m_delete) {
      c.DeleteModel(name);
      std::cout << "deleted model '" << name << "'\n";
      return 0;
    }
    if (*d_upload) {
      std::ifstream in(path, std::ios::binary);
      std::string csv((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      v1::DatasetHeader h;
      h.set_name(name);
      h.set_task(task == "regression" ? v1::TASK_REGRESSION : v1::TASK_CLASSIFICATION);
      h.set_target_column(target);
      h.set_overwrite(overwrite);
      PrintDataset(c.UploadCsv(h, csv, 1 << 20, dc::CallOptions{std::chrono::minutes(10)}));
      return 0;
    }
    if (*d_import) {
      v1::ImportDatasetRequest r;
      r.set_name(name);
      r.set_path(path);
      r.set_label_path(labels);
      r.set_task(task == "regression" ? v1::TASK_REGRESSION : v1::TASK_CLASSIFICATION);
      r.set_target_column(target);
      r.set_overwrite(overwrite);
      r.set_limit(limit);
      PrintDataset(c.ImportDataset(r, dc::CallOptions{std::chrono::minutes(10)}));
      return 0;
    }
    if (*d_list) return DatasetsTable(c.ListDatasets()).Print(std::cout, f), 0;
    if (*d_delete) {
      c.DeleteDataset(name);
      std::cout << "deleted data set '" << name << "'\n";
      return 0;
    }
    if (*train) {
      treq.set_model(name);
      treq.set_dataset(data_name);
      treq.set_epochs(epochs);
      treq.set_batch_size(batch);
      treq.set_optimizer(optimizer == "sgd"     ? v1::OPTIMIZER_SGD
                         : optimizer == "adamw" ? v1::OPTIMIZER_ADAMW
                                                : v1::OPTIMIZER_ADAM);
      treq.set_learning_rate(lr);
      treq.set_weight_decay(wd);
      treq.set_max_norm(max_norm);
      treq.set_validation_split(vsplit);
      treq.set_early_stopping_patience(patience);
      treq.set_seed(tseed);
      treq.set_standardize(standardize);
      const auto info = c.GetModel(name);
      return TrainCommand(c, treq, info.spec().task() == v1::TASK_REGRESSION ? "rmse" : "acc");
    }
    if (*predict) return PredictCommand(c, name, input, target, f, output);
    if (*unc) {
      return UncertaintyCommand(c, name, input, target, samples,
                                seed_opt->count() ? std::optional<uint64_t>(seed) : std::nullopt,
                                f, output);
    }
    if (*evaluate) {
      return EvaluateCommand(c, name, data_name, mc_samples,
                             eval_seed->count() ? std::optional<uint64_t>(seed) : std::nullopt,
                             limit, f);
    }
    if (*demo) return Demo(c, demo_data);
  } catch (const dc::ClientError& e) {
    std::cerr << "dropnet: " << e.code_name() << ": " << e.what() << "\n";
    if (e.code() == grpc::StatusCode::UNAVAILABLE) {
      std::cerr << "(is dropnet-server running at " << g.server << "? scripts/run.sh starts one)\n";
    }
    return 10 + static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::cerr << "dropnet: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
