// Decode and chunked prefill over a KV cache (docs/DESIGN.md "MoBA" decode paragraph and "Top-k and
// mass-threshold sparse attention"). q holds the last q_len tokens of the cached sequence (append
// their K/V to the cache first): query i sits at position cache.size() - q_len + i and sees keys
// causally (bottom-right alignment). Decode is q_len = 1. A row of the result equals the row of
// the same method's prefill over the whole sequence (same selection, same online softmax).
//   dense:     all visible keys; in decode the query heads of a GQA group share each K/V tile.
//   moba:      own (possibly partial) block causally plus the top_k - 1 full past blocks by
//              q . mean, means from the cache's running sums: O((n/B) d + k B d) per token.
//   topk:      own block plus the top_k - 1 past blocks by Quest bound from the cached min/max;
//              token_level: the top_k keys by q . k (reads every key).
//   threshold: mass threshold with tau and the stop rule (attention/sparse/threshold.hpp).
// The block size is the cache's. Block-level results list the extra blocks each row visited.
#pragma once
#include <longctx/attention/cache/kv_cache.hpp>
#include <longctx/attention/kind/kind.hpp>

namespace longctx {

// q: [q_len, Hq, d] (fp32 or bf16), Hq a multiple of cache.kv_heads(), 1 <= q_len <= cache.size().
// spec: full, moba, topk or threshold (nsa and infini decode through their own state:
// nsa_decode_step, InfiniStream); a block-level kind's block_size must be the cache's.
// The options' group_select (moba, block topk): one block selection per KV head from the gate
// scores (q . mean, or the Quest bound) summed over the group's query heads, NSA-style; every
// head of the group then attends the same blocks. Not MoBA's per-head semantics: off by default.
SparseResult attention_over_cache(const Tensor& q, const KVCache& cache, const AttentionSpec& spec = {});

}  // namespace longctx
