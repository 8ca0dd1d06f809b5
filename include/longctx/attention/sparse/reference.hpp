// Naive references of the top-k and mass-threshold masks: plain loops in T, full sorts, the
// definitions of sparse/topk.hpp and sparse/threshold.hpp read literally. Feed the mask to
// reference::attention_forward / attention_backward for outputs and gradients.
#pragma once
#include <longctx/attention/engine/reference.hpp>

namespace longctx::reference {

// Block level: own block causally plus the top_k - 1 strictly-past blocks by Quest bound
// (ties toward the later block); `group_select`: the bounds summed over the query heads of a KV
// head, and all of them take the same blocks. Token level: the top_k causally visible keys by q . k.
template <class T>
Mask topk_mask(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, const Varlen& varlen,
               int64_t block_size, int64_t top_k, bool token_level, bool group_select = false);

// Mass threshold: own block, then past blocks by descending score while the stop rule says the
// unvisited mass may exceed (1 - tau). heuristic = false: Quest bound rule; true: mean-key rule.
template <class T>
Mask threshold_mask(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, const Varlen& varlen,
                    int64_t block_size, T scale, double tau, bool heuristic);

}  // namespace longctx::reference
