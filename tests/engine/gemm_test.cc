// Tests for gemm.h: Gemm matches a double-precision reference for every transposition and edge
// size, and the product paths of MatMul (rows split, columns split, few-row kernel, zero columns
// skipped) give one result, bit for bit, whatever the thread count.
#include "server/engine/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "tests/engine/gradient_check.h"

namespace dropnet::engine {
namespace {

using test_support::UniformMatrix;

TEST(GemmTest, MatchesEigenForEveryTranspositionAndEdgeSize) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      // n <= 16 (and the last panel of 33 and 70) runs the half-width kernel.
      for (auto [m, n, k] : {std::tuple{1, 1, 1},
                             {7, 33, 5},
                             {9, 17, 300},
                             {64, 70, 288},
                             {13, 31, 513},
                             {20, 10, 300},
                             {52, 16, 40}}) {
        const Matrix a = UniformMatrix(ta ? k : m, ta ? m : k, -1, 1, m + n);
        const Matrix b = UniformMatrix(tb ? n : k, tb ? k : n, -1, 1, n + k);
        Matrix want = UniformMatrix(m, n, -1, 1, 3);
        Matrix c = want;
        Matrix opa = ta ? Matrix(a.transpose()) : a, opb = tb ? Matrix(b.transpose()) : b;
        for (float beta : {0.0f, 1.0f, 0.5f}) {
          Matrix got = c;
          Gemm(ta, tb, m, n, k, 0.75f, a.data(), a.cols(), b.data(), b.cols(), beta, got.data(),
               got.cols());
          Matrix ref = (0.75f * (opa.cast<double>() * opb.cast<double>()) + beta * c.cast<double>())
                           .cast<float>();
          EXPECT_LE((got - ref).cwiseAbs().maxCoeff(), 1e-4f * std::sqrt(float(k)))
              << ta << tb << " " << m << "x" << n << "x" << k << " beta " << beta;
        }
      }
    }
  }
}

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

TEST(GemmTest, RowBlockingChangesNoBit) {
  // The rows of a product are cut into blocks of up to twelve, as even as that allows: a row
  // lands in blocks of other sizes and places as the height changes, and the result must not move.
  // k = 784 spans several k blocks (the last one short), n = 70 ends in a half panel.
  for (bool ta : {false, true}) {
    const int64_t k = 784, n = 70, tall = 140;
    const Matrix a = RandomMatrix(ta ? k : tall, ta ? tall : k, 8), b = RandomMatrix(k, n, 9);
    Matrix all(tall, n);
    Gemm(ta, false, tall, n, k, 1.0f, a.data(), a.cols(), b.data(), n, 0.0f, all.data(), n);
    for (int64_t m : {5, 11, 12, 13, 25, 37, 100, 128}) {
      const int64_t r0 = 3;  // rows r0..r0+m of the tall product
      const float* a0 = ta ? a.data() + r0 : a.data() + r0 * a.cols();
      Matrix part(m, n);
      Gemm(ta, false, m, n, k, 1.0f, a0, a.cols(), b.data(), n, 0.0f, part.data(), n);
      ASSERT_TRUE(BitEqual(part, all.middleRows(r0, m)))
          << "trans_a " << ta << ", " << m << " rows";
    }
  }
}

TEST(GemmTest, FewRowKernelsChangeNoBit) {
  // One to four rows run their own kernels (one row: up to 256 columns a pass, the last 16
  // masked): they must give the bits of the same rows inside a 13-row product (the blocked
  // kernel) for widths around the pass and vector edges, k around the kKc = 256 blocks, alpha != 1
  // (each block's sum times alpha added to C in one rounding) and beta 0 or 1.
  for (int64_t n : {1, 10, 16, 17, 200, 255, 256, 257, 300, 520}) {
    for (int64_t k : {1, 255, 256, 257, 784}) {
      const Matrix a = RandomMatrix(13, k, 10), b = RandomMatrix(k, n, 11);
      const Matrix c0 = RandomMatrix(13, n, 12);
      for (float beta : {0.0f, 1.0f}) {
        Matrix all = c0;
        Gemm(false, false, 13, n, k, 0.75f, a.data(), k, b.data(), n, beta, all.data(), n);
        for (int64_t m = 1; m <= 4; ++m) {
          Matrix few = c0.topRows(m);
          Gemm(false, false, m, n, k, 0.75f, a.data(), k, b.data(), n, beta, few.data(), n);
          ASSERT_TRUE(BitEqual(few, all.topRows(m)))
              << m << " x " << n << " x " << k << ", beta " << beta;
          // op(A) = A^T, read with a column stride.
          const Matrix at = a.topRows(m).transpose();
          few = c0.topRows(m);
          Gemm(true, false, m, n, k, 0.75f, at.data(), m, b.data(), n, beta, few.data(), n);
          ASSERT_TRUE(BitEqual(few, all.topRows(m)))
              << m << " x " << n << " x " << k << ", beta " << beta << ", trans_a";
        }
      }
      // The selected-rows form: every other row of B, against the same columns of a kept and
      // the others zeroed.
      std::vector<int32_t> index;
      for (int32_t j = 0; j < k; j += 2) index.push_back(j);
      const int64_t kn = static_cast<int64_t>(index.size());
      Matrix zeroed = a, packed(13, kn);
      for (int64_t j = 1; j < k; j += 2) zeroed.col(j).setZero();
      for (int64_t i = 0; i < kn; ++i) packed.col(i) = a.col(index[i]);
      Matrix all(13, n), one(1, n);
      Gemm(false, false, 13, n, k, 1.0f, zeroed.data(), k, b.data(), n, 0.0f, all.data(), n);
      GemmSelectedK(1, n, packed.data(), kn, index.data(), kn, b.data(), n, one.data(), n);
      ASSERT_TRUE(BitEqual(one, all.topRows(1))) << n << " x " << k << ", selected";
      ASSERT_LT((one - Reference(zeroed.topRows(1), b)).cwiseAbs().maxCoeff(), 1e-3f);
    }
  }
}

TEST(GemmTest, TransposedRightFactorChangesNoBit) {
  // op(B) = B^T is packed by transposing 16 x 16 blocks: the product must equal, bit for bit, the
  // one over an explicit transposed copy, for widths around the 16-column halves and 32-column
  // panels, depths around the 16-deep blocks and the kKc = 256 blocks, and B read with a leading
  // dimension wider than k (a block of a larger matrix).
  for (int64_t n : {1, 10, 16, 17, 31, 32, 33, 70, 512}) {
    for (int64_t k : {1, 15, 16, 17, 255, 257, 784}) {
      const Matrix a = RandomMatrix(13, k, 20), wide = RandomMatrix(n, k + 5, 21);
      const Matrix bt = wide.leftCols(k).transpose();  // op(B), k x n
      for (int64_t m : {1, 5, 13}) {
        Matrix want(m, n), got(m, n);
        Gemm(false, false, m, n, k, 1.0f, a.data(), k, bt.data(), n, 0.0f, want.data(), n);
        Gemm(false, true, m, n, k, 1.0f, a.data(), k, wide.data(), k + 5, 0.0f, got.data(), n);
        ASSERT_TRUE(BitEqual(got, want)) << m << " x " << n << " x " << k;
      }
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

}  // namespace
}  // namespace dropnet::engine
