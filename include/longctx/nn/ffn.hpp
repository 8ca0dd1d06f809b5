// Dense SwiGLU feed-forward layer (Shazeer 2020, "GLU Variants Improve Transformer"):
// y = (silu(x W1) o (x W3)) W2, x [tokens, d_model], W1, W3 [d_model, d_ff], W2 [d_ff, d_model].
// The MoE experts (longctx/moe/moe.hpp) run on the same engine.
#pragma once
#include <longctx/core/tensor.hpp>

namespace longctx::ffn {

struct SwigluWeights {
  Tensor w1, w3;  // [d_model, d_ff]
  Tensor w2;      // [d_ff, d_model]
};

// Weights drawn N(0, 1/fan_in) with a seeded generator.
SwigluWeights init_swiglu(int64_t d_model, int64_t d_ff, uint64_t seed);

struct SwigluForward {
  Tensor y;     // [tokens, d_model]
  Tensor a, b;  // [tokens, d_ff] saved x W1 and x W3, for the backward
};

struct SwigluGrads {
  Tensor dx;             // [tokens, d_model]
  Tensor dw1, dw3, dw2;  // shapes of the weights
};

SwigluForward swiglu_forward(const SwigluWeights& w, const Tensor& x);
SwigluGrads swiglu_backward(const SwigluWeights& w, const Tensor& x, const SwigluForward& fwd, const Tensor& dy);

}  // namespace longctx::ffn
