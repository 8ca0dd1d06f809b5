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
//   group_select (moba, topk): one selection per GQA group instead of per query head.
// The block size is the cache's. Block-level results list the extra blocks each row visited.
#pragma once
#include <longctx/attention/sparse/threshold.hpp>
#include <longctx/attention/sparse/topk.hpp>
#include <longctx/attention/cache/kv_cache.hpp>

namespace longctx {

enum class CacheMethod { dense, moba, topk, threshold };
const char* cache_method_name(CacheMethod m);
CacheMethod parse_cache_method(const std::string& name);  // "dense", "moba", "topk", "threshold"

struct CacheAttentionOptions {
  CacheMethod method = CacheMethod::dense;
  int64_t top_k = 8;          // moba / topk: blocks (own included); topk token_level: keys
  bool token_level = false;   // topk only
  // moba / block topk: one block selection per KV head from the gate scores (q . mean, or the
  // Quest bound) summed over the group's query heads, NSA-style; every head of the group then
  // attends the same blocks. Not MoBA's per-head semantics: off by default.
  bool group_select = false;
  float tau = 0.95f;          // threshold
  StopRule stop_rule = StopRule::bound;
  float softmax_scale = 0.0f;  // 0 = 1/sqrt(head_dim)
};

// q: [q_len, Hq, d] (fp32 or bf16), Hq a multiple of cache.kv_heads(), 1 <= q_len <= cache.size().
SparseResult attention_over_cache(const Tensor& q, const KVCache& cache, const CacheAttentionOptions& opts = {});

}  // namespace longctx
