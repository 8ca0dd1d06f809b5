// `longctx bench infini`: Infini-attention streamed over long inputs (tokens/s and peak memory by
// length), its memory part (readout + update) against the machine's sgemm peak, and dense flash
// attention at the lengths where it fits; one case per worker process.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace longctx::bench {

struct InfiniBenchConfig {
  std::vector<int64_t> lengths{65536, 262144, 1048576};  // streamed tokens
  std::vector<int64_t> dense_lengths{16384, 32768};      // dense flash attention, one call
  int64_t memory_length = 65536;                         // tokens of the memory-part case (0 = skip)
  int heads = 8, kv_heads = 8, head_dim = 128;
  int64_t segment = 2048, chunk = 2048;  // segment length N; tokens per feed() call
  int64_t window = 65536;  // best feed() tokens/s among the first / last window of this many tokens
  std::string update = "linear";         // linear or delta
  int reps = 1;
  double min_seconds = 2.0;
  std::string json;
  // worker: the one case to run ("stream", "dense", "memory") at case_length tokens
  std::string case_kind;
  int64_t case_length = 0;
};

void run_infini_bench(const InfiniBenchConfig& cfg, bool worker);

}  // namespace longctx::bench
