#include "model/attention_layer.hpp"

#include <longctx/attention/cache/decode.hpp>
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/moba/key_conv.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>

#include "core/simd.hpp"

namespace longctx::attention_layer {

namespace {

// Visits NSA's weights next to their Params (kind_params order).
template <class F>
void for_each_nsa_param(NsaWeights<float>& w, const NsaConfig& c, const ModelConfig& cfg,
                        const std::vector<Param*>& kp, F&& f) {
  size_t i = 0;
  for_each_nsa_weight(w, c, cfg.n_heads, cfg.head_dim(), cfg.d_model,
                      [&](const std::string&, std::vector<float>& x, const std::vector<int64_t>&) { f(x, *kp.at(i++)); });
}

// Rows [T, heads, d] of x rotated by RoPE at positions pos (inverse: by -angle); none without it.
void rotate(const nn::Rope* rope, Tensor& x, const std::vector<int64_t>& pos, bool inverse) {
  if (rope) rope->apply(x.f32(), x.dim(0), x.dim(1), pos.data(), inverse);
}

}  // namespace

std::vector<Param> kind_params(const ModelConfig& cfg, int64_t layer, uint64_t seed) {
  const AttentionSpec& s = cfg.attention[size_t(layer)];
  const std::string prefix = "layers." + std::to_string(layer) + ".attention." + s.name() + ".";
  std::vector<Param> out;
  auto add = [&](const std::string& name, const std::vector<float>& init, const std::vector<int64_t>& shape) {
    Param p{prefix + name, Tensor(shape), Tensor(shape), shape.size() >= 2};
    LONGCTX_CHECK(int64_t(init.size()) == p.value.numel(), "kind_params: ", p.name, " init has ", init.size(),
                  " values for shape ", shape_str(shape));
    std::copy(init.begin(), init.end(), p.value.f32());
    out.push_back(std::move(p));
  };
  switch (s.kind()) {
    case AttentionKind::nsa: {
      const NsaConfig& c = s.get<NsaConfig>();
      NsaWeights<float> w =
          nsa_init_weights(c, int(cfg.n_heads), int(cfg.head_dim()), int(cfg.d_model), int(c.hidden), seed);
      for_each_nsa_weight(w, c, cfg.n_heads, cfg.head_dim(), cfg.d_model, add);
      break;
    }
    case AttentionKind::infini:
      add("beta", std::vector<float>(size_t(cfg.n_heads), s.get<InfiniOptions>().beta_init), {cfg.n_heads});
      break;
    case AttentionKind::moba: {
      const MobaOptions& o = s.get<MobaOptions>();
      if (o.key_conv == 0) break;
      // identity at init (docs/DESIGN.md "MoBA key convolution"): the layer starts as plain MoBA
      const int64_t C = cfg.n_kv_heads * cfg.head_dim();
      std::vector<float> taps(size_t(o.key_conv * C), 0.0f);
      std::fill(taps.end() - C, taps.end(), 1.0f);
      add("key_conv.weight", taps, {o.key_conv, C});
      out.back().decay = false;  // a gain per channel, like the norms': decay would shrink the keys
      if (o.key_conv_bias) add("key_conv.bias", std::vector<float>(size_t(C), 0.0f), {C});
      break;
    }
    case AttentionKind::full:
    case AttentionKind::topk:
    case AttentionKind::threshold: break;
  }
  return out;
}

int64_t kind_param_count(const ModelConfig& cfg, int64_t layer) {
  const AttentionSpec& s = cfg.attention[size_t(layer)];
  int64_t n = 0;
  if (s.kind() == AttentionKind::nsa) {
    NsaWeights<float> shapes_only;  // the visitor is only asked for the shapes
    for_each_nsa_weight(shapes_only, s.get<NsaConfig>(), cfg.n_heads, cfg.head_dim(), cfg.d_model,
                        [&](const std::string&, std::vector<float>&, const std::vector<int64_t>& shape) {
                          int64_t e = 1;
                          for (int64_t d : shape) e *= d;
                          n += e;
                        });
  } else if (s.kind() == AttentionKind::infini) {
    n = cfg.n_heads;  // beta
  } else if (s.kind() == AttentionKind::moba) {
    const MobaOptions& o = s.get<MobaOptions>();
    n = (o.key_conv + (o.key_conv > 0 && o.key_conv_bias ? 1 : 0)) * cfg.n_kv_heads * cfg.head_dim();
  }
  return n;
}

NsaWeights<float> nsa_weights(const NsaConfig& c, const ModelConfig& cfg, const std::vector<Param*>& kp) {
  NsaWeights<float> w;
  for_each_nsa_param(w, c, cfg, kp,
                     [](std::vector<float>& x, const Param& p) { x.assign(p.value.f32(), p.value.f32() + p.value.numel()); });
  return w;
}

std::vector<float> infini_beta(const std::vector<Param*>& kp) {
  const Tensor& b = kp.at(0)->value;
  return {b.f32(), b.f32() + b.numel()};
}

bool has_key_conv(AttentionKind running, const std::vector<Param*>& kp) {
  return (running == AttentionKind::moba || running == AttentionKind::full) && !kp.empty();
}

Tensor key_conv_bias(const std::vector<Param*>& kp) { return kp.size() > 1 ? kp[1]->value.alias() : Tensor(); }

void forward(const AttentionSpec& s, const ModelConfig& cfg, const std::vector<Param*>& kp, const nn::Rope* rope,
             const std::vector<int64_t>& pos, const Varlen& varlen, Tensor q, Tensor k, Tensor v, const Tensor& h1,
             Acts& a) {
  a.kind = s.kind();
  if (a.kind == AttentionKind::infini) a.q_mem = q.clone(), a.k_mem = k.clone();  // the memory uses q/k before RoPE
  if (has_key_conv(a.kind, kp)) {
    a.k_conv_in = std::move(k);
    k = key_conv_forward(a.k_conv_in, kp[0]->value, key_conv_bias(kp), varlen.cu_k);
  }
  rotate(rope, q, pos, false);
  rotate(rope, k, pos, false);
  a.q = std::move(q), a.k = std::move(k), a.v = std::move(v);
  if (cfg.matmul_precision == DType::bf16 && a.kind != AttentionKind::infini) {
    // mixed precision: bf16 q, k, v make the kernels run their tile products on bf16 inputs
    // (attention/engine/varlen.hpp Problem::products); gradients come back in fp32
    a.q = a.q.to(DType::bf16), a.k = a.k.to(DType::bf16), a.v = a.v.to(DType::bf16);
  }
  switch (a.kind) {
    case AttentionKind::full:
      static_cast<AttentionResult&>(a.dense) = flash_attention_forward(a.q, a.k, a.v, varlen, s.get<AttentionOptions>());
      a.out = a.dense.out.alias();
      break;
    case AttentionKind::moba:
      a.dense = moba_attention_forward(a.q, a.k, a.v, varlen, s.get<MobaOptions>());
      a.out = a.dense.out.alias();
      break;
    case AttentionKind::topk:
      a.sparse = topk_attention_forward(a.q, a.k, a.v, varlen, s.get<TopkOptions>());
      a.out = a.sparse.out.alias();
      break;
    case AttentionKind::threshold:
      a.sparse = threshold_attention_forward(a.q, a.k, a.v, varlen, s.get<ThresholdOptions>());
      a.out = a.sparse.out.alias();
      break;
    case AttentionKind::nsa:
      a.nsa_w = nsa_weights(s.get<NsaConfig>(), cfg, kp);
      a.nsa = nsa_forward(a.q, a.k, a.v, h1, a.nsa_w, s.get<NsaConfig>(), varlen);
      a.out = a.nsa.out.alias();
      break;
    case AttentionKind::infini:
      a.infini = infini_forward({a.q_mem, a.k_mem, a.v, &a.q, &a.k}, infini_beta(kp), varlen.cu_q,
                                s.get<InfiniOptions>());
      a.out = a.infini.out.alias();
      break;
  }
}

Grads backward(const ModelConfig& cfg, const std::vector<Param*>& kp, const nn::Rope* rope,
               const std::vector<int64_t>& pos, const Varlen& varlen, const Acts& a, const Tensor& dout,
               const Tensor& h1) {
  Grads g;
  AttentionGrads ag;
  Tensor dq_mem, dk_mem;  // infini: gradients of the pre-RoPE q/k, added after un-rotating the rest
  switch (a.kind) {
    case AttentionKind::full: ag = flash_attention_backward(a.q, a.k, a.v, a.dense, dout, varlen); break;
    case AttentionKind::moba: ag = moba_attention_backward(a.q, a.k, a.v, a.dense, dout, varlen); break;
    case AttentionKind::topk:
    case AttentionKind::threshold: ag = sparse_attention_backward(a.q, a.k, a.v, a.sparse, dout, varlen); break;
    case AttentionKind::nsa: {
      NsaGrads ng = nsa_backward(a.q, a.k, a.v, h1, a.nsa_w, a.nsa, dout, varlen);
      ag = {std::move(ng.dq), std::move(ng.dk), std::move(ng.dv)};
      g.dh1 = std::move(ng.dx);
      for_each_nsa_param(ng.dw, a.nsa.cfg, cfg, kp, [](std::vector<float>& d, Param& p) {
        float* pg = p.grad.f32();
        for (size_t i = 0; i < d.size(); ++i) pg[i] += d[i];
      });
      break;
    }
    case AttentionKind::infini: {
      InfiniGrads ig = infini_backward({a.q_mem, a.k_mem, a.v, &a.q, &a.k}, infini_beta(kp), a.infini, dout,
                                       varlen.cu_q);
      ag = {std::move(ig.dq_local), std::move(ig.dk_local), std::move(ig.dv)};
      dq_mem = std::move(ig.dq), dk_mem = std::move(ig.dk);
      float* db = kp.at(0)->grad.f32();
      for (size_t h = 0; h < ig.dbeta.size(); ++h) db[h] += ig.dbeta[h];
      break;
    }
  }
  rotate(rope, ag.dq, pos, true);  // back through RoPE: rotate by -angle
  rotate(rope, ag.dk, pos, true);
  if (a.kind == AttentionKind::infini)
    for (auto [d, m] : {std::pair{&ag.dq, &dq_mem}, std::pair{&ag.dk, &dk_mem}})
      for (int64_t i = 0; i < d->numel(); ++i) d->f32()[i] += m->f32()[i];
  if (!a.k_conv_in.empty()) {  // back through the key convolution
    KeyConvGrads cg = key_conv_backward(a.k_conv_in, kp[0]->value, kp.size() > 1, ag.dk, varlen.cu_k);
    ag.dk = std::move(cg.dx);
    simd::add_inplace(kp[0]->grad.f32(), cg.dw.f32(), cg.dw.numel());
    if (kp.size() > 1) simd::add_inplace(kp[1]->grad.f32(), cg.db.f32(), cg.db.numel());
  }
  g.dq = std::move(ag.dq), g.dk = std::move(ag.dk), g.dv = std::move(ag.dv);
  return g;
}

LayerDecodeState new_state(const AttentionSpec& s, const ModelConfig& cfg, const std::vector<Param*>& kp,
                           int64_t capacity, KVDType cache_dtype) {
  LayerDecodeState st;
  if (s.kind() == AttentionKind::infini) {  // constant memory: no KV cache
    st.infini.emplace(int(cfg.n_heads), int(cfg.n_kv_heads), int(cfg.head_dim()), infini_beta(kp),
                      s.get<InfiniOptions>());
    return st;
  }
  // NSA's branches (nsa_forward, nsa_decode_step) read the cache as fp32 / bf16 tensors.
  LONGCTX_CHECK(s.kind() != AttentionKind::nsa || cache_dtype != KVDType::int8,
                "decode: an int8 KV cache is not implemented for nsa layers (its kernels read fp32 or bf16 K/V); "
                "use bf16 or f32");
  KVCacheOptions o;
  o.capacity = capacity;
  o.kv_heads = int(cfg.n_kv_heads);
  o.head_dim = int(cfg.head_dim());
  o.block_stats = s.stats_block_size() > 0;
  if (o.block_stats) o.block_size = s.stats_block_size();
  o.dtype = cache_dtype;
  st.cache.emplace(o);
  if (has_key_conv(s.kind(), kp)) st.key_conv.emplace(kp[0]->value, key_conv_bias(kp));
  if (s.kind() == AttentionKind::nsa) {
    st.nsa.emplace();
    st.nsa_weights = nsa_weights(s.get<NsaConfig>(), cfg, kp);
  }
  return st;
}

void decode(const AttentionSpec& s, const nn::Rope* rope, const std::vector<int64_t>& pos, LayerDecodeState& st,
            Tensor q, Tensor k, Tensor v, const Tensor& h1, Acts& a) {
  const int64_t n = q.dim(0);
  a.kind = s.kind();
  if (a.kind == AttentionKind::infini) a.q_mem = q.clone(), a.k_mem = k.clone();
  if (st.key_conv) k = st.key_conv->feed(k);
  rotate(rope, q, pos, false);
  rotate(rope, k, pos, false);
  if (a.kind == AttentionKind::infini) {
    a.out = st.infini->feed({a.q_mem, a.k_mem, v, &q, &k});
    return;
  }
  KVCache& cache = *st.cache;
  cache.append(k, v);
  if (a.kind == AttentionKind::nsa) {
    const Tensor keys = cache.keys().alias_rows(cache.size()), values = cache.values().alias_rows(cache.size());
    const NsaConfig& c = s.get<NsaConfig>();
    if (n == 1) {
      a.out = nsa_decode_step(q, keys, values, h1, st.nsa_weights, c, *st.nsa);
    } else {  // prefill: the new tokens are the sequence's last (bottom-right aligned)
      a.out = std::move(nsa_forward(q, keys, values, h1, st.nsa_weights, c, Varlen::from_lengths({n}, {cache.size()})).out);
      st.nsa->update(keys, values, st.nsa_weights, c);
    }
    return;
  }
  a.sparse = attention_over_cache(q, cache, s);
  a.out = std::move(a.sparse.out);
  a.q = std::move(q);  // with a.sparse.lse: what cascade pruning weighs the cached tokens by
}

}  // namespace longctx::attention_layer
