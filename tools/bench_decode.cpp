// `longctx bench decode`: decode and chunked prefill over a KV cache, method vs method.
#include "decode_bench.hpp"
#include "commands.hpp"

namespace longctx::cli {

void add_bench_decode(CLI::App& bench) {
  auto cfg = std::make_shared<bench::DecodeBenchConfig>();
  CLI::App* c = bench.add_subcommand("decode", "Decode tokens/s over a KV cache by length and method; dense vs memory bandwidth");
  c->add_option("--methods", cfg->methods, "dense, moba, topk, threshold")->delimiter(',')->capture_default_str();
  c->add_option("--lengths", cfg->lengths, "Cache lengths")->delimiter(',')->capture_default_str();
  c->add_option("--heads", cfg->heads, "Query heads")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--kv-heads", cfg->kv_heads, "KV heads")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--head-dim", cfg->head_dim, "Head dimension")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--block-size", cfg->block_size, "Cache block size (MoBA, top-k, threshold)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--top-k", cfg->top_k, "MoBA / top-k blocks, own included")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--tau", cfg->tau, "Threshold kept mass")->capture_default_str();
  c->add_option("--chunk", cfg->chunk, "Chunked prefill: queries per call")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--chunk-max-length", cfg->chunk_max_length, "Chunked prefill only up to this cache length")->capture_default_str();
  c->add_option("--dtype", cfg->dtype, "Cache storage")->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  c->add_option("--threads", cfg->threads, "OpenMP threads (0 = all cores)")->check(CLI::NonNegativeNumber)->capture_default_str();
  c->add_option("--min-seconds", cfg->min_seconds, "Minimum timed seconds per case")->capture_default_str();
  c->add_option("--json", cfg->json, "Also write the rows to this JSON file");
  c->callback([cfg] { bench::run_decode_bench(*cfg); });
}

}  // namespace longctx::cli
