// Tests for parallel.h: the product paths (rows split, columns split, few-row kernel, zero
// columns skipped) give one result, bit for bit, whatever the thread count; ParallelFor covers
// its range once, from any number of callers at once, and passes exceptions on.
#include "server/engine/parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <chrono>
#include <limits>
#include <random>
#include <thread>
#include <vector>

namespace dropnet::engine {
namespace {

Matrix RandomMatrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Matrix m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = d(gen);
  return m;
}

bool BitEqual(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.size(), b.data(),
                    [](float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; });
}

// Reference: each element summed in double, to check the float paths are right at all.
Matrix Reference(const Matrix& a, const Matrix& b) {
  return (a.cast<double>() * b.cast<double>()).cast<float>();
}

TEST(MatMulTest, EveryShapeAndThreadCountGivesOneResult) {
  for (int64_t rows : {1, 2, 3, 4, 5, 7, 9, 16, 33, 130}) {
    for (int64_t inner : {1, 31, 256, 300, 784}) {
      const Matrix a = RandomMatrix(rows, inner, 1), b = RandomMatrix(inner, 200, 2);
      Matrix one, two, eight;
      MatMul(a, false, b, false, &one, 1);
      MatMul(a, false, b, false, &two, 2);
      MatMul(a, false, b, false, &eight, 8);
      ASSERT_TRUE(BitEqual(one, two)) << rows << " x " << inner;
      ASSERT_TRUE(BitEqual(one, eight)) << rows << " x " << inner;
      ASSERT_LT((one - Reference(a, b)).cwiseAbs().maxCoeff(), 1e-3f) << rows << " x " << inner;
      // A row computed alone (the few-row kernel) equals the same row inside the batch.
      Matrix first;
      MatMul(a.topRows(1), false, b, false, &first, 1);
      ASSERT_TRUE(BitEqual(first, one.topRows(1))) << rows << " x " << inner;
    }
  }
}

TEST(MatMulTest, SkippingZeroColumnsChangesNoBit) {
  std::mt19937 gen(3);
  for (int64_t rows : {1, 3, 5, 12, 100}) {
    for (double zero_fraction : {0.0, 0.3, 0.5, 0.9, 1.0}) {
      Matrix a = RandomMatrix(rows, 784, 4);
      std::bernoulli_distribution zero(zero_fraction);
      for (int64_t j = 0; j < a.cols(); ++j)
        if (zero(gen)) a.col(j).setZero();
      // Scattered zeros that are not whole columns stay in the product.
      for (int64_t i = 0; i < a.size(); i += 7) a.data()[i] = 0.0f;
      const Matrix b = RandomMatrix(784, 130, 5);
      for (int threads : {1, 2, 4}) {
        Matrix dense, skipped;
        MatMul(a, false, b, false, &dense, threads);
        MatMulSkippingZeroColumns(a, b, &skipped, threads);
        ASSERT_TRUE(BitEqual(dense, skipped))
            << rows << " rows, zero fraction " << zero_fraction << ", threads " << threads;
      }
    }
  }
}

TEST(MatMulTest, NegativeZeroColumnsAreSkippedAndNonFiniteOnesKept) {
  for (int64_t rows : {1, 6, 40}) {
    Matrix a = RandomMatrix(rows, 300, 6);
    for (int64_t j = 0; j < 250; ++j) a.col(j).setZero();
    for (int64_t j = 0; j < 250; j += 3) a.col(j).setConstant(-0.0f);
    const Matrix b = RandomMatrix(300, 70, 7);
    Matrix dense, skipped;
    MatMul(a, false, b, false, &dense, 1);
    MatMulSkippingZeroColumns(a, b, &skipped, 2);
    ASSERT_TRUE(BitEqual(dense, skipped)) << rows << " rows";
    // A column holding NaN or infinity in one row is not all zero: it stays in the product.
    a(rows - 1, 5) = std::numeric_limits<float>::quiet_NaN();
    a(0, 7) = std::numeric_limits<float>::infinity();
    MatMulSkippingZeroColumns(a, b, &skipped, 2);
    EXPECT_TRUE(skipped.row(rows - 1).array().isNaN().all()) << rows << " rows";
    EXPECT_FALSE(skipped.row(0).array().isFinite().all()) << rows << " rows";
  }
}

TEST(ParallelForTest, CoversTheRangeOnceAndRethrows) {
  for (int threads : {1, 2, 3, 8}) {
    std::vector<std::atomic<int>> hits(1000);
    ParallelFor(1000, threads, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    for (const auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
  EXPECT_THROW(ParallelFor(10, 2,
                           [](int64_t b, int64_t) {
                             if (b > 0) throw InvalidArgument("worker failed");
                           }),
               InvalidArgument);
}

void RunConcurrentCallers();

// Several callers at once, each waking the workers first or not: every range is covered once and
// no call waits forever for a task that a spinning worker was expected to take (the test would
// time out); with workers that sleep at once, spin briefly or spin long.
TEST(ParallelForTest, ConcurrentCallersAndWakeUpsLoseNoTask) {
  for (int spin_us : {0, 50, 2000}) {
    SCOPED_TRACE(testing::Message() << "spin " << spin_us << " us");
    SetWorkerSpin(std::chrono::microseconds(spin_us));
    EXPECT_EQ(WorkerSpin().count(), spin_us);
    RunConcurrentCallers();
  }
  SetWorkerSpin(std::chrono::microseconds(-5));
  EXPECT_EQ(WorkerSpin().count(), 0);
  SetWorkerSpin(std::chrono::microseconds(50));  // the engine's default, for the other tests
}

void RunConcurrentCallers() {
  constexpr int kCallers = 4, kRounds = 2000;
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int round = 0; round < kRounds; ++round) {
        if ((round + c) % 3 == 0) WakeWorkers(3);
        // Every few rounds a pause longer than the workers' spin, so they also go to sleep.
        if (round % 500 == 499) std::this_thread::sleep_for(std::chrono::microseconds(200));
        ParallelFor(64, 1 + (round + c) % 4, [&](int64_t b, int64_t e) { total += e - b; });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), int64_t{kCallers} * kRounds * 64);
}

}  // namespace
}  // namespace dropnet::engine
