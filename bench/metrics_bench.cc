// What the service's metrics cost a call (ServiceMetrics::ObserveCall, once per answered call)
// and a scrape of /metrics without server gauges.
#include <benchmark/benchmark.h>

#include "server/service/metrics_registry.h"

namespace {

void BM_ObserveCall(benchmark::State& state) {
  dropnet::service::ServiceMetrics m({}, [](const std::string&) { return true; });
  const std::string model = "fashion-mlp";
  for (auto _ : state) m.ObserveCall("Predict", model, 0, 0.0002);
}
BENCHMARK(BM_ObserveCall);

void BM_ObserveCallThreads(benchmark::State& state) {
  static dropnet::service::ServiceMetrics m({}, [](const std::string&) { return true; });
  const std::string model = "fashion-mlp";
  for (auto _ : state) m.ObserveCall("Predict", model, 0, 0.0002);
}
BENCHMARK(BM_ObserveCallThreads)->Threads(2);

void BM_Scrape(benchmark::State& state) {
  dropnet::service::ServiceMetrics m;
  for (int i = 0; i < 10; ++i) m.ObserveCall("Predict", "model-" + std::to_string(i), 0, 0.001);
  for (auto _ : state) benchmark::DoNotOptimize(m.Scrape());
}
BENCHMARK(BM_Scrape);

}  // namespace

BENCHMARK_MAIN();
