#include <longctx/attention/flash.hpp>

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

}  // namespace

const std::map<std::string, MethodFactory>& attention_methods() {
  static const std::map<std::string, MethodFactory> methods{{"dense", dense}};
  return methods;
}

}  // namespace longctx::bench
