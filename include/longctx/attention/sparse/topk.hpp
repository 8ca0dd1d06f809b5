// Top-k sparse attention (docs/DESIGN.md "Top-k and mass-threshold sparse attention"), prefill
// forward and backward; decode over a KV cache is in attention/cache/decode.hpp.
//
// Block level (default): keys are cut into blocks of block_size from each sequence's start
// (as MoBA). A query at position t attends its own block causally plus the top_k - 1 strictly
// past blocks with the highest Quest upper bound sum_i max(q_i * min_i, q_i * max_i) over the
// block's elementwise key min/max (ties toward the later block; all of them when fewer). One
// exact softmax runs over the union. Token level: the query attends exactly its top_k keys by
// q . k among the causally visible ones (ties toward the later key). Selection is O(n) per
// query (attn::top_indices), never a sort of all candidates. Block level runs on the
// block-sparse engine (many queries per block tile, docs/DESIGN.md "Block-sparse engine"); token
// level one query row at a time.
// Layout, GQA, varlen and bottom-right alignment follow attention/common.hpp; always causal.
#pragma once
#include <longctx/attention/common.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx {

// Output of a sparse method whose visited keys differ per query: out/lse as dense attention,
// the visited set (kept for the backward) and how many keys each (head, query) attended.
struct SparseResult : AttentionResult {
  bool token_level = false;
  int64_t block_size = 0;
  float scale = 0;  // the softmax scale it ran with (resolved; the backward's)
  // Per (h * total_q + row), CSR: visited[row_offset[i] .. row_offset[i + 1]) are the extra
  // blocks (block level; the own block, attended causally, is implicit) or all attended tokens
  // (token level), as sequence-local indices: ascending for top-k, in visiting order (descending
  // score) for the threshold.
  std::vector<int64_t> row_offset;
  std::vector<int32_t> visited;
  double mean_keys = 0;  // keys attended per (head, query), mean over all rows
  int64_t max_keys = 0;
  std::string stop_rule;  // threshold only: which stop rule ran ("bound" or "heuristic")
};

struct TopkOptions {
  int64_t block_size = 64;
  int64_t top_k = 8;  // blocks, own block included (block level), or keys (token level)
  bool token_level = false;
  float softmax_scale = 0.0f;  // 0 = 1/sqrt(head_dim)
  // Block level: one selection per KV head from the Quest bounds summed over its query heads (NSA's
  // group-shared rule, arXiv 2502.11089 sec. 3.3.3), in prefill, training and decode alike: a GQA
  // group then reads one set of blocks.
  bool group_select = false;

  template <class V>
  void fields(V&& v) {  // core/fields.hpp
    v("block_size", block_size, "keys per block (block level; also the KV cache's statistics block)");
    v("top_k", top_k, "blocks per query, own block included (block level), or keys (token level)");
    v("token_level", token_level, "select single keys by q . k instead of blocks by the Quest bound");
    v("group_select", group_select, "block level: one selection per KV head from bounds summed over its query heads");
  }
  void validate(const std::string& prefix) const;  // throws "<prefix>top_k must be > 0, got 0"
};

SparseResult topk_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen = {},
                                    const TopkOptions& opts = {});

// Backward of any SparseResult (top-k or threshold) over exactly the keys the forward visited
// (no gradient through the selection); checks that the visited entries are in range. Block level:
// the block-sparse engine's key-tile backward; token level: one item per (sequence, KV head) owns
// its dK/dV rows and its query heads' dQ rows. Deterministic for a given thread count.
AttentionGrads sparse_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const SparseResult& fwd,
                                         const Tensor& dout, const Varlen& varlen = {});

}  // namespace longctx
