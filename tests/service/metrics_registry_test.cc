// The metrics module on its own: counters and histograms by label, the bound on model labels, the
// gauges read at scrape time and the process figures from /proc.
#include "server/service/metrics_registry.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <map>
#include <set>

#include <gtest/gtest.h>

namespace dropnet::service {
namespace {

using Labels = std::map<std::string, std::string>;

// The metric of family `name` whose labels are exactly `labels`, or null.
const prometheus::ClientMetric* Find(const std::vector<prometheus::MetricFamily>& families,
                                     const std::string& name, const Labels& labels) {
  for (const auto& f : families) {
    if (f.name != name) continue;
    for (const auto& m : f.metric) {
      Labels have;
      for (const auto& l : m.label) have[l.name] = l.value;
      if (have == labels) return &m;
    }
  }
  return nullptr;
}

size_t SeriesCount(const std::vector<prometheus::MetricFamily>& families, const std::string& name) {
  for (const auto& f : families) {
    if (f.name == name) return f.metric.size();
  }
  return 0;
}

double CounterValue(ServiceMetrics& m, const std::string& name, const Labels& labels) {
  const auto families = m.registry().Collect();
  const auto* metric = Find(families, name, labels);
  return metric ? metric->counter.value : -1;
}

// dropnet_requests_total of one method, model and status code.
double Requests(ServiceMetrics& m, const std::string& method, const std::string& model,
                const std::string& code) {
  return CounterValue(m, "dropnet_requests_total",
                      {{"method", method}, {"model", model}, {"code", code}});
}

TEST(ServiceMetricsTest, CountsCallsByMethodModelAndCode) {
  ServiceMetrics m({}, [](const std::string& name) { return name == "iris"; });
  m.ObserveCall("Predict", "iris", 0, 0.0003);
  m.ObserveCall("Predict", "iris", 0, 0.0004);
  m.ObserveCall("Predict", "iris", 3, 0.0001);
  m.ObserveCall("ListModels", "-", 0, 0.002);
  EXPECT_EQ(Requests(m, "Predict", "iris", "OK"), 2);
  EXPECT_EQ(Requests(m, "Predict", "iris", "INVALID_ARGUMENT"), 1);
  EXPECT_EQ(Requests(m, "ListModels", "", "OK"), 1);
  const auto families = m.registry().Collect();
  const auto* h = Find(families, "dropnet_request_duration_seconds",
                       {{"method", "Predict"}, {"model", "iris"}});
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->histogram.sample_count, 3u);
  EXPECT_NEAR(h->histogram.sample_sum, 0.0008, 1e-12);
  // Cumulative buckets: 0.0001 <= 0.0001; 0.0003 and 0.0004 <= 0.0005, not <= 0.00025.
  const auto bounds = ServiceMetrics::LatencyBuckets();
  for (size_t i = 0; i < bounds.size(); ++i) {
    const auto& b = h->histogram.bucket[i];
    EXPECT_DOUBLE_EQ(b.upper_bound, bounds[i]);
    const uint64_t expected = bounds[i] < 0.0001 ? 0 : bounds[i] < 0.0005 ? 1 : 3;
    EXPECT_EQ(b.cumulative_count, expected) << "le=" << bounds[i];
  }
}

TEST(ServiceMetricsTest, UnknownModelsShareOneLabel) {
  ServiceMetrics m({}, [](const std::string& name) { return name.rfind("model-", 0) == 0; });
  for (int i = 0; i < 5; ++i) m.ObserveCall("Predict", "nope-" + std::to_string(i), 5, 0.0001);
  EXPECT_EQ(Requests(m, "Predict", "_other", "NOT_FOUND"), 5);
  // Existing models get a label each, up to the bound; the rest share "_other".
  const size_t n = ServiceMetrics::kMaxModelLabels + 20;
  for (size_t i = 0; i < n; ++i) m.ObserveCall("GetModel", "model-" + std::to_string(i), 0, 0.001);
  const auto families = m.registry().Collect();
  EXPECT_EQ(SeriesCount(families, "dropnet_request_duration_seconds"),
            ServiceMetrics::kMaxModelLabels + 2);  // + Predict/_other + GetModel/_other
  EXPECT_EQ(Requests(m, "GetModel", "_other", "OK"), 20);
  EXPECT_EQ(Requests(m, "GetModel", "model-7", "OK"), 1);
}

TEST(ServiceMetricsTest, MonteCarloSamplesAndEpochs) {
  ServiceMetrics m;
  m.ObserveCall("PredictUncertainty", "a", 0, 0.01, 50);
  m.ObserveCall("PredictUncertainty", "a", 0, 0.01, 200);
  m.ObserveCall("Predict", "a", 0, 0.001);
  m.ObserveEpoch("a");
  m.ObserveEpoch("a");
  const auto families = m.registry().Collect();
  const auto* h = Find(families, "dropnet_monte_carlo_samples", {{"method", "PredictUncertainty"}});
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->histogram.sample_count, 2u);
  EXPECT_EQ(h->histogram.sample_sum, 250);
  EXPECT_EQ(Find(families, "dropnet_monte_carlo_samples", {{"method", "Predict"}}), nullptr);
  EXPECT_EQ(CounterValue(m, "dropnet_training_epochs_total", {{"model", "a"}}), 2);
}

TEST(ServiceMetricsTest, GaugesFollowTheServerWhenScraped) {
  ServerState state;
  state.queued_calls = 3;
  state.calls_in_flight = 5;
  state.store_bytes = 12345;
  state.models = {{"a", 4, true, 7, 0.25, 0.875}, {"b", 1, false, 2, 0.5, 0.5}};
  ServiceMetrics m([&] { return state; });
  std::string text = m.Scrape();
  EXPECT_NE(text.find("dropnet_queued_calls 3"), std::string::npos) << text;
  EXPECT_NE(text.find("dropnet_calls_in_flight 5"), std::string::npos);
  EXPECT_NE(text.find("dropnet_models 2"), std::string::npos);
  EXPECT_NE(text.find("dropnet_store_bytes 12345"), std::string::npos);
  EXPECT_NE(text.find("dropnet_trainings_running 1"), std::string::npos);
  EXPECT_NE(text.find("dropnet_model_versions{model=\"a\"} 4"), std::string::npos);
  EXPECT_NE(text.find("dropnet_training_epoch{model=\"a\"} 7"), std::string::npos);
  EXPECT_NE(text.find("dropnet_training_loss{model=\"a\"} 0.25"), std::string::npos);
  EXPECT_NE(text.find("dropnet_training_validation_metric{model=\"a\"} 0.875"), std::string::npos);
  EXPECT_EQ(text.find("dropnet_training_epoch{model=\"b\"}"), std::string::npos);
  // The training ends and model a goes: its gauges go with it.
  state.models = {{"b", 2, false, 2, 0.5, 0.5}};
  text = m.Scrape();
  EXPECT_NE(text.find("dropnet_trainings_running 0"), std::string::npos);
  EXPECT_EQ(text.find("model=\"a\""), std::string::npos) << text;
  EXPECT_NE(text.find("dropnet_model_versions{model=\"b\"} 2"), std::string::npos);
}

TEST(ServiceMetricsTest, ProcessFiguresComeFromProc) {
  const ProcessStats before = ReadProcessStats();
  // Spend 0.2 s of this process's CPU time (a wall-clock budget falls short on a busy machine),
  // and open descriptors.
  const std::clock_t until = std::clock() + CLOCKS_PER_SEC / 5;
  volatile double sink = 0;
  while (std::clock() < until) sink = sink + std::sqrt(sink + 1.0);
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) fds.push_back(open("/proc/self/stat", O_RDONLY));
  const ProcessStats after = ReadProcessStats();
  for (int fd : fds) close(fd);
  EXPECT_GE(after.cpu_seconds - before.cpu_seconds, 0.1);
  EXPECT_EQ(after.open_fds - before.open_fds, 10);
  EXPECT_GT(after.resident_bytes, 1 << 20);
  EXPECT_GE(after.virtual_bytes, after.resident_bytes);
  EXPECT_GT(after.max_fds, 0);
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(after.start_time_seconds, now + 1);
  EXPECT_GT(after.start_time_seconds, now - 3600);  // the test started within the hour

  ServiceMetrics m;
  const std::string text = m.Scrape();
  for (const char* name : {"process_cpu_seconds_total ", "process_resident_memory_bytes ",
                           "process_open_fds ", "process_start_time_seconds "}) {
    EXPECT_NE(text.find(std::string("\n") + name), std::string::npos) << name << "\n" << text;
  }
}

TEST(ServiceMetricsTest, DirectoryBytesSumsRegularFiles) {
  char dir_template[] = "/tmp/dropnet-metrics-XXXXXX";
  const std::filesystem::path dir = mkdtemp(dir_template);
  std::filesystem::create_directories(dir / "models" / "m" / "1");
  {
    std::ofstream(dir / "a") << std::string(100, 'x');
    std::ofstream(dir / "models" / "m" / "1" / "checkpoint.pb") << std::string(1000, 'y');
  }
  EXPECT_EQ(DirectoryBytes(dir), 1100);
  EXPECT_EQ(DirectoryBytes(dir / "missing"), 0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dropnet::service
