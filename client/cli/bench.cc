#include "client/cli/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <iterator>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "common/status_code_name.h"
#include "inference/grpc_predict_v2.grpc.pb.h"

// httplib.h includes <resolv.h>, whose macro _res breaks Eigen's headers: it comes after them.
#include <httplib.h>
#undef _res

namespace dropnet::cli {

namespace {

namespace dc = dropnet::client;
namespace v1 = dropnet::v1;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

const char* Key(Workload w) {
  switch (w) {
    case Workload::kHealth:
      return "health";
    case Workload::kPredictOne:
      return "predict";
    case Workload::kPredictBatch:
      return "predict-batch";
    case Workload::kUncertainty:
      return "uncertainty";
    case Workload::kInfer:
      return "infer";
    case Workload::kRest:
      return "rest";
  }
  return "?";
}

std::string DisplayName(Workload w, const BenchOptions& o) {
  switch (w) {
    case Workload::kHealth:
      return "health";
    case Workload::kPredictOne:
      return "predict b1";
    case Workload::kPredictBatch:
      return "predict b" + std::to_string(o.batch);
    case Workload::kUncertainty:
      return "uncertainty T=" + std::to_string(o.samples);
    case Workload::kInfer:
      return "v2 ModelInfer b1";
    case Workload::kRest:
      return "v2 REST infer b1";
  }
  return "?";
}

int RowsPerCall(Workload w, const BenchOptions& o) {
  switch (w) {
    case Workload::kHealth:
      return 0;
    case Workload::kPredictOne:
      return 1;
    case Workload::kPredictBatch:
      return o.batch;
    case Workload::kUncertainty:
    case Workload::kInfer:
    case Workload::kRest:
      return 1;
  }
  return 0;
}

// Distinct requests per workload, built before any timing and cycled through by the workers, so
// that a measured call costs the client only its serialisation.
constexpr int kDistinctRequests = 8;

struct Requests {
  std::vector<v1::PredictRequest> one;
  std::vector<grpc::ByteBuffer> batch;  // serialised once: the calls send the same bytes
  std::vector<v1::PredictUncertaintyRequest> uncertainty;
  std::vector<inference::ModelInferRequest> infer;  // raw_input_contents
  std::vector<std::string> rest;                    // JSON bodies
};

// ModelInfer of the row of `one` in both encodings.
void AddInferRequests(const std::string& model, const v1::PredictRequest& one, Requests* r) {
  const auto& values = one.inputs().values();
  auto& req = r->infer.emplace_back();
  req.set_model_name(model);
  auto* in = req.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  in->add_shape(1);
  in->add_shape(values.size());
  req.add_raw_input_contents(reinterpret_cast<const char*>(values.data()),
                             values.size() * sizeof(float));
  json body = {{"inputs",
                {{{"name", "input"},
                  {"datatype", "FP32"},
                  {"shape", {1, values.size()}},
                  {"data", std::vector<float>(values.begin(), values.end())}}}}};
  r->rest.push_back(body.dump());
}

dc::Matrix PickRows(const dc::Matrix& pool, int64_t width, int rows, std::mt19937_64& rng) {
  dc::Matrix x(rows, width);
  if (pool.rows() == 0) {
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = u(rng);
  } else {
    std::uniform_int_distribution<int64_t> pick(0, pool.rows() - 1);
    for (int r = 0; r < rows; ++r) x.row(r) = pool.row(pick(rng));
  }
  return x;
}

Requests BuildRequests(const BenchOptions& o, const dc::Matrix& pool, int64_t width) {
  std::mt19937_64 rng(o.seed);
  Requests r;
  for (int i = 0; i < kDistinctRequests; ++i) {
    auto& one = r.one.emplace_back();
    one.set_model(o.model);
    dc::ToTensor(PickRows(pool, width, 1, rng), one.mutable_inputs());
    AddInferRequests(o.model, one, &r);
    v1::PredictRequest batch;
    batch.set_model(o.model);
    dc::ToTensor(PickRows(pool, width, o.batch, rng), batch.mutable_inputs());
    r.batch.push_back(dc::Client::Serialize(batch));
    auto& unc = r.uncertainty.emplace_back();
    unc.set_model(o.model);
    unc.set_samples(o.samples);
    dc::ToTensor(PickRows(pool, width, 1, rng), unc.mutable_inputs());
  }
  return r;
}

// What one worker saw during one measurement.
struct WorkerLog {
  std::vector<double> latencies_ms;  // successful calls that started in the measured window
  int64_t completed_in_window = 0;   // successful calls that ended in it (duration mode)
  int64_t errors = 0;
  std::string first_error;
  Clock::time_point last_end{};
};

struct Phase {
  Workload workload;
  Clock::time_point measure_start, measure_end;  // measure_end unused in count mode
  std::atomic<int64_t>* remaining = nullptr;     // count mode: calls still to make
};

// One ModelInfer call over gRPC; an error's text, or "".
std::string CallInfer(const dc::Client& client, inference::GRPCInferenceService::Stub& stub,
                      const inference::ModelInferRequest& req) {
  grpc::ClientContext ctx;
  client.PrepareContext(&ctx);
  inference::ModelInferResponse resp;
  const grpc::Status st = stub.ModelInfer(&ctx, req, &resp);
  return st.ok() ? "" : std::string(StatusCodeName(st.error_code())) + ": " + st.error_message();
}

// One REST infer call; an error's text, or "".
std::string CallRest(const dc::Client& client, httplib::Client& http, const std::string& model,
                     const std::string& body) {
  httplib::Headers headers;
  if (!client.options().token.empty()) {
    headers.emplace("Authorization", "Bearer " + client.options().token);
  }
  auto res =
      http.Post(("/v2/models/" + model + "/infer").c_str(), headers, body, "application/json");
  if (!res) return "HTTP: " + httplib::to_string(res.error());
  return res->status == 200 ? "" : "HTTP " + std::to_string(res->status) + ": " + res->body;
}

void RunWorker(dc::Client& client, const Requests& requests, const Phase& phase, int worker,
               const BenchOptions& o, WorkerLog* log) {
  size_t next = static_cast<size_t>(worker);
  std::unique_ptr<inference::GRPCInferenceService::Stub> infer_stub;
  std::unique_ptr<httplib::Client> http;
  if (phase.workload == Workload::kInfer) {
    infer_stub = inference::GRPCInferenceService::NewStub(client.channel());
  } else if (phase.workload == Workload::kRest) {
    http = std::make_unique<httplib::Client>("http://" + o.http);
    http->set_keep_alive(true);
    http->set_tcp_nodelay(true);  // else delayed ACKs add 40 ms to each small call
  }
  for (;; ++next) {
    const Clock::time_point start = Clock::now();
    bool measured;
    if (phase.remaining) {
      measured = start >= phase.measure_start;
      if (measured && phase.remaining->fetch_sub(1) <= 0) break;
    } else {
      if (start >= phase.measure_end) break;
      measured = start >= phase.measure_start;
    }
    std::string error;
    try {
      switch (phase.workload) {
        case Workload::kHealth:
          if (!client.Healthy()) error = "NOT_SERVING";
          break;
        case Workload::kPredictOne:
          client.Predict(requests.one[next % requests.one.size()]);
          break;
        case Workload::kPredictBatch:
          client.Predict(requests.batch[next % requests.batch.size()]);
          break;
        case Workload::kUncertainty:
          client.PredictUncertainty(requests.uncertainty[next % requests.uncertainty.size()]);
          break;
        case Workload::kInfer:
          error = CallInfer(client, *infer_stub, requests.infer[next % requests.infer.size()]);
          break;
        case Workload::kRest:
          error = CallRest(client, *http, o.model, requests.rest[next % requests.rest.size()]);
          break;
      }
    } catch (const dc::ClientError& e) {
      error = std::string(e.code_name()) + ": " + e.what();
    }
    const Clock::time_point end = Clock::now();
    if (error.empty() && !phase.remaining && end >= phase.measure_start &&
        end <= phase.measure_end) {
      ++log->completed_in_window;
    }
    if (!measured) continue;
    log->last_end = std::max(log->last_end, end);
    if (!error.empty()) {
      if (log->errors++ == 0) log->first_error = error;
      continue;
    }
    log->latencies_ms.push_back(std::chrono::duration<double, std::milli>(end - start).count());
  }
}

// CPU time this process has used, user and system, in seconds.
double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// Nearest-rank percentile of sorted values.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return std::nan("");
  const size_t rank =
      static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

std::string Fixed(double v, int digits) {
  if (!std::isfinite(v)) return "-";
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

void PrintAligned(std::ostream& out, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w;
  for (const auto& r : rows) {
    if (w.size() < r.size()) w.resize(r.size());
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      if (i) line += "  ";
      line += r[i];
      if (i + 1 < r.size()) line += std::string(w[i] - r[i].size(), ' ');
    }
    out << line << "\n";
  }
}

}  // namespace

Workload ParseWorkload(const std::string& name) {
  for (Workload w : {Workload::kHealth, Workload::kPredictOne, Workload::kPredictBatch,
                     Workload::kUncertainty, Workload::kInfer, Workload::kRest}) {
    if (name == Key(w)) return w;
  }
  throw std::invalid_argument("unknown workload '" + name +
                              "' (health, predict, predict-batch, uncertainty, infer, rest)");
}

double BenchReport::RatioToFloor(Workload w, int concurrency) const {
  double floor = std::nan(""), value = std::nan("");
  for (const auto& r : results) {
    if (r.concurrency != concurrency || r.calls == 0) continue;
    if (r.workload == Workload::kHealth) floor = r.p50_ms;
    if (r.workload == w) value = r.p50_ms;
  }
  return value / floor;
}

json BenchReport::ToJson() const {
  json j;
  j["server"] = server;
  j["model"] = model;
  j["model_version"] = model_version;
  j["input_width"] = input_width;
  j["inputs"] = inputs;
  j["channels"] = channels;
  j["warmup_seconds"] = warmup_seconds;
  if (count > 0)
    j["count"] = count;
  else
    j["duration_seconds"] = duration_seconds;
  j["results"] = json::array();
  std::vector<int> levels;
  for (const auto& r : results) {
    j["results"].push_back({{"workload", Key(r.workload)},
                            {"name", r.name},
                            {"rows", r.rows},
                            {"samples", r.samples},
                            {"concurrency", r.concurrency},
                            {"calls", r.calls},
                            {"errors", r.errors},
                            {"seconds", r.seconds},
                            {"p50_ms", r.p50_ms},
                            {"p90_ms", r.p90_ms},
                            {"p99_ms", r.p99_ms},
                            {"mean_ms", r.mean_ms},
                            {"max_ms", r.max_ms},
                            {"calls_per_second", r.calls_per_second},
                            {"rows_per_second", r.rows_per_second},
                            {"client_cpu", r.client_cpu}});
    if (!r.first_error.empty()) j["results"].back()["first_error"] = r.first_error;
    if (std::find(levels.begin(), levels.end(), r.concurrency) == levels.end()) {
      levels.push_back(r.concurrency);
    }
  }
  // nlohmann writes a NaN as null: a ratio whose workloads were not run.
  j["ratios"] = json::array();
  for (int c : levels) {
    j["ratios"].push_back(
        {{"concurrency", c},
         {"predict_p50_over_health_p50", RatioToFloor(Workload::kPredictOne, c)},
         {"predict_batch_p50_over_health_p50", RatioToFloor(Workload::kPredictBatch, c)},
         {"uncertainty_p50_over_health_p50", RatioToFloor(Workload::kUncertainty, c)}});
  }
  return j;
}

void BenchReport::PrintTable(std::ostream& out) const {
  out << "model '" << model << "' version " << model_version << ", " << input_width << " inputs ("
      << inputs << "), server " << server << ", " << channels << ", "
      << (count > 0 ? std::to_string(count) + " calls" : Fixed(duration_seconds, 1) + " s")
      << " per row after " << Fixed(warmup_seconds, 1) << " s warm-up\n\n";
  std::vector<std::vector<std::string>> rows = {{"workload", "concurrency", "calls", "errors",
                                                 "p50_ms", "p90_ms", "p99_ms", "calls/s", "rows/s",
                                                 "client_cpu"}};
  std::vector<int> levels;
  std::string one_name, unc_name;
  for (const auto& r : results) {
    rows.push_back({r.name, std::to_string(r.concurrency), std::to_string(r.calls),
                    std::to_string(r.errors), Fixed(r.p50_ms, 3), Fixed(r.p90_ms, 3),
                    Fixed(r.p99_ms, 3), Fixed(r.calls_per_second, 0),
                    r.rows ? Fixed(r.rows_per_second, 0) : "-", Fixed(r.client_cpu, 2)});
    if (std::find(levels.begin(), levels.end(), r.concurrency) == levels.end()) {
      levels.push_back(r.concurrency);
    }
    if (r.workload == Workload::kPredictOne) one_name = r.name;
    if (r.workload == Workload::kUncertainty) unc_name = r.name;
  }
  PrintAligned(out, rows);
  const bool has_floor = std::any_of(results.begin(), results.end(), [](const BenchResult& r) {
    return r.workload == Workload::kHealth;
  });
  if (!has_floor || (one_name.empty() && unc_name.empty())) return;
  out << "\np50 over the health-check p50 at the same concurrency\n";
  std::vector<std::vector<std::string>> ratios = {{"concurrency"}};
  if (!one_name.empty()) ratios[0].push_back(one_name);
  if (!unc_name.empty()) ratios[0].push_back(unc_name);
  for (int c : levels) {
    std::vector<std::string> row = {std::to_string(c)};
    if (!one_name.empty()) row.push_back(Fixed(RatioToFloor(Workload::kPredictOne, c), 2) + "x");
    if (!unc_name.empty()) row.push_back(Fixed(RatioToFloor(Workload::kUncertainty, c), 2) + "x");
    ratios.push_back(row);
  }
  PrintAligned(out, ratios);
}

void BenchReport::PrintCsv(std::ostream& out) const {
  static const char* kColumns[] = {
      "workload",   "name",       "rows",    "samples",          "concurrency",
      "calls",      "errors",     "seconds", "p50_ms",           "p90_ms",
      "p99_ms",     "mean_ms",    "max_ms",  "calls_per_second", "rows_per_second",
      "client_cpu", "first_error"};
  for (size_t i = 0; i < std::size(kColumns); ++i) out << (i ? "," : "") << kColumns[i];
  out << "\n";
  // The cells of ToJson's results, numbers in the same digits; a text with a comma or a quote is
  // quoted (RFC 4180).
  const json report = ToJson();
  for (const auto& r : report["results"]) {
    for (size_t i = 0; i < std::size(kColumns); ++i) {
      const json v = r.value(kColumns[i], json());
      std::string cell = v.is_string() ? v.get<std::string>() : v.is_null() ? "" : v.dump();
      if (cell.find_first_of(",\"\n") != std::string::npos) {
        std::string quoted = "\"";
        for (char ch : cell) quoted += ch == '"' ? std::string("\"\"") : std::string(1, ch);
        cell = quoted + "\"";
      }
      out << (i ? "," : "") << cell;
    }
    out << "\n";
  }
}

namespace {

// The model's version and input width into the report, and the requests the workloads send: rows
// of the --data file, or random ones.
Requests PrepareRequests(dc::Client& client, const BenchOptions& o, BenchReport* report) {
  const v1::ModelInfo info = client.GetModel(o.model);
  report->model_version = info.version();
  report->input_width = 1;
  for (int d : info.spec().input_shape()) report->input_width *= d;
  dc::Matrix pool;
  if (!o.data_path.empty()) {
    auto table = dc::ReadCsvFile(o.data_path, o.target_column);
    pool = table.values;
    // A file with one column more than the model takes: the last one is the target.
    if (o.target_column.empty() && pool.cols() == report->input_width + 1) {
      dc::Matrix x = pool.leftCols(report->input_width);
      pool = x;
    }
    if (pool.cols() != report->input_width || pool.rows() == 0) {
      throw std::runtime_error(o.data_path + " has " + std::to_string(pool.cols()) +
                               " feature columns and " + std::to_string(pool.rows()) +
                               " rows; model '" + o.model + "' takes " +
                               std::to_string(report->input_width));
    }
  }
  return BuildRequests(o, pool, report->input_width);
}

// Latencies, counts and errors of the workers' logs into r.
void Summarize(const std::vector<WorkerLog>& logs, const Phase& phase, const BenchOptions& o,
               BenchResult* r) {
  std::vector<double> all;
  int64_t completed = 0;
  Clock::time_point last_end = phase.measure_start;
  for (const auto& log : logs) {
    all.insert(all.end(), log.latencies_ms.begin(), log.latencies_ms.end());
    completed += log.completed_in_window;
    r->errors += log.errors;
    if (r->first_error.empty()) r->first_error = log.first_error;
    last_end = std::max(last_end, log.last_end);
  }
  std::sort(all.begin(), all.end());
  r->calls = static_cast<int64_t>(all.size());
  if (o.count > 0) {
    r->seconds = std::chrono::duration<double>(last_end - phase.measure_start).count();
    completed = r->calls;
  } else {
    r->seconds = o.duration_seconds;
  }
  r->p50_ms = Percentile(all, 50);
  r->p90_ms = Percentile(all, 90);
  r->p99_ms = Percentile(all, 99);
  r->max_ms = all.empty() ? std::nan("") : all.back();
  double sum = 0;
  for (double v : all) sum += v;
  r->mean_ms = all.empty() ? std::nan("") : sum / static_cast<double>(all.size());
  r->calls_per_second = r->seconds > 0 ? static_cast<double>(completed) / r->seconds : 0;
  r->rows_per_second = r->calls_per_second * r->rows;
}

// One workload at one concurrency level: `level` workers, then their summary.
void Measure(const std::vector<std::unique_ptr<dc::Client>>& clients, const Requests& requests,
             const BenchOptions& o, int level, BenchResult* r) {
  std::atomic<int64_t> remaining{o.count};
  Phase phase;
  phase.workload = r->workload;
  phase.measure_start = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(o.warmup_seconds));
  phase.measure_end = phase.measure_start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(o.duration_seconds));
  if (o.count > 0) phase.remaining = &remaining;
  std::vector<WorkerLog> logs(level);
  const double cpu_start = ProcessCpuSeconds();
  const Clock::time_point wall_start = Clock::now();
  std::vector<std::thread> workers;
  for (int i = 0; i < level; ++i) {
    dc::Client& client = *clients[o.shared_channel ? 0 : i];
    workers.emplace_back(
        [&, i, &client = client] { RunWorker(client, requests, phase, i, o, &logs[i]); });
  }
  for (auto& t : workers) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - wall_start).count();
  r->client_cpu = wall > 0 ? (ProcessCpuSeconds() - cpu_start) / wall : 0;
  Summarize(logs, phase, o, r);
}

}  // namespace

BenchReport RunBench(const dc::ClientOptions& client_options, const BenchOptions& o,
                     std::ostream* progress) {
  if (o.concurrency.empty()) throw std::invalid_argument("no concurrency level given");
  for (int c : o.concurrency) {
    if (c <= 0) throw std::invalid_argument("concurrency levels must be positive");
  }
  if (o.workloads.empty()) throw std::invalid_argument("no workload given");
  const int max_workers = *std::max_element(o.concurrency.begin(), o.concurrency.end());

  // One client per worker with a connection of its own, or one client for all.
  std::vector<std::unique_ptr<dc::Client>> clients;
  for (int i = 0; i < (o.shared_channel ? 1 : max_workers); ++i) {
    dc::ClientOptions co = client_options;
    co.own_connection = !o.shared_channel;
    clients.push_back(std::make_unique<dc::Client>(co));
  }

  BenchReport report;
  report.server = client_options.target;
  report.model = o.model;
  report.channels = o.shared_channel ? "one shared channel" : "a channel per worker";
  report.duration_seconds = o.duration_seconds;
  report.warmup_seconds = o.warmup_seconds;
  report.count = o.count;
  report.inputs = o.data_path.empty() ? "random" : o.data_path;

  const bool needs_model = std::any_of(o.workloads.begin(), o.workloads.end(),
                                       [](Workload w) { return w != Workload::kHealth; });
  Requests requests;
  if (needs_model) requests = PrepareRequests(*clients[0], o, &report);

  const int steps = static_cast<int>(o.concurrency.size() * o.workloads.size());
  if (progress) {
    *progress << "bench: " << o.workloads.size() << " workloads x " << o.concurrency.size()
              << " concurrency levels, " << report.channels << ", ";
    if (o.count > 0) {
      *progress << o.count << " calls each after " << o.warmup_seconds << " s warm-up\n";
    } else {
      *progress << o.duration_seconds << " s each after " << o.warmup_seconds
                << " s warm-up: about "
                << static_cast<int>(std::ceil(steps * (o.duration_seconds + o.warmup_seconds)))
                << " s\n";
    }
  }

  const int step_width = static_cast<int>(std::to_string(steps).size());
  int step = 0;
  for (int level : o.concurrency) {
    for (Workload w : o.workloads) {
      ++step;
      BenchResult r;
      r.workload = w;
      r.name = DisplayName(w, o);
      r.rows = RowsPerCall(w, o);
      r.samples = w == Workload::kUncertainty ? o.samples : 0;
      r.concurrency = level;
      if (progress) {
        *progress << "bench [" << std::setw(step_width) << step << "/" << steps << "] concurrency "
                  << level << ", " << r.name << ": " << std::flush;
      }
      Measure(clients, requests, o, level, &r);
      if (progress) {
        *progress << "p50 " << Fixed(r.p50_ms, 3) << " ms, p99 " << Fixed(r.p99_ms, 3) << " ms, "
                  << Fixed(r.calls_per_second, 0) << " calls/s";
        if (r.errors) *progress << ", " << r.errors << " errors (" << r.first_error << ")";
        *progress << "\n";
      }
      report.results.push_back(std::move(r));
    }
  }
  return report;
}

}  // namespace dropnet::cli
