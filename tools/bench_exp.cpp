// `longctx bench exp`: the degree-3 polynomial exp vs the default one: error, speed, effect on attention.
#include "commands.hpp"
#include "exp_bench.hpp"

namespace longctx::cli {

void add_bench_exp(CLI::App& bench) {
  auto cfg = std::make_shared<bench::ExpBenchConfig>();
  CLI::App* c = bench.add_subcommand(
      "exp", "Degree-3 vs degree-6 polynomial exp: relative error, elements/s, dense attention time and error vs float64");
  c->add_option("--elements", cfg->elements, "Elements of the timed exp loop")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--length", cfg->length, "Tokens of the dense attention case (its float64 reference is O(n^2))")
      ->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--heads", cfg->heads, "Query heads")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--kv-heads", cfg->kv_heads, "KV heads (divides --heads)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--head-dim", cfg->head_dim, "Head dimension")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--rounds", cfg->rounds, "Timings alternate between the two exps this many times (best kept)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--min-seconds", cfg->min_seconds, "Minimum seconds of each timing")->capture_default_str();
  c->add_option("--json", cfg->json, "Also write the rows to this JSON file");
  c->callback([cfg] { bench::run_exp_bench(*cfg); });
}

}  // namespace longctx::cli
