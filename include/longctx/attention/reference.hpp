// Naive references: plain loops over a dense [Hq, Tq, Tk] visibility mask, in float or double.
// Obviously right and slow; the fast kernels are tested against them, and they are tested
// against finite differences (tests/test_reference_gradcheck.cpp).
#pragma once
#include <longctx/attention/common.hpp>

#include <cstdint>
#include <vector>

namespace longctx::reference {

struct Shape {
  int64_t tq, tk;
  int hq, hkv, d;
};

// mask[(h * tq + i) * tk + j] != 0 iff query row i of head h may attend key row j.
using Mask = std::vector<uint8_t>;

// Causal / sliding-window / varlen visibility, the rule of longctx::AttentionOptions and Varlen.
Mask dense_mask(const Shape& s, const Varlen& varlen, const AttentionOptions& opts);

// Per-query-head MoBA visibility (DESIGN.md "MoBA"): own block causally plus the top-(top_k-1)
// strictly-past full blocks by q . mean(K_block), ties toward the later block. Block means and
// scores are computed in T. `selected`, if given, receives per (h, query row) the chosen past
// blocks in descending score order, padded with -1 to top_k - 1 entries.
template <class T>
Mask moba_mask(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, const Varlen& varlen,
               int64_t block_size, int64_t top_k, std::vector<int32_t>* selected = nullptr);

// out[Tq, Hq, d], lse[Hq, Tq] of softmax(scale * q k^T masked) v; rows with no visible key give
// out = 0, lse = -inf.
template <class T>
void attention_forward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                       const std::vector<T>& v, T scale, const Mask& mask, std::vector<T>& out,
                       std::vector<T>& lse);

// Gradients of sum(out o dout) with respect to q, k, v (the mask is a constant).
template <class T>
void attention_backward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                        const std::vector<T>& v, T scale, const Mask& mask, const std::vector<T>& dout,
                        std::vector<T>& dq, std::vector<T>& dk, std::vector<T>& dv);

}  // namespace longctx::reference
