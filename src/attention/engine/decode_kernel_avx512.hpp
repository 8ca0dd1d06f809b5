// AVX-512 body of the decode tile (engine/decode_kernel.hpp): a few query rows (a GQA group's heads)
// against n keys read in place from fp32 or bf16 rows. Each K/V row is loaded and widened once
// for all rows; per (row, key) the d-long product stays a vector, and 16 keys' vectors are
// reduced together by a transpose-and-add tree (vertical adds, no per-score horizontal sum);
// V is accumulated in registers, a slice of d at a time. Selected at run time; callers fall back
// to the portable loops when it returns false.
#pragma once
#include <cstdint>

#include "attention/engine/tile_kernels.hpp"

namespace longctx::attn::avx512 {

// Same contract as decode_tile_forward, K/V rows k/v with row strides ldk/ldv (elements). Returns false
// (and does nothing) when the CPU lacks AVX-512 or d is not a supported multiple of 16.
bool tile_forward(Rows q, int64_t rows, const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t n, int d,
                  float scale, SoftmaxState st, float* s);
bool tile_forward(Rows q, int64_t rows, const uint16_t* k, int64_t ldk, const uint16_t* v, int64_t ldv, int64_t n,
                  int d, float scale, SoftmaxState st, float* s);

}  // namespace longctx::attn::avx512
