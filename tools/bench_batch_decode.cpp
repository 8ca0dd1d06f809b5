// `longctx bench batch-decode`: decode tokens/s of B sequences at once (Transformer::extend_batch,
// what `longctx serve` runs for B concurrent clients) against the same B sequences decoded one
// extend() at a time, side by side in one process.
#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/core/threads.hpp>
#include <longctx/model/checkpoint.hpp>

#include <chrono>
#include <random>

#include "commands.hpp"
#include "decode_flags.hpp"
#include "common.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string config, checkpoint, kv_dtype = "f32", json;
  std::vector<int64_t> batch{1, 2, 4, 8};
  int64_t context = 512, steps = 16;
};

// Seconds of `steps` calls of step().
template <class F>
double seconds_of(int64_t steps, F&& step) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) step();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void run(const Options& o) {
  bench::check_output_path(o.json, "bench batch-decode: --json");
  const KVDType cache_dtype = enum_from_name<KVDType>(o.kv_dtype, "bench batch-decode: --kv-dtype");
  // every sequence holds the context, a warm-up step, then the timed steps batched and one by one
  const int64_t capacity = o.context + 1 + 2 * o.steps;
  Transformer model = [&] {
    if (!o.checkpoint.empty()) return load_model(o.checkpoint, nullptr, capacity);
    ModelConfig mc = bench::read_model_config(o.config, "bench batch-decode: --config");
    mc.max_seq_len = capacity;  // RoPE is computed: any length
    return Transformer(mc, 1);
  }();
  const ModelConfig& mc = model.config();
  std::mt19937_64 rng(1);
  auto random_tokens = [&](int64_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t& x : t) x = int32_t(rng() % uint64_t(mc.vocab_size));
    return t;
  };
  std::vector<nlohmann::json> rows;
  for (const int64_t B : o.batch) {
    LONGCTX_CHECK(B >= 1, "bench batch-decode: --batch sizes must be >= 1, got ", B);
    std::vector<DecodeState> states;
    std::vector<DecodeState*> ptrs;
    for (int64_t s = 0; s < B; ++s) {
      states.push_back(model.new_decode_state(capacity, cache_dtype));
      model.prefill(states.back(), random_tokens(o.context), 2048);
    }
    for (DecodeState& s : states) ptrs.push_back(&s);
    auto one_token_each = [&] {
      std::vector<std::vector<int32_t>> runs;
      for (int64_t s = 0; s < B; ++s) runs.push_back(random_tokens(1));
      return runs;
    };
    model.extend_batch(ptrs, one_token_each());  // warm-up: first touch of the buffers
    const double batched = seconds_of(o.steps, [&] { model.extend_batch(ptrs, one_token_each()); });
    const double alone = seconds_of(o.steps, [&] {
      for (DecodeState& s : states) model.extend(s, random_tokens(1));
    });
    const double tokens = double(B * o.steps);
    rows.push_back({{"batch", B},
                    {"context", o.context},
                    {"batched_tokens_per_s", tokens / batched},
                    {"one_by_one_tokens_per_s", tokens / alone},
                    {"speedup", alone / batched}});
  }
  fmt::print("decode of B sequences at a context of {} tokens, {} params, {} KV cache, {} threads\n", o.context,
             model.num_params(), o.kv_dtype, parallel::max_threads());
  bench::print_table(rows, {{"batch", "B", "{}"},
                            {"batched_tokens_per_s", "batched tok/s", "{:.1f}"},
                            {"one_by_one_tokens_per_s", "one-by-one tok/s", "{:.1f}"},
                            {"speedup", "speedup", "{:.2f}x"}});
  if (!o.json.empty())
    bench::write_json(o.json, bench::machine_info(parallel::max_threads(), bench::measure_peaks(false)), rows);
}

}  // namespace

void add_bench_batch_decode(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  CLI::App* c = bench.add_subcommand("batch-decode",
                                     "Decode tokens/s of B sequences in one batched step vs one sequence at a time");
  CLI::Option* config = c->add_option("--config", o->config, "Model config JSON (random weights; a train config's "
                                      "\"model\" section is used)");
  c->add_option("--checkpoint", o->checkpoint, "Or a checkpoint's model")->excludes(config)->check(CLI::ExistingFile);
  c->add_option("--batch", o->batch, "Sequences decoded together")->delimiter(',')->capture_default_str();
  c->add_option("--context", o->context, "Tokens in each sequence's cache before the timed steps")
      ->check(at_least(1))->capture_default_str();
  c->add_option("--steps", o->steps, "Timed decode steps")->check(at_least(1))->capture_default_str();
  add_kv_dtype_option(c, o->kv_dtype);
  c->add_option("--json", o->json, "Also write the rows to this JSON file");
  c->callback([o] {
    LONGCTX_CHECK(!o->config.empty() || !o->checkpoint.empty(), "bench batch-decode: give --config or --checkpoint");
    run(*o);
  });
}

}  // namespace longctx::cli
