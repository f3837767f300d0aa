#include "client/cli/records.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <iostream>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

#include "client/client.h"

namespace dropnet::cli {
namespace {
namespace dc = dropnet::client;
using json = nlohmann::json;
}  // namespace

Table SamplesTable(const v1::PredictUncertaintyResponse& r, Format f) {
  const dc::Matrix mean = dc::ToMatrix(r.mean());
  const int64_t rows = mean.rows(), outs = mean.cols(), n = r.num_samples();
  // [T, rows, outputs] as T x (rows * outputs): sample s, row i, output j at (s, i * outs + j).
  const dc::Matrix s = dc::ToMatrix(r.samples());
  if (s.rows() != n || s.cols() != rows * outs) {
    throw std::runtime_error("the server returned no samples for --return-samples");
  }
  Table t;
  if (f == Format::kJson) {
    t.json_row_per_line = true;
    for (int64_t k = 0; k < n; ++k) {
      json sample = json::array();
      for (int64_t i = 0; i < rows; ++i) {
        json a = json::array();
        for (int64_t j = 0; j < outs; ++j) a.push_back(JsonNumber(s(k, i * outs + j)));
        sample.push_back(std::move(a));
      }
      t.json_rows.push_back(std::move(sample));
    }
    return t;
  }
  if (f == Format::kCsv) {
    t.header = {"sample", "row"};
    for (int64_t j = 0; j < outs; ++j) t.header.push_back("out" + std::to_string(j));
    for (int64_t k = 0; k < n; ++k) {
      for (int64_t i = 0; i < rows; ++i) {
        std::vector<std::string> line = {std::to_string(k), std::to_string(i)};
        for (int64_t j = 0; j < outs; ++j) line.push_back(Exact(s(k, i * outs + j)));
        t.rows.push_back(std::move(line));
      }
    }
    return t;
  }
  // A table: per row, how the samples voted (classification) or their range (regression).
  const bool classify = r.task() != v1::TASK_REGRESSION;
  t.header = classify
                 ? std::vector<std::string>{"row", "version", "votes (class:samples)"}
                 : std::vector<std::string>{"row", "version", "target", "min", "median", "max"};
  for (int64_t i = 0; i < rows; ++i) {
    if (classify) {
      std::vector<int64_t> votes(outs, 0);
      for (int64_t k = 0; k < n; ++k) {
        Eigen::Index best = 0;
        s.row(k).segment(i * outs, outs).maxCoeff(&best);
        ++votes[best];
      }
      std::vector<int64_t> order(outs);
      for (int64_t j = 0; j < outs; ++j) order[j] = j;
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return votes[a] > votes[b]; });
      std::string text;
      for (int64_t j : order) {
        if (votes[j])
          text += (text.empty() ? "" : " ") + std::to_string(j) + ":" + std::to_string(votes[j]);
      }
      t.rows.push_back({std::to_string(i), std::to_string(r.version()), text});
      continue;
    }
    for (int64_t j = 0; j < outs; ++j) {
      std::vector<float> v(n);
      for (int64_t k = 0; k < n; ++k) v[k] = s(k, i * outs + j);
      std::sort(v.begin(), v.end());
      t.rows.push_back({std::to_string(i), std::to_string(r.version()), std::to_string(j),
                        Fixed(v.front()), Fixed(v[n / 2]), Fixed(v.back())});
    }
  }
  return t;
}

void PrintTrainEventText(const v1::TrainEvent& e, const v1::TrainRequest& req,
                         const std::string& metric_name, bool tty) {
  switch (e.kind()) {
    case v1::TrainEvent::KIND_STARTED:
      std::cout << "training '" << req.model() << "' on '" << req.dataset() << "': " << e.epochs()
                << " epochs, " << e.total_steps() << " steps, from version " << e.version() << "\n";
      break;
    case v1::TrainEvent::KIND_STEP:
      if (tty) {
        const double frac = static_cast<double>(e.step()) / std::max<int64_t>(1, e.total_steps());
        std::cout << "\r\033[K epoch " << e.epoch() << "/" << e.epochs() << " [" << Bar(frac, 30)
                  << "] " << std::setw(3) << static_cast<int>(frac * 100) << "%  loss "
                  << Fixed(e.loss()) << "  " << metric_name << " " << Fixed(e.metric()) << "  "
                  << Fixed(e.samples_per_second(), 0) << " samples/s  ETA "
                  << Duration(e.eta_seconds()) << std::flush;
      } else {
        std::cout << "step " << e.step() << "/" << e.total_steps() << " loss " << Fixed(e.loss())
                  << "\n";
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
      std::cout << "done: model '" << req.model() << "' published version " << e.version()
                << (e.early_stopped() ? " (early stopping restored the best epoch)" : "") << "\n";
      break;
    default:
      break;
  }
}

std::string TrainEventKind(v1::TrainEvent::Kind k) {
  switch (k) {
    case v1::TrainEvent::KIND_STARTED:
      return "started";
    case v1::TrainEvent::KIND_STEP:
      return "step";
    case v1::TrainEvent::KIND_EPOCH:
      return "epoch";
    case v1::TrainEvent::KIND_FINISHED:
      return "finished";
    default:
      return "unspecified";
  }
}

std::vector<std::string> TrainEventColumns(const std::string& metric_name) {
  return {"kind",
          "epoch",
          "epochs",
          "step",
          "total_steps",
          "loss",
          metric_name,
          "val_loss",
          "val_" + metric_name,
          "samples_per_second",
          "learning_rate",
          "eta_seconds",
          "version",
          "early_stopped"};
}

void PrintTrainEventRecord(const v1::TrainEvent& e, const std::string& kind,
                           const std::string& metric_name, Format f) {
  const std::vector<std::string> keys = TrainEventColumns(metric_name);
  const std::vector<double> numbers = {
      e.loss(),          e.metric(),     e.val_loss(), e.val_metric(), e.samples_per_second(),
      e.learning_rate(), e.eta_seconds()};
  if (f == Format::kJson) {
    nlohmann::ordered_json j = {{"kind", kind},
                                {"epoch", e.epoch()},
                                {"epochs", e.epochs()},
                                {"step", e.step()},
                                {"total_steps", e.total_steps()}};
    // In the order of TrainEventColumns; nlohmann writes NaN (no validation split) as null.
    for (size_t i = 0; i < numbers.size(); ++i) j[keys[5 + i]] = numbers[i];
    j["version"] = e.version();
    j["early_stopped"] = e.early_stopped();
    std::cout << j.dump() << "\n";
  } else {
    std::cout << kind << "," << e.epoch() << "," << e.epochs() << "," << e.step() << ","
              << e.total_steps();
    for (double v : numbers) std::cout << "," << Exact(v);
    std::cout << "," << e.version() << "," << (e.early_stopped() ? "true" : "false") << "\n";
  }
}

}  // namespace dropnet::cli
