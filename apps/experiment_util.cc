#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "apps/experiments.h"

namespace dropnet::apps {

void LoadFashion(const std::string& dir, engine::Dataset* train, engine::Dataset* test) {
  *train =
      engine::LoadIdx(dir + "/train-images-idx3-ubyte.gz", dir + "/train-labels-idx1-ubyte.gz");
  *test = engine::LoadIdx(dir + "/t10k-images-idx3-ubyte.gz", dir + "/t10k-labels-idx1-ubyte.gz");
}

void Guard(const std::function<int()>& fn) {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  try {
    const int rc = fn();
    std::fflush(stdout);
    if (rc != 0) std::exit(rc);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dropnet-experiment: %s\n", e.what());
    std::exit(1);
  }
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void McPredictBatches(const engine::Network& net, const engine::Matrix& x,
                      const engine::McOptions& options,
                      const std::function<void(int64_t, const engine::McResult&)>& take) {
  constexpr int64_t kBatch = 500;
  for (int64_t r0 = 0; r0 < x.rows(); r0 += kBatch) {
    const int64_t n = std::min(kBatch, x.rows() - r0);
    take(r0,
         engine::MonteCarloPredict(net, engine::Task::kClassification,
                                   engine::LossKind::kCrossEntropy, x.middleRows(r0, n), options));
  }
}

}  // namespace dropnet::apps
