// `longctx bench attention`: dense flash attention vs sparse methods, speed and memory by length.
#include "attention_methods.hpp"
#include "commands.hpp"
#include "option_flags.hpp"

namespace longctx::cli {

void add_bench_attention(CLI::App& bench) {
  auto cfg = std::make_shared<bench::AttentionBenchConfig>();
  auto worker = std::make_shared<bool>(false);
  auto mode = std::make_shared<std::string>("fwd");
  CLI::App* c = bench.add_subcommand("attention", "Attention kernels: time, GFLOP/s, speedup vs dense, peak memory");
  c->add_option("--methods", cfg->methods, "Methods to run (dense, moba, nsa, topk, threshold)")->delimiter(',')->capture_default_str();
  c->add_option("--lengths", cfg->lengths, "Sequence lengths")->delimiter(',')->check(at_least(1))
      ->capture_default_str();
  c->add_option("--batch", cfg->batch, "Sequences of each length, packed varlen")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--heads", cfg->heads, "Query heads")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--kv-heads", cfg->kv_heads, "KV heads (divides --heads)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--head-dim", cfg->head_dim, "Head dimension")->check(CLI::PositiveNumber)->capture_default_str();
  // moba / topk / threshold options (a shared name such as --block-size sets all three), then NSA's
  bench::add_option_flags(c, "", cfg->moba, cfg->topk, cfg->threshold);
  bench::add_option_flags(c, "nsa-", cfg->nsa);
  c->add_option("--mode", *mode, "fwd, fwdbwd or decode (one new token over a prefix of each length)")->check(CLI::IsMember({"fwd", "fwdbwd", "decode"}))->capture_default_str();
  c->add_option("--dtype", cfg->dtype, "Storage of q, k, v")->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  c->add_option("--reps", cfg->reps, "Minimum timed repetitions (best is reported)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--min-seconds", cfg->min_seconds, "Minimum total timed seconds per case")->capture_default_str();
  c->add_option("--json", cfg->json, "Also write the rows to this JSON file");
  c->add_flag("--worker", *worker, "Internal: run one case and print its JSON row")->group("");
  c->callback([cfg, worker, mode] {
    cfg->backward = *mode == "fwdbwd";
    cfg->decode = *mode == "decode";
    bench::run_attention_bench(*cfg, *worker);
  });
}

}  // namespace longctx::cli
