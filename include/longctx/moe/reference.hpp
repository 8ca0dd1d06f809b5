// Naive reference of the MoE layer: a per-token loop over its selected experts, plain loops for
// every product, in float or double. Obviously right and slow; the fast layer is tested against
// it, and it against finite differences (tests/moe/test_moe_gradcheck.cpp).
#pragma once
#include <longctx/moe/moe.hpp>

#include <cstdint>
#include <vector>

namespace longctx::moe::reference {

// The layer's weights as flat vectors, same layouts as longctx::moe::Weights.
template <class T>
struct Params {
  std::vector<T> w_gate, w_noise, w1, w3, w2, shared_w1, shared_w3, shared_w2, expert_bias;
};

template <class T>
Params<T> params_of(const Weights& w);

template <class T>
struct Result {
  std::vector<T> out;             // [tokens, d_model]
  std::vector<int32_t> expert;    // [tokens * k]
  std::vector<T> gate;            // [tokens * k]
  std::vector<uint8_t> kept;      // [tokens * k]
  int64_t dropped_assignments = 0, dropped_tokens = 0;
  T importance_loss = 0, load_balance_loss = 0, z_loss = 0, aux_loss = 0;
};

// x [tokens, d_model]; noise [tokens, E] the N(0,1) draws of the noisy router (empty: no noise).
template <class T>
Result<T> forward(const Config& cfg, const Params<T>& p, const std::vector<T>& x, int64_t tokens,
                  const std::vector<T>& noise);

// Gradients of sum(out o dy) + aux_loss with the routing decisions held fixed; returns the weight
// gradients (same layout as Params; expert_bias stays empty) and sets dx.
template <class T>
Params<T> backward(const Config& cfg, const Params<T>& p, const std::vector<T>& x, int64_t tokens,
                   const std::vector<T>& noise, const std::vector<T>& dy, std::vector<T>& dx);

}  // namespace longctx::moe::reference
