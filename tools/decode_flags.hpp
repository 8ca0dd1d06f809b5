// The flags that say how inference keeps its KV caches, one definition for generate and eval:
// --kv-dtype f32|bf16|int8 and SpAtten cascade pruning to a token budget (--kv-budget, --kv-window,
// --kv-sink, --kv-chunk; include/longctx/attention/cache/cascade_pruning.hpp).
#pragma once
#include <CLI/CLI.hpp>
#include <longctx/model/transformer.hpp>

#include <string>

namespace longctx::cli {

// --kv-dtype f32|bf16|int8 into `kv_dtype` (commands that take no pruning flags: serve, bench
// batch-decode); DecodeFlags::add adds it with the pruning flags.
void add_kv_dtype_option(CLI::App* c, std::string& kv_dtype);

struct DecodeFlags {
  std::string kv_dtype = "f32";
  CascadePruningOptions pruning;

  void add(CLI::App* c);
  // The options for a model of `layers` layers; throws (naming `who` and the flag) on a bad value.
  DecodeOptions options(const std::string& who, int64_t layers) const;
  std::string describe() const;                         // "int8 KV cache, budget 4096 (window 32, sink 4)"
};

}  // namespace longctx::cli
