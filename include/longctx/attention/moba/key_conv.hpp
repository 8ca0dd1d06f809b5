// MoBA's learned key convolution (Xiao et al., "Optimizing Mixture of Block Attention", arXiv
// 2511.11571: "a short convolution on keys to cluster relevant signals, which enhances routing
// accuracy"; docs/DESIGN.md "MoBA key convolution"): a short causal depthwise convolution over the
// keys of each packed sequence. A model layer applies it to its projected keys before RoPE; the
// convolved keys then serve both the gate's block means and the attention.
//
// Keys x [T, H, d] are C = H * d channels; weights w [K, C] (tap K - 1 weighs the token itself),
// optional bias b [C]. Key row t of a sequence whose first row is s0:
//   y[t, c] = b[c] + sum_{j=0}^{K-1} w[j, c] * x[t - (K - 1) + j, c],   rows before s0 count as 0,
// so a sequence never reads another's keys, and a sequence shorter than K sees only its own rows.
// fp32; deterministic for any thread count (the weight gradient sums fixed row chunks in order).
#pragma once
#include <longctx/core/tensor.hpp>

#include <cstdint>
#include <vector>

namespace longctx {

// The longest kernel the model config accepts (MobaOptions::key_conv).
constexpr int64_t kMaxKeyConv = 16;

// y [T, H, d]. `b` empty: no bias. `cu_seqlens` empty: one sequence of all T rows.
Tensor key_conv_forward(const Tensor& x, const Tensor& w, const Tensor& b, const std::vector<int64_t>& cu_seqlens = {});

// Gradients of sum(y o dy): dx [T, H, d], dw [K, C], db [C] (empty when `bias` is false).
struct KeyConvGrads {
  Tensor dx, dw, db;
};
KeyConvGrads key_conv_backward(const Tensor& x, const Tensor& w, bool bias, const Tensor& dy,
                               const std::vector<int64_t>& cu_seqlens = {});

// The convolution over one sequence fed in pieces (prefill chunks, then one key per decode step):
// keeps the last K - 1 unconvolved keys. feed() of the pieces in order returns exactly the rows
// key_conv_forward gives over the whole sequence.
class KeyConvStream {
 public:
  // Copies w [K, C] and b (empty or [C]): a snapshot, as the decode state's other weights.
  KeyConvStream(const Tensor& w, const Tensor& b);
  // The next n keys [n, H, d] (H * d = C) of the sequence; returns their convolved keys.
  Tensor feed(const Tensor& x);
  // Bytes a stream of kernel K over C channels holds: weights, bias (if any), the K - 1 kept keys.
  static double bytes(int64_t kernel, int64_t channels, bool bias);

 private:
  Tensor w_, b_;
  std::vector<float> tail_;  // the last min(K - 1, keys so far) keys, [rows, C]
};

}  // namespace longctx
