// Monte-Carlo dropout: predictive mean and uncertainty from T stochastic passes.
//
// Gal & Ghahramani, "Dropout as a Bayesian Approximation" (ICML 2016). The deterministic prefix
// (every layer before the first stochastic one) runs once; its output is replicated and the rest
// of the network runs in kMonteCarlo over (samples x B) rows in chunks that fit a memory budget,
// reduced as it goes (Welford, one sample at a time in sample order after each wave of chunks)
// instead of keeping T x B x C outputs. Sample t of input b draws at stream t, row b, so results
// do not depend on the chunking or the thread count. Classification reports BALD's mutual
// information (Houlsby et al. 2011) and the variation ratio (Freeman 1965); regression the total
// predictive variance (sample variance + 1/tau, + the mean predicted variance of a Gaussian head)
// and central intervals.
#ifndef DROPNET_ENGINE_MC_H_
#define DROPNET_ENGINE_MC_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "server/engine/loss.h"
#include "server/engine/network.h"

namespace dropnet::engine {

struct McOptions {
  int samples = 50;  // T
  uint64_t seed = 0;
  int threads = 1;                           // chunks run on up to this many threads
  int64_t memory_budget_bytes = 64ll << 20;  // activations of one chunk stay under this
  bool keep_samples = false;                 // also return every sample's outputs
  double tau = 0.0;                          // regression model precision; 0: unknown
  double interval = 0.95;                    // regression central interval mass
  const Matrix* targets = nullptr;           // when set: per-row test log-likelihood (regression)
  std::function<bool()> should_stop;         // polled between chunks; true: throw Cancelled
};

struct McResult {
  int samples = 0;
  int chunk_samples = 0;  // samples per chunk, from the memory budget
  Matrix mean;            // B x C: mean probabilities, or mean values
  Matrix stddev;          // B x C: std over samples (population, 1/T)
  // Classification (per input row).
  Eigen::VectorXf predictive_entropy;  // H[mean_t p_t]
  Eigen::VectorXf expected_entropy;    // mean_t H[p_t]
  Eigen::VectorXf mutual_information;  // predictive - expected (BALD)
  Eigen::VectorXf variation_ratio;     // 1 - (votes of the modal class) / T
  std::vector<int> predicted_class;    // argmax of the mean
  // Regression (per value).
  Matrix total_variance;               // sample variance + 1/tau + mean predicted variance
  Matrix lower, upper;                 // mean -/+ z * sqrt(total variance), z for `interval`
  Eigen::VectorXd log_likelihood;      // per row, when targets were given
  std::vector<Matrix> sample_outputs;  // T matrices of B x C when keep_samples
};

// Throws InvalidArgument for T <= 0, a bad interval or input width, Cancelled when should_stop.
McResult MonteCarloPredict(const Network& net, Task task, LossKind loss, const Matrix& x,
                           const McOptions& options);

// The random row addresses of the inputs x in Monte Carlo: RowKey of each row's values, so that a
// row's masks depend on the row, not on its position among the others.
std::vector<uint32_t> MonteCarloRowKeys(const Matrix& x);

// The z with P(|N(0,1)| <= z) = mass.
double NormalQuantileTwoSided(double mass);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_MC_H_
