#include "server/service/metrics_registry.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <system_error>

#include <prometheus/text_serializer.h>

#include "common/status_code_name.h"

namespace dropnet::service {

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

const char* CodeName(int code) { return StatusCodeName(static_cast<grpc::StatusCode>(code)); }

// The system's boot time in seconds since the Unix epoch, from /proc/stat's btime.
double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value = 0;
  while (in >> key) {
    if (key == "btime") {
      in >> value;
      return value;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

int64_t CountOpenFds() {
  std::error_code ec;
  int64_t n = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++n;
  }
  return n > 0 ? n - 1 : 0;  // less the descriptor of the listing itself
}

int64_t MaxFds() {
  std::ifstream in("/proc/self/limits");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max open files", 0) == 0) {
      std::istringstream fields(line.substr(14));
      int64_t soft = 0;
      if (fields >> soft) return soft;
    }
  }
  return 0;
}

}  // namespace

ProcessStats ReadProcessStats() {
  ProcessStats s;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  std::ifstream in("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces and parentheses: fields are counted after the
  // last ')'. Field 3 is the state; utime and stime are 14 and 15, starttime 22, vsize 23, rss 24.
  const size_t close = stat.rfind(')');
  if (close != std::string::npos && ticks > 0) {
    std::istringstream fields(stat.substr(close + 1));
    std::vector<std::string> f;
    for (std::string x; fields >> x;) f.push_back(x);
    auto field = [&](size_t n) { return n - 3 < f.size() ? std::stod(f[n - 3]) : 0.0; };
    s.cpu_seconds = (field(14) + field(15)) / ticks;
    s.start_time_seconds = BootTimeSeconds() + field(22) / ticks;
    s.virtual_bytes = static_cast<int64_t>(field(23));
    s.resident_bytes = static_cast<int64_t>(field(24) * page);
  }
  s.open_fds = CountOpenFds();
  s.max_fds = MaxFds();
  return s;
}

int64_t DirectoryBytes(const std::filesystem::path& root) {
  std::error_code ec;
  int64_t bytes = 0;
  for (std::filesystem::recursive_directory_iterator it(root, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) {
      const auto size = it->file_size(size_ec);
      if (!size_ec) bytes += static_cast<int64_t>(size);
    }
  }
  return bytes;
}

std::vector<double> ServiceMetrics::LatencyBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,     0.25,   0.5,     1,      2.5,   5,      10,    30,   60};
}

ServiceMetrics::ServiceMetrics(std::function<ServerState()> state,
                               std::function<bool(const std::string&)> model_exists)
    : state_(std::move(state)),
      model_exists_(std::move(model_exists)),
      registry_(std::make_shared<prometheus::Registry>()),
      requests_(BuildCounter()
                    .Name("dropnet_requests_total")
                    .Help("Calls answered, by method, model and gRPC status code.")
                    .Register(*registry_)),
      latency_(BuildHistogram()
                   .Name("dropnet_request_duration_seconds")
                   .Help("Time from a call's arrival to its answer (a queued call's wait counts).")
                   .Register(*registry_)),
      samples_(BuildHistogram()
                   .Name("dropnet_monte_carlo_samples")
                   .Help("Monte-Carlo samples T of each Monte-Carlo call.")
                   .Register(*registry_)),
      epochs_(BuildCounter()
                  .Name("dropnet_training_epochs_total")
                  .Help("Training epochs finished, by model.")
                  .Register(*registry_)),
      queued_(BuildGauge()
                  .Name("dropnet_queued_calls")
                  .Help("Prediction calls waiting for a worker.")
                  .Register(*registry_)),
      in_flight_(BuildGauge()
                     .Name("dropnet_calls_in_flight")
                     .Help("Calls received and not yet answered.")
                     .Register(*registry_)),
      trainings_(BuildGauge()
                     .Name("dropnet_trainings_running")
                     .Help("Train calls running.")
                     .Register(*registry_)),
      training_epoch_(BuildGauge()
                          .Name("dropnet_training_epoch")
                          .Help("Epochs a training model has finished (its history's length).")
                          .Register(*registry_)),
      training_loss_(BuildGauge()
                         .Name("dropnet_training_loss")
                         .Help("Training loss of a training model's last finished epoch.")
                         .Register(*registry_)),
      training_metric_(
          BuildGauge()
              .Name("dropnet_training_validation_metric")
              .Help("Validation metric (accuracy or RMSE) of a training model's last epoch; NaN "
                    "without a validation split.")
              .Register(*registry_)),
      models_(BuildGauge().Name("dropnet_models").Help("Models served.").Register(*registry_)),
      versions_(BuildGauge()
                    .Name("dropnet_model_versions")
                    .Help("Stored versions of each model.")
                    .Register(*registry_)),
      store_bytes_(BuildGauge()
                       .Name("dropnet_store_bytes")
                       .Help("Bytes of the files in the model store.")
                       .Register(*registry_)),
      cpu_(BuildCounter()
               .Name("process_cpu_seconds_total")
               .Help("User and system CPU time spent in seconds.")
               .Register(*registry_)),
      resident_(BuildGauge()
                    .Name("process_resident_memory_bytes")
                    .Help("Resident memory size in bytes.")
                    .Register(*registry_)),
      virtual_(BuildGauge()
                   .Name("process_virtual_memory_bytes")
                   .Help("Virtual memory size in bytes.")
                   .Register(*registry_)),
      open_fds_(BuildGauge()
                    .Name("process_open_fds")
                    .Help("Number of open file descriptors.")
                    .Register(*registry_)),
      max_fds_(BuildGauge()
                   .Name("process_max_fds")
                   .Help("Maximum number of open file descriptors.")
                   .Register(*registry_)),
      start_time_(BuildGauge()
                      .Name("process_start_time_seconds")
                      .Help("Start time of the process since unix epoch in seconds.")
                      .Register(*registry_)) {}

std::string ServiceMetrics::ModelLabel(const std::string& model) {
  if (model.empty() || model == "-") return "";
  if (std::find(model_labels_.begin(), model_labels_.end(), model) != model_labels_.end()) {
    return model;
  }
  if (model_labels_.size() >= kMaxModelLabels || (model_exists_ && !model_exists_(model))) {
    return "_other";
  }
  model_labels_.push_back(model);
  return model;
}

void ServiceMetrics::ObserveCall(const char* method, const std::string& model, int code,
                                 double seconds, int samples) {
  prometheus::Counter* counter = nullptr;
  prometheus::Histogram* latency = nullptr;
  prometheus::Histogram* sample_hist = nullptr;
  {
    std::lock_guard lock(mu_);
    const std::string label = ModelLabel(model);
    CallSeries& series = calls_[{method, label}];
    if (!series.latency) {
      series.latency = &latency_.Add({{"method", method}, {"model", label}}, LatencyBuckets());
    }
    latency = series.latency;
    prometheus::Counter*& by_code = series.by_code[code];
    if (!by_code) {
      by_code = &requests_.Add({{"method", method}, {"model", label}, {"code", CodeName(code)}});
    }
    counter = by_code;
    if (samples > 0) {
      prometheus::Histogram*& h = samples_by_method_[method];
      if (!h) {
        h = &samples_.Add({{"method", method}},
                          prometheus::Histogram::BucketBoundaries{1, 10, 20, 50, 100, 200, 500,
                                                                  1000, 2000, 5000, 10000});
      }
      sample_hist = h;
    }
  }
  counter->Increment();
  latency->Observe(seconds);
  if (sample_hist) sample_hist->Observe(samples);
}

void ServiceMetrics::ObserveEpoch(const std::string& model) {
  prometheus::Counter* counter = nullptr;
  {
    std::lock_guard lock(mu_);
    const std::string label = ModelLabel(model);
    prometheus::Counter*& c = epochs_by_model_[label];
    if (!c) c = &epochs_.Add({{"model", label}});
    counter = c;
  }
  counter->Increment();
}

void ServiceMetrics::Refresh() {
  for (auto& [family, gauge] : per_model_) family->Remove(gauge);
  per_model_.clear();
  if (state_) {
    const ServerState s = state_();
    queued_.Add({}).Set(static_cast<double>(s.queued_calls));
    in_flight_.Add({}).Set(static_cast<double>(s.calls_in_flight));
    models_.Add({}).Set(static_cast<double>(s.models.size()));
    store_bytes_.Add({}).Set(static_cast<double>(s.store_bytes));
    int64_t training = 0;
    size_t labelled = 0;
    for (const auto& m : s.models) {
      training += m.training ? 1 : 0;
      // The per-model gauges exist for as many models as calls may label.
      if (++labelled > kMaxModelLabels) continue;
      auto add = [&](prometheus::Family<prometheus::Gauge>& family, double value) {
        prometheus::Gauge& g = family.Add({{"model", m.name}});
        g.Set(value);
        per_model_.emplace_back(&family, &g);
      };
      add(versions_, static_cast<double>(m.versions));
      if (m.training) {
        add(training_epoch_, static_cast<double>(m.epoch));
        add(training_loss_, m.loss);
        add(training_metric_, m.validation_metric);
      }
    }
    trainings_.Add({}).Set(static_cast<double>(training));
  }
  const ProcessStats p = ReadProcessStats();
  if (p.cpu_seconds > last_cpu_seconds_) {
    cpu_.Add({}).Increment(p.cpu_seconds - last_cpu_seconds_);
    last_cpu_seconds_ = p.cpu_seconds;
  } else {
    cpu_.Add({});
  }
  resident_.Add({}).Set(static_cast<double>(p.resident_bytes));
  virtual_.Add({}).Set(static_cast<double>(p.virtual_bytes));
  open_fds_.Add({}).Set(static_cast<double>(p.open_fds));
  max_fds_.Add({}).Set(static_cast<double>(p.max_fds));
  start_time_.Add({}).Set(p.start_time_seconds);
}

std::string ServiceMetrics::Scrape() {
  std::lock_guard lock(scrape_mu_);
  Refresh();
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace dropnet::service
