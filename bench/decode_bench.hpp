// `longctx bench decode`: decode (and chunked prefill) tokens/s per method over a KV cache of
// growing length, dense decode's achieved bandwidth vs a streaming read measured in the same run.
#pragma once
#include <longctx/attention/kind/kind.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx::bench {

struct DecodeBenchConfig {
  std::vector<std::string> methods{"dense", "moba", "topk", "threshold"};
  std::vector<int64_t> lengths{4096, 65536, 1048576};
  int heads = 8, kv_heads = 2, head_dim = 128;
  // The methods' kernel options (flags from their field lists; --block-size, shared, is also the
  // cache's statistics block): B = 4096, top-12 (MoBA's paper at 1M), tau = 0.95.
  MobaOptions moba{4096, 12};
  TopkOptions topk{4096, 12};
  ThresholdOptions threshold{4096, 0.95f};
  int64_t chunk = 64;                  // chunked prefill: queries per call
  int64_t chunk_max_length = 65536;    // chunked prefill only at cache lengths up to this
  std::vector<std::string> dtypes{"bf16"};  // cache storage, side by side: f32, bf16, int8
  // SpAtten cascade pruning: per budget B < n, a steady-state decode step over a cache pruned to B
  // tokens (append, dense attention, importance, one eviction), against dense at n.
  std::vector<int64_t> kv_budgets;
  int64_t kv_window = 32, kv_sink = 4;
  double min_seconds = 0.5;
  std::string json;
};

void run_decode_bench(const DecodeBenchConfig& cfg);

// `longctx bench threshold`: output error vs keys visited of the mass threshold (both stop rules)
// and of block top-k against dense attention, for the last `queries` queries of a length-n
// sequence from the structured synthetic source (clustered keys, queries aimed at two clusters).
struct ThresholdBenchConfig {
  int64_t length = 32768, queries = 128, block_size = 64;
  int heads = 8, kv_heads = 2, head_dim = 128;
  std::vector<float> taus{0.9f, 0.95f, 0.99f};
  std::vector<int64_t> top_ks{8, 64};
  std::string json;
};
void run_threshold_bench(const ThresholdBenchConfig& cfg);

}  // namespace longctx::bench
