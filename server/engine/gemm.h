// The engine's one matrix-product path: a single-threaded GEMM and the threaded MatMul over it.
//
// Gemm runs a register-blocked AVX-512 kernel chosen at run time when the CPU has it (the binary
// stays portable), else Eigen. MatMul splits a product across the thread pool by rows or, for
// few rows, by blocks of 64 columns; each element's sum runs in the same order whatever the
// range, so with the AVX-512 kernel the thread count does not change the result (with Eigen it
// does only through Eigen's blocking of the row range). MatMulSkippingZeroColumns leaves out the
// columns of the left factor that are zero in every row, bit for bit the same product.
#ifndef DROPNET_ENGINE_GEMM_H_
#define DROPNET_ENGINE_GEMM_H_

#include <cstdint>

#include "server/engine/tensor.h"

namespace dropnet::engine {

// True when Gemm runs the AVX-512 kernel (else it runs Eigen, as MatMul does).
bool FastGemmAvailable();

// c (m x n, leading dimension ldc) = alpha * op(a) * op(b) + beta * c, row-major, on the calling
// thread. op(a) is m x k, op(b) is k x n.
void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// c (m x n) = a * B[k_index, :], where a (m x kn, leading dimension lda) holds the columns
// k_index (ascending) of a wider left factor whose other columns are zero: the product skips the
// zero columns and equals Gemm over the full width bit for bit.
void GemmSelectedK(int64_t m, int64_t n, const float* a, int64_t lda, const int32_t* k_index,
                   int64_t kn, const float* b, int64_t ldb, float* c, int64_t ldc);

// out (rows x kn, row-major) = the columns k_index (ascending) of a (rows x cols, row-major).
void GatherColumns(const float* a, int64_t rows, int64_t cols, const int32_t* k_index, int64_t kn,
                   float* out);

// c = op(a) * op(b) (+ c when accumulate), where op transposes when the flag is set.
void MatMul(const Matrix& a, bool transpose_a, const Matrix& b, bool transpose_b, Matrix* c,
            int threads, bool accumulate = false);

// c = a * b like MatMul, skipping the columns of a that are zero in every row (ReLU and dropout
// zeros, blank pixels) when at least a quarter are: the same result, bit for bit.
void MatMulSkippingZeroColumns(const Matrix& a, const Matrix& b, Matrix* c, int threads);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_GEMM_H_
