// AVX-512 body of the decode tile (engine/decode_kernel.hpp): a few query rows (a GQA group's heads)
// against n keys read in place from fp32, bf16 or int8 rows. Each K/V row is loaded and widened once
// for all rows; per (row, key) the d-long product stays a vector, and 16 keys' vectors are
// reduced together by a transpose-and-add tree (vertical adds, no per-score horizontal sum);
// V is accumulated in registers, a slice of d at a time. Selected at run time; callers fall back
// to the portable loops when it returns false.
#pragma once
#include <cstdint>
#include <type_traits>

#include "attention/engine/tile_kernels.hpp"

namespace longctx::attn {

// Rows of keys or values of element type E (float, bf16 bits, int8) with row stride ld (elements);
// int8 rows have one scale per row (row j's value = int8 * scale[j]).
template <class E>
struct KvRows {
  const E* p;
  int64_t ld;
  const float* scale = nullptr;
  const E* row(int64_t j) const { return p + j * ld; }
  float row_scale(int64_t j) const {
    if constexpr (std::is_same_v<E, int8_t>) return scale[j];
    return 1.0f;
  }
};

namespace avx512 {

// The decode tile: folds the n keys/values k/v into the state of q[0..rows); `s` is scratch of
// rows * n. Returns false (and does nothing) when the CPU lacks AVX-512 or d is not a supported
// multiple of 16; for int8 rows also without AVX-512 VNNI or when d is not a multiple of 32. The
// int8 path takes integer dot products: q and the probabilities (times the value scales) are
// rounded to int16 per row (1/65534 of the row's largest), far below the int8 rows' own rounding.
bool tile_forward(Rows q, int64_t rows, KvRows<float> k, KvRows<float> v, int64_t n, int d, float scale,
                  SoftmaxState st, float* s);
bool tile_forward(Rows q, int64_t rows, KvRows<uint16_t> k, KvRows<uint16_t> v, int64_t n, int d, float scale,
                  SoftmaxState st, float* s);
bool tile_forward(Rows q, int64_t rows, KvRows<int8_t> k, KvRows<int8_t> v, int64_t n, int d, float scale,
                  SoftmaxState st, float* s);
// The tile's scores alone: s[i * n + j] = q_i . k_j (int8: with the key's scale). Same conditions.
bool scores(Rows q, int64_t rows, KvRows<float> k, int64_t n, int d, float* s);
bool scores(Rows q, int64_t rows, KvRows<uint16_t> k, int64_t n, int d, float* s);
bool scores(Rows q, int64_t rows, KvRows<int8_t> k, int64_t n, int d, float* s);

}  // namespace avx512
}  // namespace longctx::attn
