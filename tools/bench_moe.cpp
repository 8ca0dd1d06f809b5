// `longctx bench moe`: MoE layer vs dense SwiGLU FFNs of the same active / total parameters.
#include "commands.hpp"
#include "moe_bench.hpp"

namespace longctx::cli {

void add_bench_moe(CLI::App& bench) {
  auto cfg = std::make_shared<bench::MoeBenchConfig>();
  auto worker = std::make_shared<bool>(false);
  CLI::App* c = bench.add_subcommand("moe", "MoE FFN layer vs dense SwiGLU FFNs: time, GFLOP/s, ratios, peak memory");
  c->add_option("--cases", cfg->cases, "Cases: dense:<d_ff> or moe:<experts>:<k>:<d_ff per expert>")
      ->delimiter(',')
      ->capture_default_str();
  c->add_option("--modes", cfg->modes, "fwd and/or fwdbwd")->delimiter(',')->check(CLI::IsMember({"fwd", "fwdbwd"}))->capture_default_str();
  c->add_option("--tokens", cfg->tokens, "Tokens per step")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--d-model", cfg->d_model, "Model width")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--reps", cfg->reps, "Minimum timed repetitions (best is reported)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--rounds", cfg->rounds, "Run the whole case list this many times, interleaved (best per case: robust ratios on a busy machine)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--json", cfg->json, "Also write the rows to this JSON file");
  c->add_flag("--worker", *worker, "Internal: run one case and print its JSON row")->group("");
  c->callback([cfg, worker] { bench::run_moe_bench(*cfg, *worker); });
}

}  // namespace longctx::cli
