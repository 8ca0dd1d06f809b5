// The interface between the GEMM front end (gemm.cpp: dispatch, threads, scratch) and the
// per-ISA translation units, each compiled with its own target flags (CMakeLists.txt).
#pragma once
#include <cstdint>

#include "core/gemm.hpp"

namespace longctx::gemm::detail {

// One single-threaded GEMM: C[m x n] = alpha * op(A) op(B) + beta * C (gemm.hpp's semantics).
// bf16: the inputs are rounded to bf16 as they are packed (bf16 operands are already); products
// accumulate in fp32. packed_b: B already packed whole (Kernels::pack_b) for packed_n x packed_k, read
// from there instead of b; the call takes its first n columns and k rows.
struct Call {
  bool bf16;
  int64_t m, n, k;
  float alpha;
  Operand a, b;
  float beta;
  float* c;
  int64_t ldc;
  const float* packed_b = nullptr;
  int64_t packed_n = 0, packed_k = 0;
};

// Cache blocking shared by every ISA (Goto/BLIS loop order: NC columns of B, KC deep, then MR rows
// of A at a time). KC = 256: an MR x KC panel of A (6 KB) stays in L1 while the KC x NC block of B
// (512 KB) streams from L2 (1 MB per core on Zen 4/5).
// bf16 converts A kMC rows at a time.
constexpr int64_t kKC = 256, kNC = 512, kMC = 192;
// Scratch floats per thread, each 64-byte aligned: A (a packed MR-row panel, or kMC rows of bf16
// pairs) and the packed block of B (KC x NC).
constexpr int64_t kPackA = kMC * kKC / 2, kPackB = kKC * kNC;

// Per ISA: run one call; pack all of the call's op(B) (n x k) into `out` in the layout run reads
// as packed_b, returning the floats it takes (size only when out is null); k per packed element
// (2: the bf16 pairs of vdpbf16ps).
struct Kernels {
  void (*run)(const Call& c, float* pack_a, float* pack_b);
  int64_t (*pack_b)(const Call& c, float* out);
  int k_per_elem;
};
extern const Kernels kAvx512Bf16, kAvx512, kAvx2, kPortable;

}  // namespace longctx::gemm::detail
