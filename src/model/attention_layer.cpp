#include "model/attention_layer.hpp"

#include <longctx/attention/cache/decode.hpp>
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/sparse/threshold.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>

namespace longctx::attention_layer {

NsaConfig nsa_config(const AttentionSpec& s) {
  NsaConfig c;
  c.block_len = s.block_len;
  c.stride = s.stride;
  c.select_len = s.select_len;
  c.top_n = s.top_n;
  c.local_blocks = s.local_blocks;
  c.window = s.window;
  c.compress = nsa_compress_from_name(s.compress);
  return c;
}

InfiniOptions infini_options(const AttentionSpec& s) {
  InfiniOptions o;
  o.segment_len = s.segment_len;
  o.update = s.update == "delta" ? InfiniUpdate::delta : InfiniUpdate::linear;
  return o;
}

namespace {

ThresholdOptions threshold_options(const AttentionSpec& s) {
  return {s.block_size, float(s.tau), s.stop_rule == "heuristic" ? StopRule::heuristic : StopRule::bound, 0.0f};
}

// Visits NSA's weights next to their Params (kind_params order).
template <class F>
void for_each_nsa_param(NsaWeights<float>& w, const AttentionSpec& s, const ModelConfig& cfg,
                        const std::vector<Param*>& kp, F&& f) {
  size_t i = 0;
  for_each_nsa_weight(w, s, cfg.n_heads, cfg.head_dim(), cfg.d_model,
                      [&](const std::string&, std::vector<float>& x, const std::vector<int64_t>&) { f(x, *kp.at(i++)); });
}

}  // namespace

std::vector<Param> kind_params(const ModelConfig& cfg, int64_t layer, uint64_t seed) {
  const AttentionSpec& s = cfg.attention[size_t(layer)];
  const std::string prefix = "layers." + std::to_string(layer) + ".attention." + s.kind + ".";
  std::vector<Param> out;
  auto add = [&](const std::string& name, const std::vector<float>& init, const std::vector<int64_t>& shape) {
    Param p{prefix + name, Tensor(shape), Tensor(shape), shape.size() >= 2};
    LONGCTX_CHECK(int64_t(init.size()) == p.value.numel(), "kind_params: ", p.name, " init has ", init.size(),
                  " values for shape ", shape_str(shape));
    std::copy(init.begin(), init.end(), p.value.f32());
    out.push_back(std::move(p));
  };
  if (s.kind == "nsa") {
    NsaWeights<float> w = nsa_init_weights(nsa_config(s), int(cfg.n_heads), int(cfg.head_dim()), int(cfg.d_model),
                                           int(s.hidden), seed);
    for_each_nsa_weight(w, s, cfg.n_heads, cfg.head_dim(), cfg.d_model, add);
  } else if (s.kind == "infini") {
    add("beta", std::vector<float>(size_t(cfg.n_heads), 0.0f), {cfg.n_heads});
  }
  return out;
}

NsaWeights<float> nsa_weights(const AttentionSpec& s, const ModelConfig& cfg, const std::vector<Param*>& kp) {
  NsaWeights<float> w;
  for_each_nsa_param(w, s, cfg, kp,
                     [](std::vector<float>& x, const Param& p) { x.assign(p.value.f32(), p.value.f32() + p.value.numel()); });
  return w;
}

std::vector<float> infini_beta(const std::vector<Param*>& kp) {
  const Tensor& b = kp.at(0)->value;
  return {b.f32(), b.f32() + b.numel()};
}

void forward(const std::string& kind, const AttentionSpec& s, const ModelConfig& cfg, const std::vector<Param*>& kp,
             const nn::Rope& rope, const std::vector<int64_t>& pos, const Varlen& varlen, Tensor q, Tensor k, Tensor v,
             const Tensor& h1, Acts& a) {
  const int64_t T = q.dim(0);
  if (kind == "infini") a.q_mem = q.clone(), a.k_mem = k.clone();  // the memory uses q/k before RoPE
  rope.apply(q.f32(), T, q.dim(1), pos.data(), false);
  rope.apply(k.f32(), T, k.dim(1), pos.data(), false);
  a.kind = kind;
  a.q = std::move(q), a.k = std::move(k), a.v = std::move(v);
  if (kind == "moba") {
    a.dense = moba_attention_forward(a.q, a.k, a.v, varlen, {s.block_size, s.top_k, 0.0f});
    a.out = a.dense.out.alias();
  } else if (kind == "topk" || kind == "threshold") {
    a.sparse = kind == "topk" ? topk_attention_forward(a.q, a.k, a.v, varlen, {s.block_size, s.top_k, false, 0.0f})
                              : threshold_attention_forward(a.q, a.k, a.v, varlen, threshold_options(s));
    a.out = a.sparse.out.alias();
  } else if (kind == "nsa") {
    a.nsa_w = nsa_weights(s, cfg, kp);
    a.nsa = nsa_forward(a.q, a.k, a.v, h1, a.nsa_w, nsa_config(s), varlen);
    a.out = a.nsa.out.alias();
  } else if (kind == "infini") {
    a.infini = infini_forward({a.q_mem, a.k_mem, a.v, &a.q, &a.k}, infini_beta(kp), varlen.cu_q, infini_options(s));
    a.out = a.infini.out.alias();
  } else {
    LONGCTX_CHECK(kind == "full", "attention layer: unknown kind '", kind, "'");
    static_cast<AttentionResult&>(a.dense) = flash_attention_forward(a.q, a.k, a.v, varlen);
    a.out = a.dense.out.alias();
  }
}

Grads backward(const AttentionSpec& s, const ModelConfig& cfg, const std::vector<Param*>& kp, const nn::Rope& rope,
               const std::vector<int64_t>& pos, const Varlen& varlen, const Acts& a, const Tensor& dout,
               const Tensor& h1) {
  Grads g;
  AttentionGrads ag;
  Tensor dq_mem, dk_mem;  // infini: gradients of the pre-RoPE q/k, added after un-rotating the rest
  if (a.kind == "moba") {
    ag = moba_attention_backward(a.q, a.k, a.v, a.dense, dout, varlen, {s.block_size, s.top_k, 0.0f});
  } else if (a.kind == "topk" || a.kind == "threshold") {
    ag = sparse_attention_backward(a.q, a.k, a.v, a.sparse, dout, varlen);
  } else if (a.kind == "nsa") {
    NsaGrads ng = nsa_backward(a.q, a.k, a.v, h1, a.nsa_w, nsa_config(s), a.nsa, dout, varlen);
    ag = {std::move(ng.dq), std::move(ng.dk), std::move(ng.dv)};
    g.dh1 = std::move(ng.dx);
    for_each_nsa_param(ng.dw, s, cfg, kp, [](std::vector<float>& d, Param& p) {
      float* pg = p.grad.f32();
      for (size_t i = 0; i < d.size(); ++i) pg[i] += d[i];
    });
  } else if (a.kind == "infini") {
    InfiniGrads ig = infini_backward({a.q_mem, a.k_mem, a.v, &a.q, &a.k}, infini_beta(kp), a.infini, dout,
                                     varlen.cu_q, infini_options(s));
    ag = {std::move(ig.dq_local), std::move(ig.dk_local), std::move(ig.dv)};
    dq_mem = std::move(ig.dq), dk_mem = std::move(ig.dk);
    float* db = kp.at(0)->grad.f32();
    for (size_t h = 0; h < ig.dbeta.size(); ++h) db[h] += ig.dbeta[h];
  } else {
    ag = flash_attention_backward(a.q, a.k, a.v, a.dense, dout, varlen);
  }
  const int64_t T = a.q.dim(0);
  rope.apply(ag.dq.f32(), T, a.q.dim(1), pos.data(), true);  // back through RoPE: rotate by -angle
  rope.apply(ag.dk.f32(), T, a.k.dim(1), pos.data(), true);
  if (a.kind == "infini")
    for (auto [d, m] : {std::pair{&ag.dq, &dq_mem}, std::pair{&ag.dk, &dk_mem}})
      for (int64_t i = 0; i < d->numel(); ++i) d->f32()[i] += m->f32()[i];
  g.dq = std::move(ag.dq), g.dk = std::move(ag.dk), g.dv = std::move(ag.dv);
  return g;
}

LayerDecodeState new_state(const AttentionSpec& s, const ModelConfig& cfg, const std::vector<Param*>& kp,
                           int64_t capacity, DType cache_dtype) {
  LayerDecodeState st;
  if (s.kind == "infini") {  // constant memory: no KV cache
    st.infini.emplace(int(cfg.n_heads), int(cfg.n_kv_heads), int(cfg.head_dim()), infini_beta(kp), infini_options(s));
    return st;
  }
  KVCacheOptions o;
  o.capacity = capacity;
  o.kv_heads = int(cfg.n_kv_heads);
  o.head_dim = int(cfg.head_dim());
  o.block_size = s.kind == "moba" || s.kind == "topk" || s.kind == "threshold" ? s.block_size : 64;
  o.dtype = cache_dtype;
  st.cache.emplace(o);
  if (s.kind == "nsa") {
    st.nsa.emplace();
    st.nsa_weights = nsa_weights(s, cfg, kp);
  }
  return st;
}

void decode(const std::string& kind, const AttentionSpec& s, const nn::Rope& rope, const std::vector<int64_t>& pos,
            LayerDecodeState& st, Tensor q, Tensor k, Tensor v, const Tensor& h1, Acts& a) {
  const int64_t n = q.dim(0);
  if (kind == "infini") a.q_mem = q.clone(), a.k_mem = k.clone();
  rope.apply(q.f32(), n, q.dim(1), pos.data(), false);
  rope.apply(k.f32(), n, k.dim(1), pos.data(), false);
  a.kind = kind;
  if (kind == "infini") {
    a.out = st.infini->feed({a.q_mem, a.k_mem, v, &q, &k});
    return;
  }
  KVCache& cache = *st.cache;
  cache.append(k, v);
  if (kind == "nsa") {
    const Tensor keys = cache.keys().alias_rows(cache.size()), values = cache.values().alias_rows(cache.size());
    const NsaConfig cfg = nsa_config(s);
    if (n == 1) {
      a.out = nsa_decode_step(q, keys, values, h1, st.nsa_weights, cfg, *st.nsa);
    } else {  // prefill: the new tokens are the sequence's last (bottom-right aligned)
      a.out = std::move(nsa_forward(q, keys, values, h1, st.nsa_weights, cfg,
                                    Varlen::from_lengths({n}, {cache.size()})).out);
      st.nsa->update(keys, values, st.nsa_weights, cfg);
    }
    return;
  }
  CacheAttentionOptions co;
  co.method = kind == "moba"        ? CacheMethod::moba
              : kind == "topk"      ? CacheMethod::topk
              : kind == "threshold" ? CacheMethod::threshold
                                    : CacheMethod::dense;
  co.top_k = s.top_k;
  co.tau = float(s.tau);
  co.stop_rule = threshold_options(s).stop_rule;
  a.sparse = attention_over_cache(q, cache, co);
  a.out = std::move(a.sparse.out);
}

}  // namespace longctx::attention_layer
