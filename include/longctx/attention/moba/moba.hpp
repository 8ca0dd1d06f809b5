// MoBA, Mixture of Block Attention (MoonshotAI, arXiv 2502.13189), prefill forward and backward.
//
// Each sequence is cut into blocks of block_size keys from its own start (the last may be
// partial). A query at position t attends its own block causally plus the top_k - 1 strictly
// past blocks whose mean key (per KV head, no parameters) scores highest against it:
// score = q_t . mean(K_block) in fp32, unscaled (ranking only). Only full blocks that end before
// t are eligible; with fewer eligible blocks than top_k - 1 all of them are taken; ties go to the
// later block. top_k = 1 is own-block-only attention (block-diagonal causal). When
// top_k * block_size covers the sequence, MoBA is exactly dense causal attention.
// One softmax runs over the union of the selected keys (online softmax, fp32). The backward
// reuses the forward's selection (no gradient through the top-k choice), deterministic.
// Layout, GQA, varlen and bottom-right alignment follow attention/common.hpp; always causal.
#pragma once
#include <longctx/attention/common.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx {

struct MobaOptions {
  int64_t block_size = 512;
  int64_t top_k = 3;  // blocks per query, own block included
  float softmax_scale = 0.0f;  // 0 = 1/sqrt(head_dim)
  // One selection per KV head from the gate scores summed over its query heads (NSA's group-shared
  // rule, arXiv 2502.11089 sec. 3.3.3): a GQA group then reads one set of blocks. Off: MoBA's own
  // per-query-head selection.
  bool group_select = false;
  // A model layer's learned key convolution (Xiao et al., arXiv 2511.11571; moba/key_conv.hpp):
  // the layer convolves its keys before RoPE and this kernel, which does not read these fields.
  int64_t key_conv = 0;        // kernel K; 0 = none
  bool key_conv_bias = false;  // with a learned bias

  template <class V>
  void fields(V&& v) {  // core/fields.hpp
    v("block_size", block_size, "keys per block B");
    v("top_k", top_k, "blocks per query k, own block included");
    v("group_select", group_select, "one selection per KV head from scores summed over its query heads (NSA-style)");
    v("key_conv", key_conv, "kernel of the learned causal key convolution before the gate and attention (0: none)");
    v("key_conv_bias", key_conv_bias, "the key convolution has a learned bias");
  }
  void validate(const std::string& prefix) const;  // throws "<prefix>block_size must be > 0, got 0"
};

// out [total_q, Hq, d] and lse [Hq, total_q] as dense attention, plus the selection.
struct MobaResult : AttentionResult {
  MobaOptions moba;  // the options it ran with (the backward's)
  // The past blocks each query chose (sequence-local block indices, ascending, -1 padded):
  // selected[(h * total_q + row) * slots + i], slots = top_k - 1 (or fewer: the past blocks of
  // the longest sequence, so a top_k past the block count means all of them). Kept for the backward, and
  // there for debugging and plots.
  std::vector<int32_t> selected;
  int64_t slots = 0;
};

MobaResult moba_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen = {},
                                  const MobaOptions& opts = {});

AttentionGrads moba_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const MobaResult& fwd,
                                       const Tensor& dout, const Varlen& varlen = {});

}  // namespace longctx
