// Row-major sgemm on OpenBLAS. Called from inside our own OpenMP regions, where the OpenMP
// build of OpenBLAS runs single-threaded (it checks omp_in_parallel), so tiles never nest threads.
#pragma once
#include <cstdint>

namespace longctx::gemm {

// C[m x n] = alpha * op(A) * op(B) + beta * C; op(X) = X^T when the flag is set.
// lda/ldb/ldc are row strides of the matrices as stored.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Threads OpenBLAS may use for a call made outside any parallel region.
void set_blas_threads(int n);

}  // namespace longctx::gemm
