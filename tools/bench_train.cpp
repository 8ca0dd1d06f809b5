// `longctx bench train`: training-step throughput of a model config on random tokens (no corpus),
// the figure compared against the PyTorch reference (bench/torch_train.py).
#include <fmt/core.h>
#include <fmt/format.h>
#include <longctx/core/threads.hpp>
#include <longctx/core/error.hpp>
#include <longctx/model/checkpoint.hpp>
#include <longctx/train/optimizer.hpp>

#include <random>

#include "commands.hpp"
#include "common.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string config, json, init_from;
  int64_t seq_len = 0, sequences = 1, steps = 3;  // seq_len 0: the config's max_seq_len
};

void run(const Options& o) {
  const ModelConfig mc = bench::read_model_config(o.config, "bench train: --config");
  bench::check_output_path(o.json, "bench train: --json");
  const int64_t seq_len = o.seq_len > 0 ? o.seq_len : mc.max_seq_len;
  LONGCTX_CHECK(seq_len <= mc.max_seq_len, "bench train: --seq-len ", seq_len, " is longer than the config's max_seq_len (",
                mc.max_seq_len, ")");
  Transformer model(mc, 1);
  if (!o.init_from.empty()) load_weights(model, load_safetensors(o.init_from), o.init_from);
  AdamW opt(model.params(), {});
  std::mt19937_64 rng(1);
  Batch b;
  b.cu_seqlens = {0};
  for (int64_t s = 0; s < o.sequences; ++s) {
    for (int64_t t = 0; t < seq_len; ++t) {
      b.tokens.push_back(int32_t(rng() % uint64_t(mc.vocab_size)));
      b.targets.push_back(int32_t(rng() % uint64_t(mc.vocab_size)));
    }
    b.cu_seqlens.push_back(b.size());
  }
  auto step = [&] {
    model.zero_grad();
    model.forward(b, true);
    model.backward();
    clip_grad_norm(model.params(), 1.0);
    opt.step(model.params(), 1e-4);
  };
  const bench::Peaks peaks = bench::measure_peaks(false);
  step();  // warm-up: first-touch of every buffer
  const double t = bench::time_best(step, int(o.steps), 0.0);
  const double tps = double(b.size()) / t;
  fmt::print("longctx train step: {} params, {} x {} tokens, {} threads: {:.3f} s/step, {:.0f} tokens/s\n",
             model.num_params(), o.sequences, seq_len, parallel::max_threads(), t, tps);
  // top-k and threshold layers: the keys each query attended, as a fraction of causal attention's
  // (one more forward, untimed, whose state is read before any backward frees it)
  model.forward(b, true);
  const std::vector<double> keys = model.attended_keys();
  std::vector<double> frac;
  for (double k : keys)
    if (k >= 0) frac.push_back(k / (double(seq_len + 1) / 2));
  if (!frac.empty()) fmt::print("attended keys per query, fraction of causal attention's, by sparse layer: {:.3f}\n", fmt::join(frac, ", "));
  if (!o.json.empty())
    bench::write_json(o.json, bench::machine_info(parallel::max_threads(), peaks),
                      {{{"engine", "longctx"},
                        {"seconds_per_step", t},
                        {"tokens_per_s", tps},
                        {"params", model.num_params()},
                        {"tokens", b.size()},
                        {"keys_frac_by_layer", frac}}});
}

}  // namespace

void add_bench_train(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  CLI::App* c = bench.add_subcommand("train", "Training-step throughput (forward, backward, AdamW) on random tokens");
  c->add_option("--config", o->config, "Model config JSON (a train config's \"model\" section is used)")->required();
  c->add_option("--seq-len", o->seq_len, "Tokens per sequence (default: the config's max_seq_len)")
      ->check(CLI::PositiveNumber);
  c->add_option("--sequences", o->sequences, "Sequences per step")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--steps", o->steps, "Timed steps (best is reported)")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--init-from", o->init_from,
                 "Start from this checkpoint's weights (its parameters must match the config's; the attention kind "
                 "may differ: full, moba, topk and threshold have none), so that data-dependent sparsity is a "
                 "trained model's")
      ->check(CLI::ExistingFile);
  c->add_option("--json", o->json, "Also write the result to this JSON file");
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
