#include <longctx/core/error.hpp>
#include <longctx/core/memory.hpp>
#include <longctx/model/transformer.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/parallel.hpp"
#include <random>

#include "core/gemm.hpp"
#include "core/simd.hpp"
#include "model/attention_layer.hpp"
#include "nn/layers.hpp"
#include "nn/swiglu.hpp"

namespace longctx {

namespace {

struct LayerParams {
  Param *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w1, *w3, *w2;
  Param* router = nullptr;                                  // moe layers: [D, E]; w1/w3/w2 are then [E, ...]
  Param *router_noise = nullptr, *expert_bias = nullptr;    // moe: noisy router [D, E]; bias_free [E]
  Param *shared_w1 = nullptr, *shared_w3 = nullptr, *shared_w2 = nullptr;  // moe shared experts
  std::vector<Param*> attention;  // the attention kind's own (attention_layer::kind_params)
};

// What one layer's backward needs from its forward.
struct LayerActs {
  Tensor x_in, h1, x_mid, h2, a, b;
  std::vector<float> rstd1, rstd2;
  attention_layer::Acts attn;
  moe::Forward moe;  // moe FFN layers
};

gemm::Precision matmul_precision(const ModelConfig& c) {
  return c.matmul_precision == DType::bf16 ? gemm::Precision::bf16 : gemm::Precision::f32;
}

// The dense SwiGLU FFN of a layer over its T rows h2, with the saved a = h2 W1 and b = h2 W3.
swiglu::Group dense_ffn(const LayerParams& P, LayerActs& L, int64_t T, gemm::Precision pr) {
  swiglu::Group g = swiglu::group_of(T, L.h2.f32(), P.w1->value.f32(), P.w3->value.f32(), P.w2->value.f32());
  g.a = L.a.f32(), g.b = L.b.f32();
  g.precision = pr;
  return g;
}

// The MoE layer's weights as Tensors aliasing the model's Params (no copy).
moe::Weights moe_weights(const LayerParams& P) {
  moe::Weights w;
  w.w_gate = P.router->value.alias();
  if (P.router_noise) w.w_noise = P.router_noise->value.alias();
  if (P.expert_bias) w.expert_bias = P.expert_bias->value.alias();
  w.w1 = P.w1->value.alias();
  w.w3 = P.w3->value.alias();
  w.w2 = P.w2->value.alias();
  if (P.shared_w1) {
    w.shared_w1 = P.shared_w1->value.alias();
    w.shared_w3 = P.shared_w3->value.alias();
    w.shared_w2 = P.shared_w2->value.alias();
  }
  return w;
}

}  // namespace

struct Transformer::Acts {
  explicit Acts(nn::Rope r) : rope(std::move(r)) {}
  std::vector<LayerParams> layer_params;
  Param *embed = nullptr, *norm = nullptr, *head = nullptr;
  nn::Rope rope;
  // Layer l's rotation: null in a NoPE layer (ModelConfig::nope_layers).
  const nn::Rope* rope_of(const ModelConfig& c, int64_t l) const { return c.has_rope(l) ? &rope : nullptr; }
  // last train forward
  Batch batch;
  std::vector<int64_t> positions;  // RoPE positions of batch
  Varlen varlen;
  std::vector<LayerActs> layers;
  Tensor x_final, h_final, dlogits;
  std::vector<float> rstd_final;
  bool ready = false;
};

Transformer::~Transformer() = default;
Transformer::Transformer(Transformer&&) noexcept = default;
Transformer& Transformer::operator=(Transformer&&) noexcept = default;

double param_count(const ModelConfig& cfg) {
  const double D = double(cfg.d_model), kv = double(cfg.n_kv_heads * cfg.head_dim());
  double n = double(cfg.vocab_size) * D * (cfg.tie_embeddings ? 1 : 2) + D;  // embeddings, head, final norm
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    n += 2 * D + 2 * D * D + 2 * D * kv + double(attention_layer::kind_param_count(cfg, l));  // norms, wq wo wk wv
    if (cfg.ffn[size_t(l)].kind == "moe") {
      const moe::Config m = moe_config(cfg, l);
      n += D * double(m.num_experts) + 3 * D * double(m.d_ff) * double(m.num_experts + m.num_shared);
      if (m.router == moe::Router::noisy) n += D * double(m.num_experts);       // router_noise
      if (m.router == moe::Router::bias_free) n += double(m.num_experts);      // expert_bias
    } else {
      n += 3 * D * double(cfg.d_ff);
    }
  }
  return n;
}

double model_bytes(const ModelConfig& cfg) {
  return 2 * 4 * param_count(cfg) + 4 * double(cfg.max_seq_len) * double(cfg.head_dim());
}

Transformer::Transformer(const ModelConfig& cfg, uint64_t seed) : cfg_(cfg) {
  cfg_.validate();
  memory::require_fits(model_bytes(cfg_), concat("a model of ", param_count(cfg_), " parameters and ", cfg_.max_seq_len,
                                                  " positions (fp32 weights, gradients and RoPE table)"));
  const int64_t D = cfg.d_model, dh = cfg.head_dim(), F = cfg.d_ff, V = cfg.vocab_size;
  std::mt19937_64 rng(seed);
  auto add_filled = [&](std::string name, std::vector<int64_t> shape, float value) {
    Param p{std::move(name), Tensor(shape), Tensor(shape), shape.size() >= 2};
    p.value.fill(value);
    params_.push_back(std::move(p));
  };
  auto add = [&](std::string name, std::vector<int64_t> shape, float std) {  // N(0, std)
    add_filled(std::move(name), std::move(shape), 0.0f);
    std::normal_distribution<float> dist(0.0f, std);
    Tensor& w = params_.back().value;
    for (int64_t i = 0; i < w.numel(); ++i) w.f32()[i] = dist(rng);
  };
  // GPT-2 / Llama practice: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers).
  const float out_std = 0.02f / std::sqrt(2.0f * float(cfg.n_layers));
  add("tok_embeddings.weight", {V, D}, 0.02f);
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add_filled(p + "attention_norm.weight", {D}, 1.0f);
    add(p + "attention.wq", {D, cfg.n_heads * dh}, 0.02f);
    add(p + "attention.wk", {D, cfg.n_kv_heads * dh}, 0.02f);
    add(p + "attention.wv", {D, cfg.n_kv_heads * dh}, 0.02f);
    add(p + "attention.wo", {cfg.n_heads * dh, D}, out_std);
    // own seed per layer: the other parameters' init does not depend on the layers' kinds
    for (Param& kp : attention_layer::kind_params(cfg, l, seed ^ (0x9e3779b97f4a7c15ull * uint64_t(l + 1))))
      params_.push_back(std::move(kp));
    add_filled(p + "ffn_norm.weight", {D}, 1.0f);
    if (cfg.ffn[size_t(l)].kind == "moe") {
      const moe::Config m = moe_config(cfg, l);
      add(p + "feed_forward.router", {D, m.num_experts}, 0.02f);
      // noise scale softplus(x W_noise) starts at softplus(0); the selection bias at 0 (moe::init_weights)
      if (m.router == moe::Router::noisy) add_filled(p + "feed_forward.router_noise", {D, m.num_experts}, 0.0f);
      if (m.router == moe::Router::bias_free) add_filled(p + "feed_forward.expert_bias", {m.num_experts}, 0.0f);
      add(p + "feed_forward.w1", {m.num_experts, D, m.d_ff}, 0.02f);
      add(p + "feed_forward.w3", {m.num_experts, D, m.d_ff}, 0.02f);
      add(p + "feed_forward.w2", {m.num_experts, m.d_ff, D}, out_std);
      if (m.num_shared > 0) {
        add(p + "feed_forward.shared_w1", {D, m.num_shared * m.d_ff}, 0.02f);
        add(p + "feed_forward.shared_w3", {D, m.num_shared * m.d_ff}, 0.02f);
        add(p + "feed_forward.shared_w2", {m.num_shared * m.d_ff, D}, out_std);
      }
    } else {
      add(p + "feed_forward.w1", {D, F}, 0.02f);
      add(p + "feed_forward.w3", {D, F}, 0.02f);
      add(p + "feed_forward.w2", {F, D}, out_std);
    }
  }
  add_filled("norm.weight", {D}, 1.0f);
  if (!cfg.tie_embeddings) add("output.weight", {V, D}, 0.02f);

  running_ = cfg.attention;
  acts_ = std::make_unique<Acts>(nn::Rope(cfg.max_seq_len, dh, cfg.rope_theta));
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    acts_->layer_params.push_back({&param(p + "attention_norm.weight"), &param(p + "attention.wq"),
                                   &param(p + "attention.wk"), &param(p + "attention.wv"), &param(p + "attention.wo"),
                                   &param(p + "ffn_norm.weight"), &param(p + "feed_forward.w1"),
                                   &param(p + "feed_forward.w3"), &param(p + "feed_forward.w2")});
    const std::string kind_prefix = p + "attention." + cfg.attention[size_t(l)].name() + ".";
    for (Param& q : params_)
      if (q.name.rfind(kind_prefix, 0) == 0) acts_->layer_params.back().attention.push_back(&q);
    if (cfg.ffn[size_t(l)].kind == "moe") {
      LayerParams& lp = acts_->layer_params.back();
      lp.router = &param(p + "feed_forward.router");
      const moe::Router router = moe_config(cfg, l).router;
      if (router == moe::Router::noisy) lp.router_noise = &param(p + "feed_forward.router_noise");
      if (router == moe::Router::bias_free) lp.expert_bias = &param(p + "feed_forward.expert_bias");
      if (moe_config(cfg, l).num_shared > 0) {
        lp.shared_w1 = &param(p + "feed_forward.shared_w1");
        lp.shared_w3 = &param(p + "feed_forward.shared_w3");
        lp.shared_w2 = &param(p + "feed_forward.shared_w2");
      }
    }
  }
  acts_->embed = &param("tok_embeddings.weight");
  acts_->norm = &param("norm.weight");
  acts_->head = cfg.tie_embeddings ? acts_->embed : &param("output.weight");
}

Param& Transformer::param(const std::string& name) {
  for (Param& p : params_)
    if (p.name == name) return p;
  throw std::invalid_argument(concat("longctx: model has no parameter '", name, "'"));
}

int64_t Transformer::num_params() const {
  int64_t n = 0;
  for (const Param& p : params_) n += p.value.numel();
  return n;
}

std::vector<double> Transformer::attended_keys() const {
  std::vector<double> out;
  for (const LayerActs& L : acts_->layers) {
    const bool reports = L.attn.kind == AttentionKind::topk || L.attn.kind == AttentionKind::threshold;
    out.push_back(reports ? L.attn.sparse.mean_keys : -1.0);
  }
  return out;
}

std::vector<MoeLayerStats> Transformer::moe_stats() const {
  std::vector<MoeLayerStats> out;
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const LayerParams& P = acts_->layer_params[size_t(l)];
    if (!P.router) continue;
    const LayerActs* L = size_t(l) < acts_->layers.size() ? &acts_->layers[size_t(l)] : nullptr;
    MoeLayerStats m;
    m.layer = l;
    if (L) m.stats = L->moe.stats, m.tokens = L->h2.dim(0);
    if (P.expert_bias) m.expert_bias.assign(P.expert_bias->value.f32(), P.expert_bias->value.f32() + P.expert_bias->value.numel());
    out.push_back(std::move(m));
  }
  return out;
}

void add_moe_stats(std::vector<MoeLayerStats>& sum, const std::vector<MoeLayerStats>& one) {
  if (sum.empty()) {
    sum = one;
    return;
  }
  LONGCTX_CHECK(sum.size() == one.size(), "add_moe_stats: ", one.size(), " layers added to ", sum.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    moe::Stats &a = sum[i].stats;
    const moe::Stats& b = one[i].stats;
    const double wa = double(sum[i].tokens), wb = double(one[i].tokens), w = std::max(1.0, wa + wb);
    auto mean = [&](double x, double y) { return (x * wa + y * wb) / w; };  // per-token quantities
    a.importance_loss = mean(a.importance_loss, b.importance_loss);
    a.load_balance_loss = mean(a.load_balance_loss, b.load_balance_loss);
    a.z_loss = mean(a.z_loss, b.z_loss);
    a.aux_loss = mean(a.aux_loss, b.aux_loss);
    a.router_entropy = mean(a.router_entropy, b.router_entropy);
    a.tokens_per_expert.resize(b.tokens_per_expert.size()), a.routed_per_expert.resize(b.routed_per_expert.size());
    for (size_t e = 0; e < b.tokens_per_expert.size(); ++e) a.tokens_per_expert[e] += b.tokens_per_expert[e];
    for (size_t e = 0; e < b.routed_per_expert.size(); ++e) a.routed_per_expert[e] += b.routed_per_expert[e];
    a.dropped_assignments += b.dropped_assignments;
    a.dropped_tokens += b.dropped_tokens;
    sum[i].tokens += one[i].tokens;
    sum[i].expert_bias = one[i].expert_bias;
  }
}

void Transformer::update_expert_biases(std::vector<MoeLayerStats>& step) {
  for (MoeLayerStats& m : step) {
    const LayerParams& P = acts_->layer_params.at(size_t(m.layer));
    if (!P.expert_bias) continue;
    moe::Weights w = moe_weights(P);
    moe::update_expert_bias(moe_config(cfg_, m.layer), w, m.stats);
    m.expert_bias.assign(w.expert_bias.f32(), w.expert_bias.f32() + w.expert_bias.numel());
  }
}

void Transformer::set_running_attention(int64_t layer, const AttentionSpec& spec) {
  LONGCTX_CHECK(layer >= 0 && layer < cfg_.n_layers, "set_running_attention: layer ", layer, " outside [0, ",
                cfg_.n_layers, ")");
  const AttentionSpec& own = cfg_.attention[size_t(layer)];
  LONGCTX_CHECK(spec.kind() == own.kind(), "set_running_attention: layer ", layer, " is ", own.name(), ", got ",
                spec.name());
  spec.validate(concat("set_running_attention: layer ", layer, ": "));
  running_[size_t(layer)] = spec;
}

AttentionSpec Transformer::running_spec(int64_t layer) const {
  const AttentionSpec& s = running_[size_t(layer)];
  return force_full_ && approximates_full(s.kind()) ? AttentionSpec{} : s;
}

AttentionKind Transformer::attention_kind(int64_t layer) const { return running_spec(layer).kind(); }

bool Transformer::layer_uses_moba(int64_t layer) const { return attention_kind(layer) == AttentionKind::moba; }

void Transformer::zero_grad() {
  for (Param& p : params_) p.grad.fill(0.0f);
}

namespace {

void check_batch(const ModelConfig& cfg, const Batch& b) {
  const int64_t T = b.size();
  LONGCTX_CHECK(T > 0, "batch: no tokens");
  LONGCTX_CHECK(b.targets.empty() || int64_t(b.targets.size()) == T, "batch: ", b.targets.size(), " targets for ", T,
                " tokens");
  LONGCTX_CHECK(b.weights.empty() || int64_t(b.weights.size()) == T, "batch: ", b.weights.size(), " weights for ", T,
                " tokens");
  LONGCTX_CHECK(b.cu_seqlens.size() >= 2 && b.cu_seqlens.front() == 0 && b.cu_seqlens.back() == T,
                "batch: cu_seqlens must run from 0 to the token count ", T);
  for (size_t i = 1; i < b.cu_seqlens.size(); ++i)
    LONGCTX_CHECK(b.cu_seqlens[i] > b.cu_seqlens[i - 1], "batch: cu_seqlens must be increasing at index ", i);
  for (int64_t t = 0; t < T; ++t) {
    LONGCTX_CHECK(b.tokens[size_t(t)] >= 0 && b.tokens[size_t(t)] < cfg.vocab_size, "batch: token ", b.tokens[size_t(t)],
                  " at ", t, " outside the vocabulary of ", cfg.vocab_size);
    if (!b.targets.empty())
      LONGCTX_CHECK(b.targets[size_t(t)] >= -1 && b.targets[size_t(t)] < cfg.vocab_size, "batch: target ",
                    b.targets[size_t(t)], " at ", t, " outside the vocabulary of ", cfg.vocab_size);
  }
}

std::vector<int64_t> positions_of(const Batch& b) {
  if (!b.positions.empty()) return b.positions;
  std::vector<int64_t> pos(size_t(b.size()));
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s)
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t) pos[size_t(t)] = t - b.cu_seqlens[s];
  return pos;
}

void add_into(Tensor& y, const Tensor& x) {
  float* yp = y.f32();
  const float* xp = x.f32();
  const int64_t n = y.numel(), chunk = 1 << 14;
#pragma omp parallel for schedule(static) if (parallel::worth_threads(n))
  for (int64_t c = 0; c < n; c += chunk) simd::add_inplace(yp + c, xp + c, std::min(chunk, n - c));
}

// Rows [begin, end) of a [T, ...] tensor, copied.
Tensor copy_rows(const Tensor& t, int64_t begin, int64_t end) {
  std::vector<int64_t> shape = t.shape();
  shape[0] = end - begin;
  Tensor out(shape, t.dtype());
  const size_t row = t.nbytes() / size_t(t.dim(0));
  std::memcpy(out.raw(), static_cast<const char*>(t.raw()) + size_t(begin) * row, size_t(end - begin) * row);
  return out;
}

// SpAtten cascade pruning (docs/DESIGN.md "Cascade token pruning"): once layer l of state `st` has
// attended, its attention mass adds to the cached tokens' importance and a cache over its budget
// evicts (in this layer and every later one).
void prune_after_attention(const AttentionSpec& spec, DecodeState& st, int64_t l, const attention_layer::Acts& acts) {
  if (!st.pruning || !st.layers[size_t(l)].cache) return;
  std::vector<KVCache*> caches;
  for (LayerDecodeState& ls : st.layers) caches.push_back(ls.cache ? &*ls.cache : nullptr);
  const float so = spec.visit([](const auto& o) { return o.softmax_scale; });
  st.pruning->after_attention(l, acts.q, acts.sparse.lse, so > 0 ? so : 1.0f / std::sqrt(float(acts.q.dim(2))), caches);
}

// Layer l's attention at inference: the rows [cu[s], cu[s+1]) of sequence s are appended to, and
// attend over, its own state states[s]. One sequence runs in place; several are cut apart and
// their outputs put back in order.
void decode_attention(const AttentionSpec& spec, const nn::Rope* rope, const std::vector<int64_t>& pos,
                      const std::vector<int64_t>& cu, const std::vector<DecodeState*>& states, int64_t l, Tensor q,
                      Tensor k, Tensor v, const Tensor& h1, attention_layer::Acts& acts) {
  if (states.size() == 1) {
    attention_layer::decode(spec, rope, pos, states[0]->layers[size_t(l)], std::move(q), std::move(k), std::move(v), h1,
                            acts);
    prune_after_attention(spec, *states[0], l, acts);
    return;
  }
  acts.kind = spec.kind();
  acts.out = Tensor({q.dim(0), q.dim(1), q.dim(2)});
  const int64_t row = q.dim(1) * q.dim(2);
  for (size_t s = 0; s < states.size(); ++s) {
    const int64_t b = cu[s], e = cu[s + 1];
    attention_layer::Acts one;
    attention_layer::decode(spec, rope, std::vector<int64_t>(pos.begin() + b, pos.begin() + e),
                            states[s]->layers[size_t(l)], copy_rows(q, b, e), copy_rows(k, b, e), copy_rows(v, b, e),
                            copy_rows(h1, b, e), one);
    prune_after_attention(spec, *states[s], l, one);
    std::copy_n(one.out.f32(), (e - b) * row, acts.out.f32() + b * row);
  }
}

}  // namespace

void Transformer::run(const Batch& batch, bool train, Tensor& logits_out, const std::vector<DecodeState*>& states) {
  check_batch(cfg_, batch);
  aux_loss_ = 0;
  Acts& A = *acts_;
  const int64_t T = batch.size(), D = cfg_.d_model, dh = cfg_.head_dim(), Hq = cfg_.n_heads, Hkv = cfg_.n_kv_heads;
  const int64_t F = cfg_.d_ff, V = cfg_.vocab_size;
  const float eps = float(cfg_.norm_eps);
  const gemm::Precision pr = matmul_precision(cfg_);
  std::vector<int64_t> pos = positions_of(batch);
  const Varlen varlen{batch.cu_seqlens, batch.cu_seqlens};

  Tensor x({T, D});
  const float* E = A.embed->value.f32();
  for (int64_t t = 0; t < T; ++t) std::copy_n(E + batch.tokens[size_t(t)] * D, D, x.f32() + t * D);

  std::vector<LayerActs> layers(size_t(cfg_.n_layers));
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const LayerParams& P = A.layer_params[size_t(l)];
    LayerActs& L = layers[size_t(l)];
    L.h1 = Tensor({T, D});
    L.rstd1.resize(size_t(T));
    nn::rmsnorm_forward(x.f32(), P.attn_norm->value.f32(), T, D, eps, L.h1.f32(), L.rstd1.data());
    Tensor q({T, Hq, dh}), k({T, Hkv, dh}), v({T, Hkv, dh});
    nn::linear_forward(L.h1.f32(), T, D, P.wq->value.f32(), Hq * dh, q.f32(), pr);
    nn::linear_forward(L.h1.f32(), T, D, P.wk->value.f32(), Hkv * dh, k.f32(), pr);
    nn::linear_forward(L.h1.f32(), T, D, P.wv->value.f32(), Hkv * dh, v.f32(), pr);
    const AttentionSpec spec = running_spec(l);
    const nn::Rope* rope = A.rope_of(cfg_, l);
    if (!states.empty())  // inference: attend over each sequence's decode state, which takes its tokens in
      decode_attention(spec, rope, pos, batch.cu_seqlens, states, l, std::move(q), std::move(k), std::move(v), L.h1,
                       L.attn);
    else
      attention_layer::forward(spec, cfg_, P.attention, rope, pos, varlen, std::move(q), std::move(k), std::move(v),
                               L.h1, L.attn);
    L.x_in = std::move(x);
    L.x_mid = Tensor({T, D});
    nn::linear_forward(L.attn.out.f32(), T, Hq * dh, P.wo->value.f32(), D, L.x_mid.f32(), pr);
    add_into(L.x_mid, L.x_in);  // residual
    L.h2 = Tensor({T, D});
    L.rstd2.resize(size_t(T));
    nn::rmsnorm_forward(L.x_mid.f32(), P.ffn_norm->value.f32(), T, D, eps, L.h2.f32(), L.rstd2.data());
    if (P.router) {
      L.moe = moe::forward(moe_config(cfg_, l), moe_weights(P), L.h2, {train, moe_noise_seed(noise_seed_, l)});
      aux_loss_ += L.moe.stats.aux_loss;
      x = L.moe.out.clone();  // the backward checks the saved output
    } else {
      L.a = Tensor({T, F});
      L.b = Tensor({T, F});
      x = Tensor({T, D});
      swiglu::Group ffn = dense_ffn(P, L, T, pr);
      ffn.y = x.f32();
      swiglu::forward({ffn}, D, F);
    }
    add_into(x, L.x_mid);
    if (!train) layers[size_t(l)] = LayerActs{};  // inference keeps nothing
  }
  Tensor h({T, D});
  std::vector<float> rstd(static_cast<size_t>(T));
  nn::rmsnorm_forward(x.f32(), A.norm->value.f32(), T, D, eps, h.f32(), rstd.data());
  logits_out = Tensor({T, V});
  gemm::gemm(pr, false, true, T, V, D, 1.0f, h.f32(), D, A.head->value.f32(), D, 0.0f, logits_out.f32(), V);
  if (train) {
    A.batch = batch;
    A.positions = std::move(pos);
    A.varlen = varlen;
    A.layers = std::move(layers);
    A.x_final = std::move(x);
    A.h_final = std::move(h);
    A.rstd_final = std::move(rstd);
  }
}

double Transformer::forward(const Batch& batch, bool train) {
  LONGCTX_CHECK(int64_t(batch.targets.size()) == batch.size(), "forward: batch needs one target per token");
  Tensor logits;
  acts_->ready = false;
  run(batch, train, logits);
  Tensor dlogits = train ? Tensor(logits.shape()) : Tensor();
  const nn::LossSum loss = nn::cross_entropy(logits.f32(), batch.size(), cfg_.vocab_size, batch.targets.data(),
                                             batch.weights.empty() ? nullptr : batch.weights.data(),
                                             train ? dlogits.f32() : nullptr);
  if (train) {
    acts_->dlogits = std::move(dlogits);
    acts_->ready = true;
  }
  return loss.weight > 0 ? loss.sum / loss.weight : 0.0;
}

Tensor Transformer::logits(const Batch& batch) {
  Tensor out;
  run(batch, false, out);
  return out;
}

std::vector<double> Transformer::token_losses(const Batch& batch) {
  LONGCTX_CHECK(int64_t(batch.targets.size()) == batch.size(), "token_losses: batch needs one target per token");
  const Tensor lg = logits(batch);
  return nn::cross_entropy(lg.f32(), batch.size(), cfg_.vocab_size, batch.targets.data(), nullptr, nullptr).rows;
}

double decode_state_bytes(const ModelConfig& cfg, int64_t capacity, const DecodeOptions& o) {
  if (o.pruning.enabled()) o.pruning.validate(cfg.n_layers);
  const double row = double(cfg.n_kv_heads * cfg.head_dim());
  double bytes = 0;
  for (size_t l = 0; l < cfg.attention.size(); ++l) {
    const AttentionSpec& s = cfg.attention[l];
    if (s.kind() == AttentionKind::infini) continue;
    const int64_t n = o.pruning.enabled()
                          ? std::min(capacity, o.pruning.budget_of(int64_t(l)) + o.pruning.step_chunk())
                          : capacity;
    bytes += double(n) * (2 * double(cfg.n_kv_heads) * kv_row_bytes(o.kv_dtype, cfg.head_dim()) + 8);
    if (s.stats_block_size() > 0) bytes += 3 * 4 * double(n / s.stats_block_size() + 1) * row;
    if (s.kind() == AttentionKind::moba && s.get<MobaOptions>().key_conv > 0)
      bytes += KeyConvStream::bytes(s.get<MobaOptions>().key_conv, int64_t(row), s.get<MobaOptions>().key_conv_bias);
  }
  return bytes;
}

DecodeState Transformer::new_decode_state(int64_t capacity, const DecodeOptions& o) const {
  LONGCTX_CHECK(capacity > 0 && capacity <= cfg_.max_seq_len, "decode: capacity must be in [1, max_seq_len = ",
                cfg_.max_seq_len, "], got ", capacity);
  DecodeState st;
  if (o.pruning.enabled()) {
    st.pruning.emplace(o.pruning, cfg_.n_layers);  // validates
    for (int64_t l = 0; l < cfg_.n_layers; ++l) {
      const AttentionSpec& s = cfg_.attention[size_t(l)];
      LONGCTX_CHECK(s.kind() == AttentionKind::full || s.kind() == AttentionKind::infini, "decode: cascade pruning (a "
                    "KV budget) runs over dense attention, but layer ", l, " is ", s.name(),
                    " (its cache cannot drop tokens)");
      // a window counts positions; a pruned cache's rows are no longer positions
      LONGCTX_CHECK(s.window() == 0, "decode: cascade pruning is not implemented for sliding-window layers (layer ",
                    l, " has window ", s.window(), ")");
    }
  }
  memory::require_fits(decode_state_bytes(cfg_, capacity, o),
                       concat("a decode state of ", capacity, " positions (KV caches)"));
  st.capacity = capacity;
  for (int64_t l = 0; l < cfg_.n_layers; ++l)
    st.layers.push_back(attention_layer::new_state(cfg_.attention[size_t(l)], cfg_,
                                                   acts_->layer_params[size_t(l)].attention,
                                                   st.pruning ? st.pruning->cache_capacity(l, capacity) : capacity,
                                                   o.kv_dtype));
  return st;
}

Tensor Transformer::extend(DecodeState& state, const std::vector<int32_t>& tokens) {
  return extend_batch({&state}, {tokens});
}

Tensor Transformer::extend_batch(const std::vector<DecodeState*>& states, const std::vector<std::vector<int32_t>>& tokens) {
  LONGCTX_CHECK(!states.empty() && states.size() == tokens.size(), "extend: ", states.size(), " decode states for ",
                tokens.size(), " token runs (one run per state, at least one)");
  DecodeState* const one = states.size() == 1 ? states[0] : nullptr;
  const int64_t len = int64_t(tokens[0].size()), step = one && one->pruning ? one->pruning->options().step_chunk() : len;
  if (len > step) {  // cascade pruning: steps of at most its chunk, so a cache holds budget + chunk
    Tensor out({len, cfg_.vocab_size});
    for (int64_t i = 0; i < len; i += step) {
      const Tensor part =
          extend(*one, std::vector<int32_t>(tokens[0].begin() + i, tokens[0].begin() + std::min(len, i + step)));
      std::copy_n(part.f32(), part.numel(), out.f32() + i * cfg_.vocab_size);
    }
    return out;
  }
  Batch b;
  b.cu_seqlens = {0};
  for (size_t s = 0; s < states.size(); ++s) {
    const DecodeState* st = states[s];
    LONGCTX_CHECK(st && int64_t(st->layers.size()) == cfg_.n_layers, "extend: decode state ", s, " has ",
                  st ? st->layers.size() : 0, " layers for ", cfg_.n_layers, " (make it with new_decode_state)");
    const size_t first = size_t(std::find(states.begin(), states.end(), st) - states.begin());
    LONGCTX_CHECK(first == s, "extend: decode states ", first, " and ", s, " are the same state");
    const int64_t n = int64_t(tokens[s].size());
    LONGCTX_CHECK(n > 0, "extend: no tokens for decode state ", s);
    LONGCTX_CHECK(st->tokens + n <= st->capacity, "extend: ", n, " more tokens would exceed the capacity of decode state ",
                  s, " (", st->tokens, " of ", st->capacity, " used)");
    LONGCTX_CHECK(!st->pruning || n <= st->pruning->options().step_chunk(), "extend: decode state ", s, " prunes its "
                  "cache in steps of ", st->pruning->options().step_chunk(), " tokens, but ", n, " came in one batched call "
                  "(extend it alone, or in runs of at most that many)");
    b.tokens.insert(b.tokens.end(), tokens[s].begin(), tokens[s].end());
    for (int64_t i = 0; i < n; ++i) b.positions.push_back(st->tokens + i);
    b.cu_seqlens.push_back(b.size());
  }
  Tensor out;
  run(b, false, out, states);
  for (size_t s = 0; s < states.size(); ++s) states[s]->tokens += int64_t(tokens[s].size());
  return out;
}

Tensor Transformer::prefill(DecodeState& state, const std::vector<int32_t>& tokens, int64_t chunk,
                            const std::function<void(int64_t, int64_t)>& progress) {
  LONGCTX_CHECK(!tokens.empty() && chunk >= 1, "prefill: needs tokens and chunk >= 1, got ", tokens.size(),
                " tokens, chunk ", chunk);
  const int64_t n = int64_t(tokens.size()), V = cfg_.vocab_size;
  Tensor logits;
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t end = std::min(n, i + chunk);
    logits = extend(state, std::vector<int32_t>(tokens.begin() + i, tokens.begin() + end));
    if (progress) progress(end, n);
  }
  Tensor last({1, V});
  std::copy(logits.f32() + (logits.dim(0) - 1) * V, logits.f32() + logits.dim(0) * V, last.f32());
  return last;
}

void Transformer::backward() {
  Acts& A = *acts_;
  LONGCTX_CHECK(A.ready, "backward: call forward(batch, /*train=*/true) first");
  A.ready = false;
  const int64_t T = A.batch.size(), D = cfg_.d_model, dh = cfg_.head_dim(), Hq = cfg_.n_heads, Hkv = cfg_.n_kv_heads;
  const int64_t F = cfg_.d_ff, V = cfg_.vocab_size;
  const gemm::Precision pr = matmul_precision(cfg_);
  const std::vector<int64_t>& pos = A.positions;

  // LM head: logits = h E^T
  Tensor dh_final({T, D}), dx({T, D});
  gemm::gemm(pr, false, false, T, D, V, 1.0f, A.dlogits.f32(), V, A.head->value.f32(), D, 0.0f, dh_final.f32(), D);
  gemm::gemm(pr, true, false, V, D, T, 1.0f, A.dlogits.f32(), V, A.h_final.f32(), D, 1.0f, A.head->grad.f32(), D);
  nn::rmsnorm_backward(A.x_final.f32(), A.norm->value.f32(), A.rstd_final.data(), dh_final.f32(), T, D, dx.f32(), false,
                       A.norm->grad.f32());

  Tensor dh2({T, D}), dw1({D, F}), dw3({D, F}), dw2({F, D});  // dense FFN weight gradients
  for (int64_t l = cfg_.n_layers - 1; l >= 0; --l) {
    const LayerParams& P = A.layer_params[size_t(l)];
    LayerActs& L = A.layers[size_t(l)];
    // FFN branch: x_out = x_mid + swiglu(rmsnorm(x_mid))
    if (P.router) {  // MoE: gradients of <out, dy> + aux_loss (router gets the aux-loss gradient too)
      moe::Grads mg = moe::backward(moe_config(cfg_, l), moe_weights(P), L.h2, L.moe, dx);
      dh2 = std::move(mg.dx);
      add_into(P.router->grad, mg.dw_gate);
      if (P.router_noise) add_into(P.router_noise->grad, mg.dw_noise);
      add_into(P.w1->grad, mg.dw1);
      add_into(P.w3->grad, mg.dw3);
      add_into(P.w2->grad, mg.dw2);
      if (P.shared_w1) {
        add_into(P.shared_w1->grad, mg.dshared_w1);
        add_into(P.shared_w3->grad, mg.dshared_w3);
        add_into(P.shared_w2->grad, mg.dshared_w2);
      }
    } else {
      swiglu::Group ffn = dense_ffn(P, L, T, pr);
      ffn.dy = dx.f32(), ffn.dx = dh2.f32();
      ffn.dw1 = dw1.f32(), ffn.dw3 = dw3.f32(), ffn.dw2 = dw2.f32();
      swiglu::backward({ffn}, D, F);  // overwrites: add the weight gradients into the accumulators
      add_into(P.w1->grad, dw1);
      add_into(P.w3->grad, dw3);
      add_into(P.w2->grad, dw2);
    }
    nn::rmsnorm_backward(L.x_mid.f32(), P.ffn_norm->value.f32(), L.rstd2.data(), dh2.f32(), T, D, dx.f32(), true,
                         P.ffn_norm->grad.f32());
    // Attention branch: x_mid = x_in + attention(rope(h1 Wq), rope(h1 Wk), h1 Wv) Wo (no rope in a NoPE layer)
    Tensor dout({T, Hq, dh});
    nn::linear_backward(L.attn.out.f32(), dx.f32(), T, Hq * dh, P.wo->value.f32(), D, dout.f32(), false,
                        P.wo->grad.f32(), pr);
    const nn::Rope* rope = A.rope_of(cfg_, l);
    attention_layer::Grads g = attention_layer::backward(cfg_, P.attention, rope, pos, A.varlen, L.attn, dout, L.h1);
    const bool gate_grad = !g.dh1.empty();  // nsa: its gate's input is h1 too
    Tensor dh1 = gate_grad ? std::move(g.dh1) : Tensor({T, D});
    nn::linear_backward(L.h1.f32(), g.dq.f32(), T, D, P.wq->value.f32(), Hq * dh, dh1.f32(), gate_grad,
                        P.wq->grad.f32(), pr);
    nn::linear_backward(L.h1.f32(), g.dk.f32(), T, D, P.wk->value.f32(), Hkv * dh, dh1.f32(), true, P.wk->grad.f32(),
                        pr);
    nn::linear_backward(L.h1.f32(), g.dv.f32(), T, D, P.wv->value.f32(), Hkv * dh, dh1.f32(), true, P.wv->grad.f32(),
                        pr);
    nn::rmsnorm_backward(L.x_in.f32(), P.attn_norm->value.f32(), L.rstd1.data(), dh1.f32(), T, D, dx.f32(), true,
                         P.attn_norm->grad.f32());
    L = LayerActs{};  // free as we go
  }
  float* dE = A.embed->grad.f32();
  for (int64_t t = 0; t < T; ++t) simd::add_inplace(dE + A.batch.tokens[size_t(t)] * D, dx.f32() + t * D, D);
  A.layers.clear();
}

}  // namespace longctx
