// `longctx eval`: validation loss, perplexity, position-wise loss, passkey retrieval and the
// RULER-style retrieval grid (eval_retrieval.hpp) of a checkpoint, at the training length or
// beyond it (RoPE extends), with time and peak memory.
#include <fmt/core.h>
#include <longctx/model/checkpoint.hpp>
#include <longctx/core/threads.hpp>
#include <longctx/core/error.hpp>
#include <longctx/eval/eval.hpp>
#include <longctx/text/corpus.hpp>
#include <longctx/train/trainer.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cmath>
#include <filesystem>

#include "commands.hpp"
#include "common.hpp"
#include "decode_flags.hpp"
#include "eval_retrieval.hpp"

namespace longctx::cli {

namespace {

namespace fs = std::filesystem;

struct Options {
  std::string checkpoint, data, json, plot;
  int64_t seq_len = 0, bucket = 512, max_tokens = 1 << 18, max_seq_len = 0;
  bool no_loss = false, passkey = false;
  std::vector<int64_t> passkey_lengths;
  std::vector<double> passkey_depths{0.0, 0.25, 0.5, 0.75, 1.0};
  int64_t passkey_trials = 5, prefill_chunk = 2048;
  uint64_t passkey_seed = 1;
  RulerFlags ruler;
  DecodeFlags decode;
  // The loss through decode states (KV cache storage, cascade pruning) rather than the training
  // forward: when a decode flag asks for anything but the plain fp32 cache.
  bool loss_by_decode() const { return decode.pruning.enabled() || decode.kv_dtype != "f32"; }
};

// What the checkpoint is: enough to tell runs apart in a table of eval JSONs.
nlohmann::json model_summary(const Transformer& m, const CheckpointInfo& info) {
  nlohmann::json kinds = nlohmann::json::array();
  for (int64_t l = 0; l < m.config().n_layers; ++l) kinds.push_back(enum_name(m.attention_kind(l)));
  return {{"parameters", m.num_params()}, {"trained_max_seq_len", info.model.max_seq_len},
          {"eval_max_seq_len", m.config().max_seq_len}, {"attention", kinds}, {"tokenizer", info.tokenizer},
          {"config", info.model.to_json()}};
}

nlohmann::json run_loss(const Options& o, Transformer& model, const Tokenizer& tok, int64_t seq_len,
                        std::vector<nlohmann::json>& rows) {
  const Corpus corpus = load_corpus(o.data, tok);
  bench::Progress progress("loss", "tokens");
  const DecodeOptions decode = o.decode.options("eval", model.config().n_layers);
  const EvalResult r = evaluate_positions(
      model, corpus.val, seq_len, o.bucket, o.max_tokens,
      [&](int64_t done, int64_t total) { progress.report(double(done), double(total)); },
      o.loss_by_decode() ? &decode : nullptr);
  if (o.loss_by_decode()) fmt::print("loss by decoding each window over a {}\n", o.decode.describe());
  fmt::print("val loss {:.4f} nats/token (perplexity {:.3f}) over {} tokens in {} windows of {}; {:.0f} tokens/s\n",
             r.loss, std::exp(r.loss), r.tokens, r.windows, seq_len, double(r.tokens) / r.seconds);
  for (const PositionBucket& b : r.buckets)
    rows.push_back({{"begin", b.begin}, {"end", b.end}, {"loss", b.loss}, {"tokens", b.tokens}});
  bench::print_table(rows, {{"begin", "from", ""}, {"end", "to", ""}, {"loss", "loss", "{:.4f}"}, {"tokens", "tokens", ""}});
  return {{"val_loss", r.loss}, {"perplexity", std::exp(r.loss)}, {"seq_len", seq_len}, {"tokens", r.tokens},
          {"windows", r.windows}, {"tokens_per_s", double(r.tokens) / r.seconds}, {"loss_seconds", r.seconds}};
}

// scripts/plot_eval.sh next to the binary's build folder (build/longctx -> scripts/) or beside it.
std::string plot_script() {
  const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path();
  for (const fs::path& p : {exe.parent_path() / "scripts" / "plot_eval.sh", exe / "scripts" / "plot_eval.sh"})
    if (fs::exists(p)) return p.string();
  throw std::runtime_error("eval: --plot needs scripts/plot_eval.sh (looked next to " + exe.string() + ")");
}

void run(const Options& o) {
  const auto t0 = std::chrono::steady_clock::now();
  LONGCTX_CHECK(!o.no_loss || o.passkey || !o.passkey_lengths.empty() || o.ruler.requested(),
                "eval: --no-loss without --passkey, --passkey-lengths or --ruler leaves nothing to evaluate");
  bench::check_output_path(o.json, "eval: --json");
  bench::check_output_path(o.plot, "eval: --plot");
  LONGCTX_CHECK(o.plot.empty() || std::system("command -v gnuplot >/dev/null 2>&1 && command -v jq >/dev/null 2>&1") == 0,
                "eval: --plot needs gnuplot and jq (scripts/setup.sh installs them)");
  const CheckpointInfo info = read_checkpoint_info(o.checkpoint);
  const int64_t seq_len = o.seq_len > 0 ? o.seq_len : o.max_seq_len > 0 ? o.max_seq_len : info.model.max_seq_len;
  TaskGridOptions po;  // the passkey test: one task
  po.lengths = o.passkey_lengths.empty() && o.passkey ? std::vector<int64_t>{seq_len} : o.passkey_lengths;
  po.depths = o.passkey_depths;
  po.trials = o.passkey_trials;
  po.seed = o.passkey_seed;
  po.prefill_chunk = o.prefill_chunk;
  po.decode = o.decode.options("eval", info.model.n_layers);
  TaskGridOptions ruler = ruler_grid(o.ruler, info.model.max_seq_len, o.prefill_chunk);
  ruler.decode = po.decode;
  const int64_t rope_len =
      std::max({o.max_seq_len, o.no_loss ? 0 : seq_len, task_grid_capacity(po), task_grid_capacity(ruler)});
  Transformer model = load_model(o.checkpoint, nullptr, std::max(rope_len, info.model.max_seq_len));
  const auto tok = make_tokenizer(info.tokenizer, info.tokenizer_model);

  nlohmann::json summary{{"checkpoint", o.checkpoint}, {"data", o.data}, {"threads", parallel::max_threads()},
                         {"model", model_summary(model, info)},
                         {"kv", {{"dtype", o.decode.kv_dtype}, {"budget", o.decode.pruning.budget},
                                 {"window", o.decode.pruning.window}, {"sink", o.decode.pruning.sink},
                                 {"chunk", o.decode.pruning.step_chunk()},
                                 {"loss_by_decode", o.loss_by_decode()}}}};
  std::vector<nlohmann::json> rows;
  if (!o.no_loss) summary.update(run_loss(o, model, *tok, seq_len, rows));
  nlohmann::json passkey;
  if (!po.lengths.empty()) passkey = run_task_grid("passkey", o.data, model, *tok, po);
  nlohmann::json ruler_json;
  if (!ruler.lengths.empty()) ruler_json = run_ruler(o.ruler, info.model.max_seq_len, o.data, model, *tok, ruler);
  summary["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  summary["peak_rss_mb"] = bench::peak_rss_mb();
  fmt::print("eval took {:.1f} s, peak RSS {:.0f} MiB\n", summary["seconds"].get<double>(),
             summary["peak_rss_mb"].get<double>());
  // The run's summary, the position-wise buckets ("rows", as in the bench JSONs), the passkey grid
  // and the RULER grid.
  const nlohmann::json doc{{"summary", summary}, {"rows", rows}, {"passkey", passkey}, {"ruler", ruler_json}};
  const std::string json = !o.json.empty() ? o.json
                                           : o.plot.empty() ? ""
                                                            : (fs::temp_directory_path() /
                                                               fmt::format("longctx_eval_{}.json", getpid())).string();
  if (!json.empty()) bench::write_json_file(json, doc);
  if (!o.plot.empty()) {
    bench::run_program({"/bin/bash", plot_script(), o.plot, json});
    if (o.json.empty()) fs::remove(json);
    fmt::print("plot written to {}\n", o.plot);
  }
}

}  // namespace

void add_eval(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("eval", "Validation loss, position-wise loss, passkey and RULER-style retrieval of a checkpoint");
  c->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors written by `longctx train`")->required();
  c->add_option("--data", o->data, "Corpus folder (its val/ split is scored and gives the passkey filler)")->required();
  c->add_option("--seq-len", o->seq_len, "Window length of the loss (default: --max-seq-len, else the training max_seq_len)")
      ->check(at_least(1));
  c->add_option("--bucket", o->bucket, "Positions per bucket of the position-wise loss")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--max-tokens", o->max_tokens, "Most tokens scored")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--max-seq-len", o->max_seq_len, "Extend the RoPE table (evaluate beyond the training length)")
      ->check(at_least(1));
  c->add_flag("--no-loss", o->no_loss, "Skip the validation loss (passkey only)");
  c->add_flag("--passkey", o->passkey, "Run passkey retrieval (at --seq-len unless --passkey-lengths)");
  c->add_option("--passkey-lengths", o->passkey_lengths, "Passkey context lengths in tokens, e.g. 8192,32768 (implies --passkey)")
      ->delimiter(',')->check(CLI::PositiveNumber);
  c->add_option("--passkey-depths", o->passkey_depths, "Needle depths in [0, 1]")->delimiter(',')
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  c->add_option("--passkey-trials", o->passkey_trials, "Examples per (length, depth) cell")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--passkey-seed", o->passkey_seed, "Seed of keys and filler offsets")->capture_default_str();
  c->add_option("--prefill-chunk", o->prefill_chunk, "Prompt tokens per prefill call of the passkey decode")->check(CLI::PositiveNumber)->capture_default_str();
  add_ruler_options(*c, o->ruler);
  o->decode.add(c);  // the passkey's decode states; the loss too when not the plain fp32 cache
  c->add_option("--json", o->json, "Write everything to this JSON file");
  c->add_option("--plot", o->plot, "Write a PNG (position-wise loss, passkey and RULER grids) with scripts/plot_eval.sh (gnuplot)");
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
