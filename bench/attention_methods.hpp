// The methods `longctx bench attention` can run. Each takes the case's inputs and returns the
// closure to time plus the number of (query, key) pairs it attends (its useful work).
#pragma once
#include <longctx/attention/kind/kind.hpp>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>

namespace longctx::bench {

struct AttentionBenchConfig {
  std::vector<std::string> methods{"dense", "moba"};
  std::vector<int64_t> lengths{4096, 16384};
  int batch = 1;  // sequences of each length, packed varlen
  int heads = 8, kv_heads = 8, head_dim = 128;
  // Each method's kernel options (flags from their field lists, bench/option_flags.hpp); the
  // bench's defaults are the MoBA paper's B = 4096, top-3, shared by top-k and threshold.
  MobaOptions moba{4096, 3};
  TopkOptions topk{4096, 3};
  ThresholdOptions threshold{4096, 0.95f};
  NsaConfig nsa = [] {
    NsaConfig c;
    c.hidden = 128;  // compressor MLP width
    return c;
  }();
  bool backward = false;                 // time forward + backward
  bool decode = false;                   // time one decode step: 1 query per sequence over its prefix
  std::string dtype = "f32";             // storage of q, k, v
  int reps = 2;
  double min_seconds = 1.0;
  std::string json;
};

struct AttentionInputs {
  Tensor q, k, v, dout;
  Varlen varlen;
};

struct MethodRun {
  std::function<void()> run;  // one forward (+ backward) call
  double attended_pairs;      // (query head, key) pairs in the softmax, summed over heads
  nlohmann::json extra;       // method-specific figures for the report
};

using MethodFactory = std::function<MethodRun(const AttentionInputs&, const AttentionBenchConfig&)>;

// name -> factory, in the order the table prints them
const std::map<std::string, MethodFactory>& attention_methods();

// Runs the benchmark: table to stdout, JSON to cfg.json if set. With `worker`, runs the single
// (method, length) case in cfg and prints its JSON row (the parent spawns one per case).
void run_attention_bench(const AttentionBenchConfig& cfg, bool worker);

}  // namespace longctx::bench
