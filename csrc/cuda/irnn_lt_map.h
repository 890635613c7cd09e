// How a HookGemm (row-major, irnn_cuda_api.h) is posed to cuBLASLt, which is
// column-major: the row-major D (M x N) is the column-major D^T (N x M), so
// it computes D^T = W A^T with cuBLASLt's A = our w and its B = our a. Kept
// free of cuBLAS and torch, so that the emulation runs the same mapping
// through a column-major model of cublasLtMatmul (tests/emu/emu_harness.cpp,
// tests/test_emulation_step_gemm.py) and irnn_ops_cuda.cpp hands it to the
// library unchanged.
#pragma once

#include <cstdint>

#include "irnn_cuda_api.h"

namespace irnn_cuda {

// One matrix as cuBLASLt's layout describes it: column-major, element
// (r, c) at ptr[r + c * ld], rows x cols.
struct LtMatrix {
  uint64_t rows, cols;
  int64_t ld;
};

// cublasLtMatmul's problem: D (m x n) = op(A) (m x k) * op(B) (k x n) + C,
// with op the transpose where trans_* (cuBLAS's CUBLAS_OP_T). C is D itself
// or absent (beta = 0), so D's layout serves both. A strided batch: `batch`
// such problems, problem q's matrices a_bs, b_bs, d_bs elements further per
// q (each layout's CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT and
// _STRIDED_BATCH_OFFSET).
struct LtProblem {
  uint64_t m, n, k;
  bool trans_a, trans_b;
  LtMatrix a, b, d;
  int32_t batch;
  int64_t a_bs, b_bs, d_bs;
};

inline LtProblem lt_problem(const HookGemm& g) {
  const auto M = static_cast<uint64_t>(g.M), N = static_cast<uint64_t>(g.N),
             K = static_cast<uint64_t>(g.K);
  LtProblem p{};
  p.m = N;
  p.n = M;
  p.k = K;
  // cuBLASLt's A (N x K after op) = W(n, k). Stored w[n*ldw + k]: the
  // column-major K x N matrix, transposed; stored w[k*ldw + n] (w_t): the
  // column-major N x K matrix as it is.
  p.trans_a = !g.w_t;
  p.a = g.w_t ? LtMatrix{N, K, g.ldw} : LtMatrix{K, N, g.ldw};
  // cuBLASLt's B (K x M after op) = A^T, (k, m) = A(m, k). Stored
  // a[m*lda + k]: the column-major K x M matrix as it is; stored
  // a[k*lda + m] (a_t): the column-major M x K matrix, transposed.
  p.trans_b = g.a_t;
  p.b = g.a_t ? LtMatrix{M, K, g.lda} : LtMatrix{K, M, g.lda};
  // D^T (N x M): d[m*ldd + n] is column-major (n, m) with ld = ldd.
  p.d = LtMatrix{N, M, g.ldd};
  p.batch = static_cast<int32_t>(hook_batch(g));
  p.a_bs = p.batch > 1 ? g.w_bs : 0;
  p.b_bs = p.batch > 1 ? g.a_bs : 0;
  p.d_bs = p.batch > 1 ? g.d_bs : 0;
  return p;
}

}  // namespace irnn_cuda
