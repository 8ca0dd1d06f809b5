// Router internals: logits (with train-time noise), top-k selection, gates, their backward,
// and the balancing losses. All router math is fp32 per token; reductions over tokens run
// serially in double in token order (deterministic).
#pragma once
#include <longctx/moe/moe.hpp>

namespace longctx::moe::detail {

// N(0,1) draw for (seed, token, expert): counter-based (splitmix64 + Box-Muller), so the noise does
// not depend on threads or on the order tokens are processed.
float standard_normal(uint64_t seed, int64_t token, int64_t expert);

// softplus(x) = log(1 + e^x), computed without overflow.
float softplus(float x);

// Fills fwd.logits (and noise, noise_pre for the noisy router in training), fwd.probs, fwd.lse,
// fwd.expert, fwd.gate. Ties in the top-k go to the lower expert index.
void route(const Config& cfg, const Weights& w, const Tensor& x, const Options& opts, Forward& fwd);

// Fills the loss values and router entropy of fwd.stats (needs routed_per_expert).
void aux_losses(const Config& cfg, Forward& fwd);

// dgate [tokens * k] += d(aux loss)/d gate (importance loss).
void aux_gate_grads(const Config& cfg, const Forward& fwd, std::vector<float>& dgate);

// dlogits [tokens, E] += gates' backward of dgate, plus d(aux loss)/d logits (load balance, z-loss).
void logit_grads(const Config& cfg, const Forward& fwd, const std::vector<float>& dgate, Tensor& dlogits);

// dW_gate, dW_noise from dlogits, and dx (overwritten) = the router's part of the input gradient.
void router_weight_grads(const Config& cfg, const Weights& w, const Tensor& x, const Forward& fwd,
                         const Tensor& dlogits, Grads& g, Tensor& dx);

}  // namespace longctx::moe::detail
