#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/moba/key_conv.hpp>
#include <longctx/attention/moba/moba.hpp>
#include <longctx/attention/nsa/nsa.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>
#include <memory>
#include <random>

#include "attention_methods.hpp"

namespace longctx::bench {

namespace {

// Pairs of dense causal attention over the packed sequences (bottom-right aligned queries).
double dense_pairs(const AttentionInputs& in, int heads) {
  double pairs = 0;
  for (size_t i = 0; i + 1 < in.varlen.cu_q.size(); ++i) {
    const double nq = double(in.varlen.cu_q[i + 1] - in.varlen.cu_q[i]);
    const double nk = double(in.varlen.cu_k[i + 1] - in.varlen.cu_k[i]);
    pairs += nq * (nk - nq) + nq * (nq + 1) / 2;
  }
  return pairs * heads;
}

MethodRun dense(const AttentionInputs& in, const AttentionBenchConfig& cfg) {
  return {[&in, &cfg] {
            const AttentionResult r = flash_attention_forward(in.q, in.k, in.v, in.varlen);
            if (cfg.backward) flash_attention_backward(in.q, in.k, in.v, r, in.dout, in.varlen);
          },
          dense_pairs(in, cfg.heads), {}};
}

// MoBA's key convolution as a model layer runs it (moba/key_conv.hpp): over fp32 keys before the
// kernel, taps near the identity; the kernel then reads the convolved keys in the input's dtype.
struct KeyConvRun {
  Tensor k32, w, b;
  Tensor keys(const AttentionInputs& in) const {
    Tensor y = key_conv_forward(k32, w, b, in.varlen.cu_k);
    return in.k.dtype() == DType::f32 ? std::move(y) : y.to(in.k.dtype());
  }
};

std::shared_ptr<const KeyConvRun> key_conv_run(const AttentionInputs& in, const AttentionBenchConfig& cfg) {
  const MobaOptions& o = cfg.moba;
  if (o.key_conv == 0) return nullptr;  // (run_attention_bench refuses it in decode mode)
  auto run = std::make_shared<KeyConvRun>();
  const int64_t C = in.k.dim(1) * in.k.dim(2);
  run->k32 = in.k.to(DType::f32);
  run->w = random_normal({o.key_conv, C}, 9, 0.1f);
  for (int64_t c = 0; c < C; ++c) run->w.f32()[(o.key_conv - 1) * C + c] += 1.0f;
  if (o.key_conv_bias) run->b = random_normal({C}, 10, 0.1f);
  return run;
}

// MoBA: one untimed forward counts the attended pairs (own block causally plus the selected
// full blocks); the timed closure recomputes everything, gate (and key convolution) included.
MethodRun moba(const AttentionInputs& in, const AttentionBenchConfig& cfg) {
  const MobaOptions opts = cfg.moba;
  const std::shared_ptr<const KeyConvRun> conv = key_conv_run(in, cfg);
  auto keys = [&in, conv] { return conv ? conv->keys(in) : in.k.alias(); };
  const MobaResult r = moba_attention_forward(in.q, keys(), in.v, in.varlen, opts);
  double pairs = 0;
  const int64_t tq = in.q.dim(0), B = opts.block_size;
  for (size_t si = 0; si + 1 < in.varlen.cu_q.size(); ++si)
    for (int64_t row = in.varlen.cu_q[si]; row < in.varlen.cu_q[si + 1]; ++row) {
      const int64_t lq = in.varlen.cu_q[si + 1] - in.varlen.cu_q[si], lk = in.varlen.cu_k[si + 1] - in.varlen.cu_k[si];
      const int64_t pos = row - in.varlen.cu_q[si] + lk - lq;  // bottom-right: decode rows are the last
      for (int h = 0; h < cfg.heads; ++h) {
        pairs += double(pos % B + 1);
        for (int64_t c = 0; c < r.slots; ++c) pairs += r.selected[size_t((h * tq + row) * r.slots + c)] >= 0 ? double(B) : 0.0;
      }
    }
  return {[&in, &cfg, opts, conv, keys] {
            const Tensor k = keys();
            const MobaResult f = moba_attention_forward(in.q, k, in.v, in.varlen, opts);
            if (!cfg.backward) return;
            const AttentionGrads g = moba_attention_backward(in.q, k, in.v, f, in.dout, in.varlen);
            if (conv) key_conv_backward(conv->k32, conv->w, opts.key_conv_bias, g.dk, in.varlen.cu_k);
          },
          pairs, nlohmann::json{{"key_conv", opts.key_conv}}};
}

// Keys NSA's three branches attend for a query at position t: visible compressed blocks, the
// selected tokens (n - 1 full blocks plus the own block up to t, or the whole prefix when it has
// at most n blocks) and the window.
double nsa_keys(const NsaConfig& c, int64_t t) {
  const int64_t cmp = t >= c.block_len - 1 ? (t - c.block_len + 1) / c.stride + 1 : 0;
  const int64_t own = t / c.select_len;
  const int64_t slc = own + 1 <= c.top_n ? t + 1 : (c.top_n - 1) * c.select_len + (t - own * c.select_len + 1);
  return double(cmp + slc + std::min(c.window, t + 1));
}

MethodRun nsa(const AttentionInputs& in, const AttentionBenchConfig& cfg) {
  constexpr int kGateIn = 256;  // gate MLP input width (the layer's hidden state)
  struct State {
    NsaConfig c;
    NsaWeights<float> w;
    Tensor x;
  };
  auto st = std::make_shared<State>();
  st->c = cfg.nsa;
  st->w = nsa_init_weights(st->c, cfg.heads, cfg.head_dim, kGateIn, int(st->c.hidden), 7);
  st->x = Tensor({in.q.dim(0), kGateIn});
  std::mt19937_64 rng(8);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < st->x.numel(); ++i) st->x.f32()[i] = dist(rng);
  double pairs = 0;
  for (size_t i = 0; i + 1 < in.varlen.cu_q.size(); ++i) {
    const int64_t lq = in.varlen.cu_q[i + 1] - in.varlen.cu_q[i], lk = in.varlen.cu_k[i + 1] - in.varlen.cu_k[i];
    for (int64_t t = lk - lq; t < lk; ++t) pairs += nsa_keys(st->c, t);
  }
  if (cfg.decode) {
    // One step over the prefix; the compressed-key cache is filled beforehand, as in generation.
    LONGCTX_CHECK(cfg.batch == 1, "bench attention: nsa decode runs one sequence, got --batch ", cfg.batch);
    auto cache = std::make_shared<NsaDecodeCache>();
    cache->update(in.k, in.v, st->w, st->c);
    return {[&in, st, cache] { nsa_decode_step(in.q, in.k, in.v, st->x, st->w, st->c, *cache); },
            pairs * cfg.heads, {}};
  }
  return {[&in, &cfg, st] {
            const NsaResult r = nsa_forward(in.q, in.k, in.v, st->x, st->w, st->c, in.varlen);
            if (cfg.backward) nsa_backward(in.q, in.k, in.v, st->x, st->w, r, in.dout, in.varlen);
          },
          pairs * cfg.heads, {}};
}


// Top-k / threshold: the forward's mean keys per (head, query) give the attended pairs; extra
// reports keys visited and their fraction of dense causal attention's.
MethodRun sparse_run(const AttentionInputs& in, const AttentionBenchConfig& cfg,
                     std::function<SparseResult()> forward) {
  const SparseResult r = forward();
  const double pairs = r.mean_keys * double(in.q.dim(0)) * cfg.heads;
  nlohmann::json extra{{"keys_mean", r.mean_keys}, {"keys_max", r.max_keys}, {"keys_frac", pairs / dense_pairs(in, cfg.heads)}};
  if (!r.stop_rule.empty()) extra["stop_rule"] = r.stop_rule;
  return {[&in, &cfg, forward] {
            const SparseResult f = forward();
            if (cfg.backward) sparse_attention_backward(in.q, in.k, in.v, f, in.dout, in.varlen);
          },
          pairs, extra};
}

MethodRun topk(const AttentionInputs& in, const AttentionBenchConfig& cfg) {
  const TopkOptions opts = cfg.topk;
  return sparse_run(in, cfg, [&in, opts] { return topk_attention_forward(in.q, in.k, in.v, in.varlen, opts); });
}

MethodRun threshold(const AttentionInputs& in, const AttentionBenchConfig& cfg) {
  const ThresholdOptions opts = cfg.threshold;
  return sparse_run(in, cfg, [&in, opts] { return threshold_attention_forward(in.q, in.k, in.v, in.varlen, opts); });
}
}  // namespace

const std::map<std::string, MethodFactory>& attention_methods() {
  static const std::map<std::string, MethodFactory> methods{
      {"dense", dense}, {"moba", moba}, {"nsa", nsa}, {"topk", topk}, {"threshold", threshold}};
  return methods;
}

}  // namespace longctx::bench
