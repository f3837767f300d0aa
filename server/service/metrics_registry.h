// The server's Prometheus metrics, kept with prometheus-cpp's core library and written in
// Prometheus' text format (prometheus::TextSerializer) for the HTTP port's GET /metrics.
//
// Calls: dropnet_requests_total{method,model,code}, dropnet_request_duration_seconds{method,model}
// (buckets from 50 us to 60 s), dropnet_monte_carlo_samples{method} (T per Monte-Carlo call).
// The model label is the called model's name when that model exists, up to kMaxModelLabels names;
// "" for calls on no model (ListModels, data sets) and "_other" for unknown models and past the
// bound, so a caller cannot grow the series without bound. Each (method, model) keeps its
// pre-resolved children in a small map, so a call costs a map look-up and a few atomic additions.
//
// Gauges read when scraped (Collect): calls queued and in flight, trainings running with their
// epoch, loss and validation metric, models, their versions, the store's bytes, and the process'
// CPU seconds, resident memory, open file descriptors and start time (from /proc).
#ifndef DROPNET_SERVICE_METRICS_REGISTRY_H_
#define DROPNET_SERVICE_METRICS_REGISTRY_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace dropnet::service {

// What the server looks like when scraped; the owner of the metrics fills it (Server).
struct ServerState {
  int64_t queued_calls = 0;     // prediction calls waiting for a worker
  int64_t calls_in_flight = 0;  // calls received and not yet answered
  struct Model {
    std::string name;
    int64_t versions = 0;
    bool training = false;
    int64_t epoch = 0;  // epochs in its history
    double loss = 0, validation_metric = 0;
  };
  std::vector<Model> models;
  int64_t store_bytes = 0;
};

// The process' own figures, from /proc/self.
struct ProcessStats {
  double cpu_seconds = 0;
  int64_t resident_bytes = 0, virtual_bytes = 0;
  int64_t open_fds = 0, max_fds = 0;
  double start_time_seconds = 0;  // since the Unix epoch
};
ProcessStats ReadProcessStats();

// Bytes of the regular files below `root` (0 when it does not exist).
int64_t DirectoryBytes(const std::filesystem::path& root);

class ServiceMetrics {
 public:
  static constexpr size_t kMaxModelLabels = 100;
  // `state` fills a ServerState when scraped (may be empty: no server gauges); `model_exists`
  // tells whether a model of that name exists (may be empty: every name does).
  ServiceMetrics(std::function<ServerState()> state = {},
                 std::function<bool(const std::string&)> model_exists = {});

  // One finished call: `code` is its grpc::StatusCode, `model` the name it named ("" or "-":
  // none), `samples` its Monte-Carlo T (0: not a Monte-Carlo call).
  void ObserveCall(const char* method, const std::string& model, int code, double seconds,
                   int samples = 0);
  // Counts one finished training epoch of `model`.
  void ObserveEpoch(const std::string& model);

  // Every metric in Prometheus' text format (version 0.0.4), the gauges read now.
  std::string Scrape();
  prometheus::Registry& registry() { return *registry_; }

  // The histogram buckets of dropnet_request_duration_seconds.
  static std::vector<double> LatencyBuckets();

 private:
  struct CallSeries {
    prometheus::Histogram* latency = nullptr;
    std::map<int, prometheus::Counter*> by_code;
  };
  // The label a call's model gets (see above). Holds mu_.
  std::string ModelLabel(const std::string& model);
  void Refresh();

  std::function<ServerState()> state_;
  std::function<bool(const std::string&)> model_exists_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Family<prometheus::Histogram>& samples_;
  prometheus::Family<prometheus::Counter>& epochs_;
  prometheus::Family<prometheus::Gauge>& queued_;
  prometheus::Family<prometheus::Gauge>& in_flight_;
  prometheus::Family<prometheus::Gauge>& trainings_;
  prometheus::Family<prometheus::Gauge>& training_epoch_;
  prometheus::Family<prometheus::Gauge>& training_loss_;
  prometheus::Family<prometheus::Gauge>& training_metric_;
  prometheus::Family<prometheus::Gauge>& models_;
  prometheus::Family<prometheus::Gauge>& versions_;
  prometheus::Family<prometheus::Gauge>& store_bytes_;
  prometheus::Family<prometheus::Counter>& cpu_;
  prometheus::Family<prometheus::Gauge>& resident_;
  prometheus::Family<prometheus::Gauge>& virtual_;
  prometheus::Family<prometheus::Gauge>& open_fds_;
  prometheus::Family<prometheus::Gauge>& max_fds_;
  prometheus::Family<prometheus::Gauge>& start_time_;

  std::mutex mu_;                                                    // the maps below
  std::map<std::pair<std::string, std::string>, CallSeries> calls_;  // (method, model label)
  std::map<std::string, prometheus::Histogram*> samples_by_method_;
  std::map<std::string, prometheus::Counter*> epochs_by_model_;
  std::vector<std::string> model_labels_;  // names given a label of their own so far

  std::mutex scrape_mu_;  // one Refresh at a time
  // The per-model gauges of the last scrape, removed at the next (models come and go).
  std::vector<std::pair<prometheus::Family<prometheus::Gauge>*, prometheus::Gauge*>> per_model_;
  double last_cpu_seconds_ = 0;
};

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_METRICS_REGISTRY_H_
