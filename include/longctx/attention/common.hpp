// What every attention kernel shares: options, varlen sequence boundaries, outputs, gradients.
//
// Layout: q is [total_q, Hq, d], k and v are [total_k, Hkv, d] (row-major, packed varlen
// sequences), fp32 or bf16 storage; outputs and gradients are fp32. Query head h reads KV head
// h / (Hq / Hkv) (GQA/MQA, K/V never copied). LSE is natural-log, shaped [Hq, total_q].
#pragma once
#include <longctx/core/fields.hpp>
#include <longctx/core/tensor.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx {

struct AttentionOptions {
  bool causal = true;
  // Softmax scale; 0 means 1/sqrt(head_dim).
  float softmax_scale = 0.0f;
  // Sliding window (causal only): a query at position p sees keys at positions (p - window, p].
  // 0 means no window.
  int64_t window = 0;

  // As a model layer's kind (full) its one config field (core/fields.hpp) is the window: model
  // layers are causal with the default scale. Calls are checked where they run
  // (attention/engine/varlen.hpp).
  template <class V>
  void fields(V&& v) {
    v("window", window, "sliding window: each query sees its `window` most recent keys, itself included (0 = all)");
  }
  void validate(const std::string& prefix) const {
    require(window >= 0, prefix, "window", window, ">= 0 (0 = all keys)");
  }
};

// Sequence boundaries as prefix sums {0, len_0, len_0 + len_1, ...} (FlashAttention's
// cu_seqlens). Empty vectors mean one sequence spanning the whole tensor. When a sequence has
// fewer queries than keys, the queries are its last tokens (bottom-right causal alignment, as in
// chunked prefill and decode): query i of a sequence sits at key position i + len_k - len_q.
struct Varlen {
  std::vector<int64_t> cu_q;
  std::vector<int64_t> cu_k;
  static Varlen from_lengths(const std::vector<int64_t>& q_lens, const std::vector<int64_t>& k_lens);
  static Varlen same(const std::vector<int64_t>& lens) { return from_lengths(lens, lens); }
};

struct AttentionResult {
  Tensor out;  // [total_q, Hq, d] fp32
  Tensor lse;  // [Hq, total_q] fp32; -inf for a query that sees no key (its output is 0)
  AttentionOptions options;  // what the forward ran with (flash_attention_backward's)
};

struct AttentionGrads {
  Tensor dq;  // [total_q, Hq, d] fp32
  Tensor dk;  // [total_k, Hkv, d] fp32
  Tensor dv;  // [total_k, Hkv, d] fp32
};

}  // namespace longctx
