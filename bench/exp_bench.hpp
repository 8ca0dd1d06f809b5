// `longctx bench exp`: the degree-3 polynomial exp (simd::exp_poly3) beside the default degree-6
// one (simd::exp_approx): accuracy, elements/s of the attention kernels' exp loop, and dense
// flash attention's forward time and error against float64 with each.
#pragma once
#include <cstdint>
#include <string>

namespace longctx::bench {

struct ExpBenchConfig {
  int64_t elements = 4096;  // buffer of the exp loop timing (L1-resident: compute, not memory)
  int64_t length = 2048;    // dense attention: one causal sequence of this length
  int heads = 8, kv_heads = 2, head_dim = 128;
  int rounds = 5;           // timings alternate between the two exps this many times; best kept
  double min_seconds = 0.2; // per timing
  std::string json;
};

// Table to stdout, JSON to cfg.json if set.
void run_exp_bench(const ExpBenchConfig& cfg);

}  // namespace longctx::bench
