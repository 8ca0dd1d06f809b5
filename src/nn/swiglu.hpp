// The SwiGLU feed-forward engine shared by the dense FFN and the MoE experts:
// y = (silu(x W1) o (x W3)) W2 on groups of rows, each group with its own weights (one group for a
// dense FFN, one per expert over its permuted token run). Forward and the row-parallel half of
// backward are threaded over row tiles of all groups; weight gradients over column slices of
// d_ff, so every output has one owner and results do not depend on the thread count.
#pragma once
#include <cstdint>
#include <vector>

#include "core/gemm.hpp"

namespace longctx::swiglu {

struct Group {
  int64_t rows = 0;
  const float* x = nullptr;                                     // [rows, d] input rows
  const float *w1 = nullptr, *w3 = nullptr, *w2 = nullptr;      // [d, f], [d, f], [f, d]
  float *a = nullptr, *b = nullptr;                             // [rows, f] saved x W1, x W3
  float* y = nullptr;                                           // [rows, d] output (forward)
  const float* dy = nullptr;                                    // [rows, d] (backward)
  float* dx = nullptr;                                          // [rows, d] overwritten (backward)
  float *dw1 = nullptr, *dw3 = nullptr, *dw2 = nullptr;         // overwritten; zero if rows == 0
  gemm::Precision precision = gemm::Precision::f32;             // of the products' inputs
};

// A group of `rows` input rows x with weights w1, w3, w2; the caller sets the other fields.
inline Group group_of(int64_t rows, const float* x, const float* w1, const float* w3, const float* w2) {
  Group g;
  g.rows = rows, g.x = x, g.w1 = w1, g.w3 = w3, g.w2 = w2;
  return g;
}

// Fills a, b, y of every group.
void forward(const std::vector<Group>& groups, int64_t d, int64_t f);

// Fills dx, dw1, dw3, dw2 of every group from x, a, b, dy.
void backward(const std::vector<Group>& groups, int64_t d, int64_t f);

// Row tile of the forward / backward work split (rows per sgemm call).
constexpr int64_t kRowTile = 256;

}  // namespace longctx::swiglu
