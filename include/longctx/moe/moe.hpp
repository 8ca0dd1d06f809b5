// Sparse mixture-of-experts feed-forward layer (docs/DESIGN.md "Sparse mixture of experts";
// user guide: docs/MOE.md). E SwiGLU experts d_model -> d_ff -> d_model, a router choosing k
// per token, optional shared experts every token uses, optional capacity with token dropping,
// balancing losses whose gradients flow into the router. Execution is grouped by expert (tokens
// permuted into per-expert runs, one GEMM per expert and row tile), deterministic for a fixed
// thread count.
#pragma once
#include <longctx/core/fields.hpp>
#include <longctx/core/tensor.hpp>

#include <cstdint>
#include <vector>

namespace longctx::moe {

enum class Router {
  topk,      // Mixtral: top-k on the logits x W_g
  noisy,     // Shazeer 2017: top-k on H = x W_g + N(0,1) o softplus(x W_noise), noise at train time
  bias_free  // auxiliary-loss-free (DeepSeek-V3): top-k on x W_g + b, b used only for selection
};

enum class GateNorm {
  selected,  // gates = softmax over the k selected logits (Mixtral); refuses k = 1 (gate always 1)
  all        // gates = softmax over all E logits, not renormalised (Switch)
};

}  // namespace longctx::moe

namespace longctx {
template <>
struct EnumNames<moe::Router> {
  static constexpr std::array<const char*, 3> names{"topk", "noisy", "bias_free"};
};
template <>
struct EnumNames<moe::GateNorm> {
  static constexpr std::array<const char*, 2> names{"selected", "all"};
};
}  // namespace longctx

namespace longctx::moe {

struct Config {
  int64_t d_model = 0, d_ff = 0;
  int64_t num_experts = 0, top_k = 0;
  int64_t num_shared = 0;  // shared experts of width d_ff every token uses (one SwiGLU of width num_shared * d_ff)
  Router router = Router::topk;
  GateNorm norm = GateNorm::selected;
  // Dropless, or capacity per expert = ceil(capacity_factor * tokens * top_k / num_experts) with
  // the overflowing assignments dropped: all first choices are served before any second choice,
  // tokens in index order within a choice rank.
  bool dropless = true;
  double capacity_factor = 1.25;  // used when !dropless; must be > 0
  // Balancing losses, each added to the layer's aux loss when its weight is > 0.
  float importance_weight = 0;    // w * CV^2 of the per-expert summed gates (Shazeer 2017)
  float load_balance_weight = 0;  // alpha: alpha * E * sum_i f_i P_i (Switch)
  float z_loss_weight = 0;        // w * mean_t logsumexp(logits_t)^2 (ST-MoE)
  float bias_update_rate = 1e-3f; // gamma of the bias-free router's update
};

// Throws std::invalid_argument naming the bad field.
void validate(const Config& cfg);

struct Weights {
  Tensor w_gate;                 // [d_model, E]
  Tensor w_noise;                // [d_model, E], noisy router only (else empty)
  Tensor w1, w3;                 // [E, d_model, d_ff]
  Tensor w2;                     // [E, d_ff, d_model]
  Tensor shared_w1, shared_w3;   // [d_model, S * d_ff], empty without shared experts
  Tensor shared_w2;              // [S * d_ff, d_model]
  Tensor expert_bias;            // [E], bias-free router's selection bias (not trained by gradients)
};

// N(0, 1/fan_in) weights from a seeded generator; w_noise zero; expert_bias zero.
Weights init_weights(const Config& cfg, uint64_t seed);

struct Stats {
  std::vector<int64_t> tokens_per_expert;  // assignments each expert processed (after dropping)
  std::vector<int64_t> routed_per_expert;  // assignments the router chose (before dropping)
  int64_t dropped_assignments = 0;         // (token, expert) pairs over capacity
  int64_t dropped_tokens = 0;              // tokens with every assignment dropped (residual only)
  double importance_loss = 0, load_balance_loss = 0, z_loss = 0;  // unweighted values
  double aux_loss = 0;                     // weighted sum, part of the training loss
  double router_entropy = 0;               // mean over tokens of the entropy of softmax over all E
};

struct Options {
  bool training = true;     // noisy router: add noise only when training
  uint64_t noise_seed = 0;  // noise of token t, expert i is a function of (seed, t, i)
};

// Everything the backward needs, plus the step's statistics.
struct Forward {
  Tensor out;  // [tokens, d_model]; dropped tokens get only the shared experts' output (or 0)
  Stats stats;
  // routing
  Tensor logits;      // [tokens, E] logits the gates use (H for the noisy router)
  Tensor probs;       // [tokens, E] softmax over all E of `logits`
  std::vector<float> lse;       // [tokens] logsumexp of `logits`
  Tensor noise;       // [tokens, E] N(0,1) draws (noisy router in training)
  Tensor noise_pre;   // [tokens, E] x W_noise (noisy router in training)
  std::vector<int32_t> expert;  // [tokens * k] chosen experts, by descending selection score
  std::vector<float> gate;      // [tokens * k] their gates
  std::vector<int64_t> slot;    // [tokens * k] row in the permuted buffers, -1 when dropped
  std::vector<int64_t> offsets; // [E + 1] start of each expert's run in the permuted buffers
  std::vector<int32_t> row_token;  // [rows] token of each permuted row
  // experts, in permuted (expert-grouped) row order
  Tensor x_perm, a, b, y_perm;  // [rows, d_model], [rows, d_ff] x2, [rows, d_model]
  Tensor shared_a, shared_b, shared_y;  // shared experts, [tokens, S * d_ff] x2, [tokens, d_model]
};

struct Grads {
  Tensor dx;
  Tensor dw_gate, dw_noise, dw1, dw3, dw2, dshared_w1, dshared_w3, dshared_w2;  // shapes of the weights
};

Forward forward(const Config& cfg, const Weights& w, const Tensor& x, const Options& opts = {});

// Gradients of <out, dy> + stats.aux_loss. The top-k choice and capacity decisions are constants;
// the router gets gradients through the gates (softmax over the selected or all logits) and the
// aux losses; experts that got no tokens get zero gradients.
Grads backward(const Config& cfg, const Weights& w, const Tensor& x, const Forward& fwd, const Tensor& dy);

// Bias-free balancing step: b_i += gamma * sign(mean load - load_i), load = tokens routed to i.
void update_expert_bias(const Config& cfg, Weights& w, const Stats& stats);

}  // namespace longctx::moe
