// Naive MoBA visibility mask: plain loops and a full sort per query, the definition of
// moba/moba.hpp read literally. Feed it to reference::attention_forward / attention_backward.
#pragma once
#include <longctx/attention/engine/reference.hpp>

namespace longctx::reference {

// Per-query-head MoBA visibility (docs/DESIGN.md "MoBA"): own block causally plus the top-(top_k-1)
// strictly-past full blocks by q . mean(K_block), ties toward the later block. Block means and
// scores are computed in T. `selected`, if given, receives per (h, query row) the chosen past
// blocks in descending score order, padded with -1 to top_k - 1 entries. `group_select`: the
// score of a block is summed over the query heads of its KV head, and all of them take the same.
template <class T>
Mask moba_mask(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, const Varlen& varlen,
               int64_t block_size, int64_t top_k, std::vector<int32_t>* selected = nullptr, bool group_select = false);

// MoBA's key convolution (moba/key_conv.hpp) read literally, on flat [T, channels] keys: y[t, c] =
// b[c] + sum_j w[j, c] x[t - (K - 1) + j, c] over the rows of t's sequence (b may be empty; an
// empty cu_seqlens is one sequence).
template <class T>
std::vector<T> key_conv_forward(const std::vector<T>& x, int64_t channels, const std::vector<T>& w,
                                const std::vector<T>& b, const std::vector<int64_t>& cu_seqlens);
// Gradients of sum(y o dy): dx like x, dw like w, db [channels] (left empty without bias).
template <class T>
void key_conv_backward(const std::vector<T>& x, int64_t channels, const std::vector<T>& w, bool bias,
                       const std::vector<T>& dy, const std::vector<int64_t>& cu_seqlens, std::vector<T>& dx,
                       std::vector<T>& dw, std::vector<T>& db);

}  // namespace longctx::reference
