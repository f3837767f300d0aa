// Tests for the Monte-Carlo dropout estimator against a naive reference computed here: T full
// forward passes in kMonteCarlo, each at RandomStream{seed, t, B, row keys}, reduced by hand in
// double.
#include "server/engine/mc.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "server/engine/random.h"
#include "tests/engine/test_util.h"

namespace dropnet::engine {
namespace {

constexpr double kLog2Pi = 1.8378770664093453;

Network MakeNet(int inputs, std::vector<LayerConfig> layers, uint64_t seed = 3) {
  return Network(MakeSpec(inputs, std::move(layers), seed));
}

// Dense-ReLU-Dropout-Dense: a two-layer deterministic prefix that MC computes once.
Network ClassifierWithPrefix(int inputs = 6, int classes = 4) {
  return MakeNet(inputs, {DenseLayer(16), Simple("relu"), DropoutLayer(0.5), DenseLayer(classes)});
}

// The raw network outputs of sample t: the whole network in kMonteCarlo at stream t.
std::vector<Eigen::MatrixXd> NaiveRawSamples(const Network& net, const Matrix& x, int samples,
                                             uint64_t seed) {
  std::vector<Eigen::MatrixXd> out;
  const std::vector<uint32_t> keys = MonteCarloRowKeys(x);
  for (int t = 0; t < samples; ++t) {
    Context ctx;
    ctx.mode = Mode::kMonteCarlo;
    ctx.rng = RandomStream{seed, static_cast<uint64_t>(t), x.rows(), keys.data()};
    out.push_back(net.Forward(x, ctx).cast<double>());
  }
  return out;
}

Eigen::MatrixXd SoftmaxRowsDouble(const Eigen::MatrixXd& logits) {
  Eigen::MatrixXd p(logits.rows(), logits.cols());
  for (int64_t r = 0; r < logits.rows(); ++r) {
    const double m = logits.row(r).maxCoeff();
    p.row(r) = (logits.row(r).array() - m).exp().matrix();
    p.row(r) /= p.row(r).sum();
  }
  return p;
}

double Entropy(const Eigen::RowVectorXd& p) {
  double h = 0;
  for (int64_t c = 0; c < p.size(); ++c)
    if (p[c] > 0) h -= p[c] * std::log(p[c]);
  return h;
}

struct NaiveClassification {
  std::vector<Eigen::MatrixXd> probs;
  Eigen::MatrixXd mean, stddev;
  Eigen::VectorXd predictive_entropy, expected_entropy, mutual_information, variation_ratio;
  std::vector<int> predicted_class;
};

NaiveClassification NaiveClassify(const Network& net, const Matrix& x, int samples, uint64_t seed) {
  NaiveClassification n;
  for (const auto& raw : NaiveRawSamples(net, x, samples, seed)) {
    n.probs.push_back(net.EndsWithSoftmax() ? raw : SoftmaxRowsDouble(raw));
  }
  const int64_t b = x.rows(), c = n.probs[0].cols();
  const double t_count = samples;
  n.mean = Eigen::MatrixXd::Zero(b, c);
  for (const auto& p : n.probs) n.mean += p;
  n.mean /= t_count;
  Eigen::MatrixXd var = Eigen::MatrixXd::Zero(b, c);
  for (const auto& p : n.probs) var += (p - n.mean).array().square().matrix();
  n.stddev = (var / t_count).cwiseSqrt();  // population std, 1/T
  n.predictive_entropy.resize(b);
  n.expected_entropy.resize(b);
  n.mutual_information.resize(b);
  n.variation_ratio.resize(b);
  for (int64_t r = 0; r < b; ++r) {
    n.predictive_entropy[r] = Entropy(n.mean.row(r));
    double eh = 0;
    std::vector<int> votes(c, 0);
    for (const auto& p : n.probs) {
      eh += Entropy(p.row(r));
      Eigen::Index arg;
      p.row(r).maxCoeff(&arg);
      ++votes[arg];
    }
    n.expected_entropy[r] = eh / t_count;
    n.mutual_information[r] = std::max(0.0, n.predictive_entropy[r] - n.expected_entropy[r]);
    n.variation_ratio[r] = 1.0 - *std::max_element(votes.begin(), votes.end()) / t_count;
    Eigen::Index arg;
    n.mean.row(r).maxCoeff(&arg);
    n.predicted_class.push_back(static_cast<int>(arg));
  }
  return n;
}

void ExpectMatchesNaive(const McResult& got, const NaiveClassification& want, double tol) {
  const int64_t b = want.mean.rows(), c = want.mean.cols();
  ASSERT_EQ(got.mean.rows(), b);
  ASSERT_EQ(got.mean.cols(), c);
  ASSERT_EQ(got.stddev.rows(), b);
  ASSERT_EQ(got.stddev.cols(), c);
  ASSERT_EQ(got.predictive_entropy.size(), b);
  ASSERT_EQ(got.expected_entropy.size(), b);
  ASSERT_EQ(got.mutual_information.size(), b);
  ASSERT_EQ(got.variation_ratio.size(), b);
  ASSERT_EQ(got.predicted_class.size(), static_cast<size_t>(b));
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t k = 0; k < c; ++k) {
      EXPECT_NEAR(got.mean(r, k), want.mean(r, k), tol) << "mean row " << r << " class " << k;
      EXPECT_NEAR(got.stddev(r, k), want.stddev(r, k), tol) << "std row " << r << " class " << k;
    }
    EXPECT_NEAR(got.predictive_entropy[r], want.predictive_entropy[r], tol) << r;
    EXPECT_NEAR(got.expected_entropy[r], want.expected_entropy[r], tol) << r;
    EXPECT_NEAR(got.mutual_information[r], want.mutual_information[r], tol) << r;
    EXPECT_NEAR(got.variation_ratio[r], want.variation_ratio[r], 1e-6) << r;
    EXPECT_EQ(got.predicted_class[r], want.predicted_class[r]) << r;
  }
}

McOptions Options(int samples, uint64_t seed) {
  McOptions o;
  o.samples = samples;
  o.seed = seed;
  return o;
}

struct NamedNet {
  const char* name;
  Network net;
};

TEST(McTest, ClassificationMatchesNaiveReference) {
  std::vector<NamedNet> nets;
  nets.push_back({"prefix Dense-ReLU-Dropout-Dense", ClassifierWithPrefix()});
  nets.push_back({"no prefix Dropout-Dense-ReLU-Dense",
                  MakeNet(6, {DropoutLayer(0.3), DenseLayer(16), Simple("relu"), DenseLayer(4)})});
  nets.push_back(
      {"ends with softmax", MakeNet(6, {DenseLayer(16), Simple("tanh"), DropoutLayer(0.4),
                                        DenseLayer(4), Simple("softmax")})});
  nets.push_back({"two dropout layers",
                  MakeNet(6, {DenseLayer(16), Simple("relu"), DropoutLayer(0.2), DenseLayer(16),
                              Simple("relu"), DropoutLayer(0.5), DenseLayer(4)})});
  const Matrix x = RandomMatrix(6, 6, 17, 2.0);
  const int samples = 40;
  for (const auto& [name, net] : nets) {
    SCOPED_TRACE(name);
    const NaiveClassification want = NaiveClassify(net, x, samples, 123);
    for (int64_t budget : {int64_t{1}, int64_t{20000}, int64_t{1} << 30}) {
      SCOPED_TRACE(budget);
      McOptions o = Options(samples, 123);
      o.memory_budget_bytes = budget;
      const McResult got =
          MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
      EXPECT_EQ(got.samples, samples);
      ExpectMatchesNaive(got, want, 1e-5);
    }
    // The reference itself is not degenerate: samples disagree somewhere.
    EXPECT_GT(want.stddev.maxCoeff(), 1e-3);
    EXPECT_GT(want.mutual_information.maxCoeff(), 1e-4);
    for (int64_t r = 0; r < x.rows(); ++r) {
      EXPECT_NEAR(want.mean.row(r).sum(), 1.0, 1e-6);
      // Mutual information is bounded by the predictive entropy.
      EXPECT_LE(want.mutual_information[r], want.predictive_entropy[r] + 1e-12);
    }
  }
}

TEST(McTest, ChunkSizeFollowsTheMemoryBudget) {
  const Network net = ClassifierWithPrefix();
  const Matrix x = RandomMatrix(5, 6, 1);
  McOptions o = Options(30, 1);
  o.memory_budget_bytes = 1;
  EXPECT_EQ(
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o).chunk_samples,
      1);
  o.memory_budget_bytes = int64_t{1} << 30;
  EXPECT_EQ(
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o).chunk_samples,
      30);
  // 5 rows x 16 features x 4 bytes x 4 copies = 1280 bytes per sample.
  o.memory_budget_bytes = 7 * 1280;
  EXPECT_EQ(
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o).chunk_samples,
      7);
}

void ExpectBitIdentical(const McResult& a, const McResult& b) {
  EXPECT_TRUE(BitEqual(a.mean, b.mean));
  EXPECT_TRUE(BitEqual(a.stddev, b.stddev));
  EXPECT_TRUE(BitEqual(a.predictive_entropy, b.predictive_entropy));
  EXPECT_TRUE(BitEqual(a.expected_entropy, b.expected_entropy));
  EXPECT_TRUE(BitEqual(a.mutual_information, b.mutual_information));
  EXPECT_TRUE(BitEqual(a.variation_ratio, b.variation_ratio));
  EXPECT_EQ(a.predicted_class, b.predicted_class);
}

TEST(McTest, ChunkingAndThreadCountGiveBitIdenticalResults) {
  // Wide enough that one chunk's matrix products split across threads.
  const Network net =
      MakeNet(32, {DenseLayer(128), Simple("relu"), DropoutLayer(0.5), DenseLayer(128),
                   Simple("relu"), DropoutLayer(0.5), DenseLayer(10)});
  const Matrix x = RandomMatrix(16, 32, 5);
  McOptions base = Options(48, 99);
  base.memory_budget_bytes = int64_t{1} << 30;
  const McResult want =
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, base);
  ASSERT_EQ(want.chunk_samples, 48);
  EXPECT_GT(want.stddev.maxCoeff(), 1e-3);
  // 16 rows x 128 x 4 bytes x 4 = 32 KiB per sample.
  for (int64_t budget : {int64_t{1}, int64_t{100000}, int64_t{1} << 20}) {
    for (int threads : {1, 2, 8}) {
      SCOPED_TRACE(testing::Message() << "budget " << budget << " threads " << threads);
      McOptions o = base;
      o.memory_budget_bytes = budget;
      o.threads = threads;
      ExpectBitIdentical(
          MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o), want);
    }
  }
}

TEST(McTest, ConcurrentCallersOnOneConstNetworkAgreeWithOneThread) {
  const Network net = ClassifierWithPrefix();
  const Matrix x = RandomMatrix(8, 6, 23);
  McOptions o = Options(64, 7);
  o.memory_budget_bytes = 4 * 1024;  // several chunks
  const McResult want =
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
  std::vector<McResult> got(8);
  std::vector<std::thread> callers;
  for (int i = 0; i < 8; ++i) {
    callers.emplace_back([&, i] {
      McOptions mine = o;
      mine.threads = 1 + i % 3;
      got[i] = MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, mine);
    });
  }
  for (auto& t : callers) t.join();
  for (int i = 0; i < 8; ++i) {
    SCOPED_TRACE(i);
    ExpectBitIdentical(got[i], want);
  }
}

TEST(McTest, SameSeedSameAnswerDifferentSeedDifferent) {
  const Network net = ClassifierWithPrefix();
  const Matrix x = RandomMatrix(5, 6, 2);
  const McResult a =
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, Options(20, 1));
  const McResult b =
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, Options(20, 1));
  const McResult c =
      MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, Options(20, 2));
  ExpectBitIdentical(a, b);
  EXPECT_GT((a.mean - c.mean).cwiseAbs().maxCoeff(), 1e-4);
  EXPECT_GT((a.stddev - c.stddev).cwiseAbs().maxCoeff(), 1e-4);
}

// A row's masks are addressed by its values: it gets the same answer at any position of a
// request, beside any other rows (DropConnect per example included), while distinct rows draw
// independent masks.
TEST(McTest, RowAnswerDoesNotDependOnItsPositionOrNeighbours) {
  LayerConfig drop_connect = DenseLayer(8);
  drop_connect.type = "drop_connect";
  drop_connect.rate = 0.3;
  const Network nets[] = {ClassifierWithPrefix(),
                          MakeNet(6, {DenseLayer(16), Simple("relu"), drop_connect, Simple("relu"),
                                      DropoutLayer(0.2), DenseLayer(4)})};
  const Matrix a = RandomMatrix(4, 6, 7);
  Matrix b = RandomMatrix(5, 6, 8);
  b.row(2) = a.row(0);  // row 0 of `a` at position 2 of `b`, among other rows
  for (const Network& net : nets) {
    const McResult ra =
        MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, a, Options(30, 9));
    const McResult rb =
        MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, b, Options(30, 9));
    EXPECT_TRUE(BitEqual(Matrix(ra.mean.row(0)), Matrix(rb.mean.row(2))));
    EXPECT_TRUE(BitEqual(Matrix(ra.stddev.row(0)), Matrix(rb.stddev.row(2))));
    EXPECT_EQ(ra.mutual_information(0), rb.mutual_information(2));
    EXPECT_EQ(ra.variation_ratio(0), rb.variation_ratio(2));
    EXPECT_GT(ra.mutual_information(0), 0.0f);  // the samples differ: there is something to compare
  }
}

// 3 inputs, Dense(16), the activation, dropout at `rate`, Dense(outputs).
Network RegressionNet(const std::string& activation, double rate, int outputs) {
  return MakeNet(3, {DenseLayer(16), Simple(activation), DropoutLayer(rate), DenseLayer(outputs)});
}

struct NaiveRegression {
  std::vector<Eigen::MatrixXd> means, variances;
  Eigen::MatrixXd mean, sample_var, mean_aleatoric;
};

NaiveRegression NaiveRegress(const Network& net, const Matrix& x, int samples, uint64_t seed,
                             bool gaussian) {
  NaiveRegression n;
  for (const auto& raw : NaiveRawSamples(net, x, samples, seed)) {
    const int64_t k = gaussian ? raw.cols() / 2 : raw.cols();
    n.means.push_back(raw.leftCols(k));
    if (gaussian) n.variances.push_back(raw.rightCols(k).array().exp().matrix());
  }
  const int64_t b = x.rows(), k = n.means[0].cols();
  n.mean = Eigen::MatrixXd::Zero(b, k);
  for (const auto& m : n.means) n.mean += m;
  n.mean /= samples;
  n.sample_var = Eigen::MatrixXd::Zero(b, k);
  for (const auto& m : n.means) n.sample_var += (m - n.mean).array().square().matrix();
  n.sample_var /= samples;
  n.mean_aleatoric = Eigen::MatrixXd::Zero(b, k);
  for (const auto& v : n.variances) n.mean_aleatoric += v;
  n.mean_aleatoric /= samples;
  return n;
}

TEST(McTest, NormalQuantile) {
  EXPECT_NEAR(NormalQuantileTwoSided(0.95), 1.959963984540054, 1e-9);
  EXPECT_NEAR(NormalQuantileTwoSided(0.5), 0.6744897501960817, 1e-9);
  EXPECT_NEAR(NormalQuantileTwoSided(0.99), 2.5758293035489004, 1e-9);
  EXPECT_THROW(NormalQuantileTwoSided(0.0), InvalidArgument);
  EXPECT_THROW(NormalQuantileTwoSided(1.0), InvalidArgument);
  EXPECT_THROW(NormalQuantileTwoSided(std::nan("")), InvalidArgument);
}

TEST(McTest, RegressionWithTauAddsObservationNoise) {
  const Network net = RegressionNet("relu", 0.3, 2);
  const Matrix x = RandomMatrix(7, 3, 31);
  const int samples = 50;
  const double tau = 4.0;
  const NaiveRegression want = NaiveRegress(net, x, samples, 5, false);
  McOptions o = Options(samples, 5);
  o.tau = tau;
  for (double interval : {0.95, 0.5}) {
    SCOPED_TRACE(interval);
    o.interval = interval;
    const McResult got = MonteCarloPredict(net, Task::kRegression, LossKind::kMse, x, o);
    const double z = interval == 0.95 ? 1.959963984540054 : 0.6744897501960817;
    ASSERT_EQ(got.mean.rows(), 7);
    ASSERT_EQ(got.mean.cols(), 2);
    ASSERT_EQ(got.total_variance.rows(), 7);
    ASSERT_EQ(got.lower.cols(), 2);
    EXPECT_EQ(got.predictive_entropy.size(), 0);
    EXPECT_TRUE(got.predicted_class.empty());
    for (int64_t r = 0; r < 7; ++r) {
      for (int64_t k = 0; k < 2; ++k) {
        const double total = want.sample_var(r, k) + 1.0 / tau;
        EXPECT_NEAR(got.mean(r, k), want.mean(r, k), 1e-5);
        EXPECT_NEAR(got.stddev(r, k), std::sqrt(want.sample_var(r, k)), 1e-5);
        EXPECT_NEAR(got.total_variance(r, k), total, 1e-5);
        EXPECT_NEAR(got.lower(r, k), want.mean(r, k) - z * std::sqrt(total), 1e-5);
        EXPECT_NEAR(got.upper(r, k), want.mean(r, k) + z * std::sqrt(total), 1e-5);
      }
    }
  }
  EXPECT_GT(want.sample_var.maxCoeff(), 1e-4);
  // Without tau the total variance is the sample variance alone.
  const McResult no_tau =
      MonteCarloPredict(net, Task::kRegression, LossKind::kMse, x, Options(samples, 5));
  for (int64_t r = 0; r < 7; ++r) {
    for (int64_t k = 0; k < 2; ++k) {
      EXPECT_NEAR(no_tau.total_variance(r, k), want.sample_var(r, k), 1e-6);
    }
  }
  McOptions bad = Options(samples, 5);
  bad.interval = 1.0;
  EXPECT_THROW(MonteCarloPredict(net, Task::kRegression, LossKind::kMse, x, bad), InvalidArgument);
}

TEST(McTest, GaussianHeadAddsMeanPredictedVariance) {
  // Two targets: four outputs, means then log-variances.
  const Network net = RegressionNet("tanh", 0.3, 4);
  const Matrix x = RandomMatrix(5, 3, 41);
  const int samples = 30;
  const NaiveRegression want = NaiveRegress(net, x, samples, 8, true);
  for (double tau : {0.0, 2.0}) {
    SCOPED_TRACE(tau);
    McOptions o = Options(samples, 8);
    o.tau = tau;
    const McResult got = MonteCarloPredict(net, Task::kRegression, LossKind::kGaussianNll, x, o);
    ASSERT_EQ(got.mean.cols(), 2);
    ASSERT_EQ(got.total_variance.cols(), 2);
    for (int64_t r = 0; r < 5; ++r) {
      for (int64_t k = 0; k < 2; ++k) {
        const double total =
            want.sample_var(r, k) + want.mean_aleatoric(r, k) + (tau > 0 ? 1.0 / tau : 0.0);
        EXPECT_NEAR(got.mean(r, k), want.mean(r, k), 1e-5);
        EXPECT_NEAR(got.stddev(r, k), std::sqrt(want.sample_var(r, k)), 1e-5);
        EXPECT_NEAR(got.total_variance(r, k), total, 1e-5 * std::max(1.0, total));
        EXPECT_NEAR(got.upper(r, k) - got.lower(r, k), 2 * 1.959963984540054 * std::sqrt(total),
                    1e-4);
      }
    }
  }
}

// logsumexp_t(a_t) - log T for one (row, value).
double LogMeanExp(const std::vector<double>& a) {
  const double m = *std::max_element(a.begin(), a.end());
  double s = 0;
  for (double v : a) s += std::exp(v - m);
  return m + std::log(s) - std::log(static_cast<double>(a.size()));
}

TEST(McTest, TestLogLikelihoodMatchesNaiveLogSumExp) {
  const Network net = RegressionNet("relu", 0.4, 2);
  const Matrix x = RandomMatrix(6, 3, 51);
  const Matrix y = RandomMatrix(6, 2, 52, 3.0);  // far enough that the log-sum-exp matters
  const int samples = 25;
  const double tau = 3.0;
  const NaiveRegression want = NaiveRegress(net, x, samples, 4, false);
  Eigen::VectorXd expected(6);
  for (int64_t r = 0; r < 6; ++r) {
    expected[r] = 0;
    for (int64_t k = 0; k < 2; ++k) {
      std::vector<double> a;
      for (const auto& m : want.means) {
        const double d = y(r, k) - m(r, k);
        a.push_back(-0.5 * tau * d * d);
      }
      expected[r] += LogMeanExp(a) - 0.5 * kLog2Pi + 0.5 * std::log(tau);
    }
  }
  for (int64_t budget : {int64_t{1}, int64_t{1} << 30}) {
    McOptions o = Options(samples, 4);
    o.tau = tau;
    o.targets = &y;
    o.memory_budget_bytes = budget;
    const McResult got = MonteCarloPredict(net, Task::kRegression, LossKind::kMse, x, o);
    ASSERT_EQ(got.log_likelihood.size(), 6);
    for (int64_t r = 0; r < 6; ++r) {
      EXPECT_NEAR(got.log_likelihood[r], expected[r], 1e-4 * std::max(1.0, std::abs(expected[r])))
          << "row " << r << " budget " << budget;
    }
  }
  // Without targets there is no log-likelihood; mse without tau cannot score.
  McOptions plain = Options(samples, 4);
  plain.tau = tau;
  EXPECT_EQ(
      MonteCarloPredict(net, Task::kRegression, LossKind::kMse, x, plain).log_likelihood.size(), 0);
  McOptions no_tau = Options(samples, 4);
  no_tau.targets = &y;
  EXPECT_THROW(MonteCarloPredict(net, Task::kRegression, LossKind::kMse, x, no_tau),
               InvalidArgument);
  const Matrix wrong = RandomMatrix(6, 3, 1);
  McOptions wrong_shape = plain;
  wrong_shape.targets = &wrong;
  EXPECT_THROW(MonteCarloPredict(net, Task::kRegression, LossKind::kMse, x, wrong_shape),
               InvalidArgument);
}

TEST(McTest, GaussianHeadLogLikelihoodUsesPredictedVariances) {
  const Network net = RegressionNet("tanh", 0.3, 2);
  const Matrix x = RandomMatrix(4, 3, 61);
  const Matrix y = RandomMatrix(4, 1, 62);
  const int samples = 20;
  const NaiveRegression want = NaiveRegress(net, x, samples, 6, true);
  McOptions o = Options(samples, 6);
  o.targets = &y;
  const McResult got = MonteCarloPredict(net, Task::kRegression, LossKind::kGaussianNll, x, o);
  ASSERT_EQ(got.log_likelihood.size(), 4);
  for (int64_t r = 0; r < 4; ++r) {
    std::vector<double> a;
    for (int t = 0; t < samples; ++t) {
      const double v = want.variances[t](r, 0), d = y(r, 0) - want.means[t](r, 0);
      a.push_back(-0.5 * (kLog2Pi + std::log(v) + d * d / v));
    }
    EXPECT_NEAR(got.log_likelihood[r], LogMeanExp(a), 1e-4) << r;
  }
}

TEST(McTest, NonPositiveSampleCountThrows) {
  const Network net = ClassifierWithPrefix();
  const Matrix x = RandomMatrix(2, 6, 1);
  for (int samples : {0, -1, -50}) {
    EXPECT_THROW(MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x,
                                   Options(samples, 1)),
                 InvalidArgument)
        << samples;
  }
  EXPECT_THROW(MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, Matrix(0, 6),
                                 Options(5, 1)),
               InvalidArgument);
  EXPECT_THROW(MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy,
                                 RandomMatrix(2, 5, 1), Options(5, 1)),
               InvalidArgument);
}

TEST(McTest, ShouldStopThrowsCancelledBetweenChunks) {
  const Network net = ClassifierWithPrefix();
  const Matrix x = RandomMatrix(3, 6, 1);
  McOptions o = Options(10, 1);
  o.should_stop = [] { return true; };
  EXPECT_THROW(MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o),
               Cancelled);

  // One sample per chunk: polled before every chunk, stopping at the third poll.
  int polls = 0;
  o.memory_budget_bytes = 1;
  o.should_stop = [&] { return ++polls == 3; };
  EXPECT_THROW(MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o),
               Cancelled);
  EXPECT_EQ(polls, 3);

  polls = 0;
  o.should_stop = [&] {
    ++polls;
    return false;
  };
  const McResult r = MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
  EXPECT_EQ(r.samples, 10);
  EXPECT_EQ(polls, 10);
}

TEST(McTest, KeepSamplesReturnsEverySample) {
  const Network net = ClassifierWithPrefix();
  const Matrix x = RandomMatrix(4, 6, 71);
  const int samples = 12;
  McOptions o = Options(samples, 9);
  EXPECT_TRUE(MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o)
                  .sample_outputs.empty());
  o.keep_samples = true;
  o.memory_budget_bytes = 3 * 1280;  // chunks of 3 samples
  o.threads = 2;
  const McResult got = MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
  const NaiveClassification want = NaiveClassify(net, x, samples, 9);
  ASSERT_EQ(got.sample_outputs.size(), static_cast<size_t>(samples));
  Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(4, 4);
  for (int t = 0; t < samples; ++t) {
    SCOPED_TRACE(t);
    const Matrix& s = got.sample_outputs[t];
    ASSERT_EQ(s.rows(), 4);
    ASSERT_EQ(s.cols(), 4);
    EXPECT_LT((s.cast<double>() - want.probs[t]).cwiseAbs().maxCoeff(), 1e-5);
    for (int64_t r = 0; r < 4; ++r) EXPECT_NEAR(s.row(r).sum(), 1.0f, 1e-5f);
    sum += s.cast<double>();
  }
  EXPECT_LT((sum / samples - got.mean.cast<double>()).cwiseAbs().maxCoeff(), 1e-6);
  // Samples differ from one another.
  EXPECT_GT((got.sample_outputs[0] - got.sample_outputs[1]).cwiseAbs().maxCoeff(), 1e-4);
}

TEST(McTest, NetworkWithoutStochasticLayersHasZeroSpread) {
  for (double rate : {-1.0, 0.0}) {
    SCOPED_TRACE(rate);
    std::vector<LayerConfig> layers = {DenseLayer(8), Simple("relu"), DenseLayer(3)};
    if (rate >= 0) layers.insert(layers.begin() + 2, DropoutLayer(rate));
    const Network net = MakeNet(4, layers);
    ASSERT_EQ(net.FirstStochasticLayer(), net.size());
    const Matrix x = RandomMatrix(5, 4, 81);
    McOptions o = Options(7, 1);
    o.keep_samples = true;
    const McResult got =
        MonteCarloPredict(net, Task::kClassification, LossKind::kCrossEntropy, x, o);
    Context eval;
    const Eigen::MatrixXd probs = SoftmaxRowsDouble(net.Forward(x, eval).cast<double>());
    ASSERT_EQ(got.mean.rows(), 5);
    ASSERT_EQ(got.mean.cols(), 3);
    EXPECT_LT((got.mean.cast<double>() - probs).cwiseAbs().maxCoeff(), 1e-6);
    EXPECT_EQ(got.stddev.cwiseAbs().maxCoeff(), 0.0f);
    EXPECT_EQ(got.variation_ratio.cwiseAbs().maxCoeff(), 0.0f);
    EXPECT_LT(got.mutual_information.cwiseAbs().maxCoeff(), 1e-6f);
    EXPECT_GT(got.predictive_entropy.minCoeff(), 0.0f);
    ASSERT_EQ(got.sample_outputs.size(), 7u);
    EXPECT_TRUE(BitEqual(got.sample_outputs[0], got.sample_outputs[6]));

    const McResult reg =
        MonteCarloPredict(net, Task::kRegression, LossKind::kMse, x, Options(7, 1));
    EXPECT_EQ(reg.stddev.cwiseAbs().maxCoeff(), 0.0f);
    EXPECT_EQ(reg.total_variance.cwiseAbs().maxCoeff(), 0.0f);
    EXPECT_LT((reg.mean - net.Forward(x, eval)).cwiseAbs().maxCoeff(), 1e-6f);
  }
}

}  // namespace
}  // namespace dropnet::engine
