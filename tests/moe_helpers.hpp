// Shared setup of the MoE tests: small configs and random weights (noise weights and the
// selection bias random too, so every path carries a signal).
#pragma once
#include <longctx/moe/moe.hpp>
#include <longctx/moe/reference.hpp>

#include "helpers.hpp"

namespace longctx::testing {

inline moe::Config small_moe(moe::Router router, moe::GateNorm norm, int64_t experts, int64_t k) {
  moe::Config c;
  c.d_model = 6;
  c.d_ff = 5;
  c.num_experts = experts;
  c.top_k = k;
  c.router = router;
  c.norm = norm;
  return c;
}

inline moe::Weights random_moe_weights(const moe::Config& c, uint64_t seed) {
  moe::Weights w = moe::init_weights(c, seed);
  if (c.router == moe::Router::noisy) w.w_noise = random_tensor({c.d_model, c.num_experts}, seed + 1, 0.5f);
  w.expert_bias = random_tensor({c.num_experts}, seed + 2, 0.3f);
  // larger router weights than init so gates are far from uniform
  w.w_gate = random_tensor({c.d_model, c.num_experts}, seed + 3, 0.8f);
  return w;
}

template <class T>
std::vector<T> noise_of(const moe::Forward& f) {
  return f.noise.empty() ? std::vector<T>{} : to_vec<T>(f.noise);
}

}  // namespace longctx::testing
