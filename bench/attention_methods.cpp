#include <longctx/attention/flash.hpp>
#include <longctx/attention/moba.hpp>
#include <longctx/attention/threshold.hpp>

#include "attention_methods.hpp"

namespace longctx::bench {

namespace {

// Pairs of dense causal attention over the packed sequences.
double dense_pairs(const AttentionInputs& in, int heads) {
  double pairs = 0;
  for (size_t i = 0; i + 1 < in.varlen.cu_q.size(); ++i) {
    const double n = double(in.varlen.cu_q[i + 1] - in.varlen.cu_q[i]);
    pairs += n * (n + 1) / 2;
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

// MoBA: one untimed forward counts the attended pairs (own block causally plus the selected
// full blocks); the timed closure recomputes everything, gate included.
MethodRun moba(const AttentionInputs& in, const AttentionBenchConfig& cfg) {
  const MobaOptions opts{cfg.block_size, cfg.top_k, 0.0f};
  const MobaResult r = moba_attention_forward(in.q, in.k, in.v, in.varlen, opts);
  double pairs = 0;
  const int64_t tq = in.q.dim(0), B = cfg.block_size;
  for (size_t si = 0; si + 1 < in.varlen.cu_q.size(); ++si)
    for (int64_t row = in.varlen.cu_q[si]; row < in.varlen.cu_q[si + 1]; ++row) {
      const int64_t pos = row - in.varlen.cu_q[si];
      for (int h = 0; h < cfg.heads; ++h) {
        pairs += double(pos % B + 1);
        for (int64_t c = 0; c < r.slots; ++c) pairs += r.selected[size_t((h * tq + row) * r.slots + c)] >= 0 ? double(B) : 0.0;
      }
    }
  return {[&in, &cfg, opts] {
            const MobaResult f = moba_attention_forward(in.q, in.k, in.v, in.varlen, opts);
            if (cfg.backward) moba_attention_backward(in.q, in.k, in.v, f, in.dout, in.varlen, opts);
          },
          pairs, {}};
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
  const TopkOptions opts{cfg.block_size, cfg.top_k, false, 0.0f};
  return sparse_run(in, cfg, [&in, opts] { return topk_attention_forward(in.q, in.k, in.v, in.varlen, opts); });
}

MethodRun threshold(const AttentionInputs& in, const AttentionBenchConfig& cfg) {
  const ThresholdOptions opts{cfg.block_size, cfg.tau, StopRule::bound, 0.0f};
  return sparse_run(in, cfg, [&in, opts] { return threshold_attention_forward(in.q, in.k, in.v, in.varlen, opts); });
}
}  // namespace

const std::map<std::string, MethodFactory>& attention_methods() {
  static const std::map<std::string, MethodFactory> methods{{"dense", dense}, {"moba", moba}, {"topk", topk}, {"threshold", threshold}};
  return methods;
}

}  // namespace longctx::bench
