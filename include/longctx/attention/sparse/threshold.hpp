// Mass-threshold ("progressive") sparse attention: Progressive Sparse Attention, arXiv
// 2503.00392, as docs/DESIGN.md describes. Per query: the own block causally first, then past blocks
// in descending order of their score, each folded into an exact online softmax; stop as soon as
// the unvisited blocks hold less than (1 - tau) of the attention mass, so the key budget adapts
// per query. Two stop rules:
//   bound (default): blocks ranked by the Quest upper bound U_j (scaled); the unvisited mass is
//     at most R = sum_{unvisited} B * exp(U_j - m), so stopping when R / (l + R) < 1 - tau
//     proves the dropped fraction is below 1 - tau (x / (l + x) grows with x).
//   heuristic (the paper's): blocks ranked by the mean-key score s_j = scale * q . mean_j; the
//     remaining mass is estimated as (unvisited keys) * exp(s_last - m) with s_last the
//     smallest score visited so far. Not a proof.
// tau = 1 visits every causal key (dense). Forward here, decode in attention/cache/decode.hpp,
// backward via sparse_attention_backward over the visited keys.
#pragma once
#include <longctx/attention/sparse/topk.hpp>
#include <longctx/core/fields.hpp>

namespace longctx {

enum class StopRule { bound, heuristic };
template <>
struct EnumNames<StopRule> {
  static constexpr std::array<const char*, 2> names{"bound", "heuristic"};
};

struct ThresholdOptions {
  int64_t block_size = 64;
  float tau = 0.95f;  // kept attention mass, in (0, 1]
  StopRule stop_rule = StopRule::bound;
  float softmax_scale = 0.0f;  // 0 = 1/sqrt(head_dim)

  template <class V>
  void fields(V&& v) {  // core/fields.hpp
    v("block_size", block_size, "keys per block (also the KV cache's statistics block)");
    v("tau", tau, "kept attention mass, in (0, 1]");
    v("stop_rule", stop_rule, "bound (Quest bound: a proof) or heuristic (the paper's estimate)");
  }
  void validate(const std::string& prefix) const;  // throws "<prefix>tau must be in (0, 1], got 0"
};

SparseResult threshold_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen = {},
                                         const ThresholdOptions& opts = {});

}  // namespace longctx
