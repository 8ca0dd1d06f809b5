// The decode flavour of the online-softmax tile: a few query rows (one token's heads of a GQA
// group, or one row) against keys they all see. Same math and state as tile_forward, but with
// per-key dot products and axpys instead of two sgemm calls: with 1-4 rows, OpenBLAS's packing of
// the key tile costs as much as the product, and decode is meant to be bandwidth-bound.
#pragma once
#include <cstdint>

#include "attention/engine/tile_kernels.hpp"

namespace longctx::attn {

// Keys/values k, v [n x d] (fp32 rows), all visible to q[0..rows); `s` is scratch of rows * n.
void decode_tile_forward(Rows q, int64_t rows, Rows k, Rows v, int64_t n, int d, float scale, SoftmaxState st, float* s);

// Keys [begin, end) of KV head g of the [T, Hkv, d] tensors k/v, kKeyTile at a time, read in
// place (bf16 widened inside the loops; `ws` only provides the score scratch).
void decode_attend_range(const Tensor& k, const Tensor& v, int g, int64_t begin, int64_t end, Rows q, int64_t rows,
                         int d, float scale, SoftmaxState st, TileScratch& ws);

}  // namespace longctx::attn
