// `longctx bench decode` (decode and chunked prefill over a KV cache, method vs method) and
// `longctx bench threshold` (mass-threshold quality vs keys visited).
#include "decode_bench.hpp"
#include "commands.hpp"
#include "option_flags.hpp"

namespace longctx::cli {

void add_bench_decode(CLI::App& bench) {
  auto cfg = std::make_shared<bench::DecodeBenchConfig>();
  CLI::App* c = bench.add_subcommand("decode", "Decode tokens/s over a KV cache by length and method; dense vs memory bandwidth");
  c->add_option("--methods", cfg->methods, "dense, moba, topk, threshold; moba/group, topk/group: one selection per GQA group")->delimiter(',')->capture_default_str();
  c->add_option("--lengths", cfg->lengths, "Cache lengths")->delimiter(',')->capture_default_str();
  c->add_option("--heads", cfg->heads, "Query heads")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--kv-heads", cfg->kv_heads, "KV heads")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--head-dim", cfg->head_dim, "Head dimension")->check(CLI::PositiveNumber)->capture_default_str();
  bench::add_option_flags(c, "", cfg->moba, cfg->topk, cfg->threshold);  // --block-size: the cache's too
  c->add_option("--chunk", cfg->chunk, "Chunked prefill: queries per call")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--chunk-max-length", cfg->chunk_max_length, "Chunked prefill only up to this cache length")->capture_default_str();
  c->add_option("--dtypes,--dtype", cfg->dtypes, "Cache storage, side by side: f32, bf16, int8 (errors against an fp32 cache)")
      ->delimiter(',')->check(CLI::IsMember({"f32", "bf16", "int8"}))->capture_default_str();
  c->add_option("--kv-budgets", cfg->kv_budgets, "SpAtten cascade pruning: cache budgets B < length, a steady-state step each")
      ->delimiter(',')->check(CLI::PositiveNumber);
  c->add_option("--kv-window", cfg->kv_window, "With --kv-budgets: most recent tokens never pruned")->capture_default_str();
  c->add_option("--kv-sink", cfg->kv_sink, "With --kv-budgets: first tokens never pruned")->capture_default_str();
  c->add_option("--min-seconds", cfg->min_seconds, "Minimum timed seconds per case")->capture_default_str();
  c->add_option("--json", cfg->json, "Also write the rows to this JSON file");
  c->callback([cfg] { bench::run_decode_bench(*cfg); });

  auto tcfg = std::make_shared<bench::ThresholdBenchConfig>();
  CLI::App* t = bench.add_subcommand("threshold", "Mass-threshold and top-k: output error vs keys visited (structured synthetic source)");
  t->add_option("--length", tcfg->length, "Sequence length")->check(CLI::PositiveNumber)->capture_default_str();
  t->add_option("--queries", tcfg->queries, "Last queries evaluated")->check(CLI::PositiveNumber)->capture_default_str();
  t->add_option("--block-size", tcfg->block_size, "Block size")->check(CLI::PositiveNumber)->capture_default_str();
  t->add_option("--taus", tcfg->taus, "Threshold tau values")->delimiter(',')->capture_default_str();
  t->add_option("--top-ks", tcfg->top_ks, "Top-k block counts")->delimiter(',')->capture_default_str();
  t->add_option("--json", tcfg->json, "Also write the rows to this JSON file");
  t->callback([tcfg] { bench::run_threshold_bench(*tcfg); });
}

}  // namespace longctx::cli
