// `longctx bench moe`: the MoE layer beside dense SwiGLU FFNs of the same active and the same
// total parameters, forward and forward+backward, one case per worker process.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace longctx::bench {

struct MoeBenchConfig {
  // "dense:<d_ff>" or "moe:<experts>:<k>:<d_ff per expert>"
  std::vector<std::string> cases{"dense:2816", "moe:8:2:1408", "moe:64:8:352", "dense:11264"};
  std::vector<std::string> modes{"fwd", "fwdbwd"};
  int64_t tokens = 16384, d_model = 512;
  int reps = 2;
  int rounds = 1;  // the case list is run this many times, interleaved; best time per case is kept
  std::string json;
};

// Table to stdout, JSON to cfg.json if set. With `worker`, runs cfg.cases[0] in cfg.modes[0]
// and prints its JSON row.
void run_moe_bench(const MoeBenchConfig& cfg, bool worker);

}  // namespace longctx::bench
