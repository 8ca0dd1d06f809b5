// Dense flash attention on CPU: tiled, online softmax, O(N) extra memory. Causal (bottom-right
// aligned when a sequence has fewer queries than keys), varlen, GQA/MQA, optional sliding window.
// The baseline every sparse method is measured against.
#pragma once
#include <longctx/attention/common.hpp>

namespace longctx {

// out = softmax(scale * q k^T, masked) v per head, and the row LSE saved for backward.
AttentionResult flash_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Varlen& varlen = {}, const AttentionOptions& opts = {});

// Gradients of sum(out o dout), FlashAttention-2 style: P recomputed from the saved LSE.
// Deterministic for a fixed thread count.
AttentionGrads flash_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const AttentionResult& fwd, const Tensor& dout,
                                        const Varlen& varlen = {});

}  // namespace longctx
