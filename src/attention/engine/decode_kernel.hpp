// The decode flavour of the online-softmax tile: a few query rows (one token's heads of a GQA
// group, or one row) against keys they all see. Same math and state as tile_forward, but with
// per-key dot products and axpys instead of two sgemm calls: with 1-4 rows, OpenBLAS's packing of
// the key tile costs as much as the product, and decode is meant to be bandwidth-bound.
#pragma once
#include <cstdint>

#include "attention/engine/tile_kernels.hpp"

namespace longctx::attn {

// Keys [begin, end) of KV head g of the stored [T, Hkv, d] rows k/v, kKeyTile at a time, read in
// place: bf16 widened and int8 converted inside the loops, an int8 row's scale applied to its
// score (q . k = scale_k * (q . k_int8)) and to its probability (p v = (p scale_v) v_int8), so
// no row is ever dequantised into memory. `ws` only provides the score scratch.
void decode_attend_range(const StoredRows& k, const StoredRows& v, int g, int64_t begin, int64_t end, Rows q,
                         int64_t rows, int d, float scale, SoftmaxState st, TileScratch& ws);

// The raw scores that decode_attend_range folds: s[i * (end - begin) + j] = q_i . k_(begin + j) (an
// int8 key's scale applied) of rows q[0, rows) against keys [begin, end) of KV head g.
void decode_scores(const StoredRows& k, int g, int64_t begin, int64_t end, Rows q, int64_t rows, int d, float* s);

}  // namespace longctx::attn
