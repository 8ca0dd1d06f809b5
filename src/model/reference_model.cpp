#include <longctx/attention/infini/reference.hpp>
#include <longctx/attention/nsa/reference.hpp>
#include <longctx/attention/engine/reference.hpp>
#include <longctx/attention/sparse/reference.hpp>
#include <longctx/model/reference_model.hpp>
#include <longctx/moe/reference.hpp>
#include <longctx/attention/moba/reference.hpp>

#include <cmath>

#include "model/attention_layer.hpp"
#include "moe/router.hpp"

namespace longctx::reference {

namespace {

using Vec = std::vector<double>;

// y[T, out] = x[T, in] W[in, out]
Vec matmul(const Vec& x, int64_t T, int64_t in, const Vec& w, int64_t out) {
  Vec y(size_t(T * out), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t o = 0; o < out; ++o) y[size_t(t * out + o)] += x[size_t(t * in + i)] * w[size_t(i * out + o)];
  return y;
}

Vec rmsnorm(const Vec& x, int64_t T, int64_t D, const Vec& w, double eps) {
  Vec y(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += x[size_t(t * D + i)] * x[size_t(t * D + i)];
    const double r = 1.0 / std::sqrt(ss / double(D) + eps);
    for (int64_t i = 0; i < D; ++i) y[size_t(t * D + i)] = x[size_t(t * D + i)] * r * w[size_t(i)];
  }
  return y;
}

void rope(Vec& x, int64_t T, int64_t H, int64_t dh, const std::vector<int64_t>& pos, double theta) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < dh / 2; ++i) {
        const double ang = double(pos[size_t(t)]) * std::pow(theta, -2.0 * double(i) / double(dh));
        double& a = x[size_t((t * H + h) * dh + i)];
        double& b = x[size_t((t * H + h) * dh + i + dh / 2)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(ang) - b0 * std::sin(ang);
        b = b0 * std::cos(ang) + a0 * std::sin(ang);
      }
}

}  // namespace

double model_loss(const ModelConfig& cfg, const std::vector<std::vector<double>>& params, const Batch& batch,
                  bool force_full, SelectionTape* tape) {
  const int64_t T = batch.size(), D = cfg.d_model, dh = cfg.head_dim(), Hq = cfg.n_heads, Hkv = cfg.n_kv_heads;
  const int64_t F = cfg.d_ff, V = cfg.vocab_size;
  std::vector<int64_t> pos = batch.positions;
  if (pos.empty())
    for (size_t s = 0; s + 1 < batch.cu_seqlens.size(); ++s)
      for (int64_t t = batch.cu_seqlens[s]; t < batch.cu_seqlens[s + 1]; ++t) pos.push_back(t - batch.cu_seqlens[s]);
  const Varlen varlen{batch.cu_seqlens, batch.cu_seqlens};
  size_t next = 0;
  auto take = [&]() -> const Vec& { return params[next++]; };

  const Vec& E = take();
  Vec x(size_t(T * D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D; ++i) x[size_t(t * D + i)] = E[size_t(batch.tokens[size_t(t)] * D + i)];
  const Shape shape{T, T, int(Hq), int(Hkv), int(dh)};
  double aux = 0;  // MoE balancing losses
  const bool replay = tape && tape->recorded;
  if (tape && !replay) tape->masks.assign(size_t(cfg.n_layers), {}), tape->nsa.assign(size_t(cfg.n_layers), {});
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    const Vec &attn_norm = take(), &wq = take(), &wk = take(), &wv = take(), &wo = take();
    const AttentionSpec& spec = cfg.attention[size_t(l)];
    NsaWeights<double> nsa_w;  // nsa: the layer's weights, in Param order
    if (spec.kind() == AttentionKind::nsa)
      attention_layer::for_each_nsa_weight(nsa_w, spec.get<NsaConfig>(), Hq, dh, D,
                                           [&](const std::string&, Vec& w, const auto&) { w = take(); });
    const Vec* beta = spec.kind() == AttentionKind::infini ? &take() : nullptr;
    // moba: the key convolution's taps and bias (kind params), applied before RoPE even when the
    // layer runs as full attention
    const MobaOptions* moba = spec.kind() == AttentionKind::moba ? &spec.get<MobaOptions>() : nullptr;
    const Vec* conv_w = moba && moba->key_conv > 0 ? &take() : nullptr;
    const Vec* conv_b = conv_w && moba->key_conv_bias ? &take() : nullptr;
    const Vec& ffn_norm = take();
    const bool moe_layer = cfg.ffn[size_t(l)].kind == "moe";
    moe::reference::Params<double> mp;
    const moe::Config mc = moe_layer ? moe_config(cfg, l) : moe::Config{};
    if (moe_layer) {
      mp.w_gate = take();
      if (mc.router == moe::Router::noisy) mp.w_noise = take();
      mp.expert_bias = mc.router == moe::Router::bias_free ? take() : Vec(size_t(mc.num_experts), 0.0);
    }
    const Vec &w1 = take(), &w3 = take(), &w2 = take();
    const Vec h = rmsnorm(x, T, D, attn_norm, cfg.norm_eps);
    Vec q = matmul(h, T, D, wq, Hq * dh), k = matmul(h, T, D, wk, Hkv * dh);
    const Vec v = matmul(h, T, D, wv, Hkv * dh);
    const Vec q_mem = q, k_mem = k;  // infini's memory uses q/k before RoPE
    if (conv_w) k = key_conv_forward<double>(k, Hkv * dh, *conv_w, conv_b ? *conv_b : Vec{}, batch.cu_seqlens);
    if (cfg.has_rope(l)) {
      rope(q, T, Hq, dh, pos, cfg.rope_theta);
      rope(k, T, Hkv, dh, pos, cfg.rope_theta);
    }
    const AttentionKind kind = force_full && approximates_full(spec.kind()) ? AttentionKind::full : spec.kind();
    const double scale = 1.0 / std::sqrt(double(dh));
    Vec att, lse;
    if (kind == AttentionKind::nsa) {
      const std::vector<int32_t>* fixed = replay ? &tape->nsa[size_t(l)] : nullptr;
      auto f = nsa_forward<double>(shape, q, k, v, h, int(D), nsa_w, spec.get<NsaConfig>(), varlen, fixed);
      if (tape && !replay) tape->nsa[size_t(l)] = f.selected;
      att = std::move(f.out);
    } else if (kind == AttentionKind::infini) {
      const InfiniOptions& o = spec.get<InfiniOptions>();
      infini_forward<double>({T, int(Hq), int(Hkv), int(dh)}, {q_mem, k_mem, v, q, k}, *beta,
                             {batch.cu_seqlens, o.segment_len, o.update, scale}, att);
    } else {
      Mask mask;
      if (replay) {
        mask = tape->masks[size_t(l)];
      } else {
        AttentionOptions dense;
        dense.window = spec.window();
        mask = dense_mask(shape, varlen, dense);
        if (kind == AttentionKind::moba) {
          const MobaOptions& o = spec.get<MobaOptions>();
          mask = moba_mask<double>(shape, q, k, varlen, o.block_size, o.top_k, nullptr, o.group_select);
        } else if (kind == AttentionKind::topk) {
          const TopkOptions& o = spec.get<TopkOptions>();
          mask = topk_mask<double>(shape, q, k, varlen, o.block_size, o.top_k, o.token_level, o.group_select);
        } else if (kind == AttentionKind::threshold) {
          const ThresholdOptions& o = spec.get<ThresholdOptions>();
          mask = threshold_mask<double>(shape, q, k, varlen, o.block_size, scale, o.tau,
                                        o.stop_rule == StopRule::heuristic);
        }
        if (tape) tape->masks[size_t(l)] = mask;
      }
      attention_forward<double>(shape, q, k, v, scale, mask, att, lse);
    }
    const Vec o = matmul(att, T, Hq * dh, wo, D);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    const Vec h2 = rmsnorm(x, T, D, ffn_norm, cfg.norm_eps);
    if (moe_layer) {
      mp.w1 = w1, mp.w3 = w3, mp.w2 = w2;
      if (mc.num_shared > 0) mp.shared_w1 = take(), mp.shared_w3 = take(), mp.shared_w2 = take();
      Vec noise;  // the Transformer's train-time draws at its default seed 0
      if (mc.router == moe::Router::noisy)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t e = 0; e < mc.num_experts; ++e) noise.push_back(moe::detail::standard_normal(moe_noise_seed(0, l), t, e));
      const auto r = moe::reference::forward<double>(mc, mp, h2, T, noise);
      for (size_t i = 0; i < x.size(); ++i) x[i] += r.out[i];
      aux += r.aux_loss;
      continue;
    }
    const Vec a = matmul(h2, T, D, w1, F), b = matmul(h2, T, D, w3, F);
    Vec g(a.size());
    for (size_t i = 0; i < a.size(); ++i) g[i] = a[i] / (1.0 + std::exp(-a[i])) * b[i];
    const Vec y = matmul(g, T, F, w2, D);
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  }
  const Vec& norm = take();
  const Vec& head = cfg.tie_embeddings ? E : take();
  const Vec hf = rmsnorm(x, T, D, norm, cfg.norm_eps);
  double total = 0;
  int64_t count = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (batch.targets[size_t(t)] < 0) continue;
    Vec z(size_t(V), 0.0);
    double m = -1e300;
    for (int64_t c = 0; c < V; ++c) {
      for (int64_t i = 0; i < D; ++i) z[size_t(c)] += hf[size_t(t * D + i)] * head[size_t(c * D + i)];
      m = std::max(m, z[size_t(c)]);
    }
    double s = 0;
    for (double zc : z) s += std::exp(zc - m);
    total += m + std::log(s) - z[size_t(batch.targets[size_t(t)])];
    ++count;
  }
  if (tape) tape->recorded = true;
  return (count ? total / double(count) : 0.0) + aux;
}

}  // namespace longctx::reference
