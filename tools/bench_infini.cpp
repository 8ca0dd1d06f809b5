// `longctx bench infini`: streaming Infini-attention vs length, its memory part vs sgemm, dense flash.
#include "commands.hpp"
#include "infini_bench.hpp"

namespace longctx::cli {

void add_bench_infini(CLI::App& bench) {
  auto cfg = std::make_shared<bench::InfiniBenchConfig>();
  auto worker = std::make_shared<bool>(false);
  CLI::App* c = bench.add_subcommand("infini", "Infini-attention streaming: tokens/s and peak memory by length");
  c->add_option("--lengths", cfg->lengths, "Streamed sequence lengths")->delimiter(',')->capture_default_str();
  c->add_option("--dense-lengths", cfg->dense_lengths, "Dense flash attention lengths (empty: none)")->delimiter(',')->capture_default_str();
  c->add_option("--memory-length", cfg->memory_length, "Tokens of the memory-part case (0 = skip)")->capture_default_str();
  c->add_option("--heads", cfg->heads, "Query heads")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--kv-heads", cfg->kv_heads, "KV heads (divides --heads)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--head-dim", cfg->head_dim, "Head dimension")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--segment", cfg->segment, "Segment length N")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--chunk", cfg->chunk, "Tokens per feed() call")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--window", cfg->window, "Best feed() tokens/s is reported over the first and last window of this many tokens")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--update", cfg->update, "Memory update rule")->check(CLI::IsMember({"linear", "delta"}))->capture_default_str();
  c->add_option("--reps", cfg->reps, "Minimum timed repetitions (best is reported)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--min-seconds", cfg->min_seconds, "Minimum total timed seconds per case")->capture_default_str();
  c->add_option("--json", cfg->json, "Also write the rows to this JSON file");
  c->add_flag("--worker", *worker, "Internal: run one case and print its JSON row")->group("");
  c->add_option("--case", cfg->case_kind, "Internal: worker case")->group("");
  c->add_option("--case-length", cfg->case_length, "Internal: worker case length")->group("");
  c->callback([cfg, worker] { bench::run_infini_bench(*cfg, *worker); });
}

}  // namespace longctx::cli
