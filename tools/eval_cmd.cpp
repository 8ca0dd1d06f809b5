// `longctx eval`: validation loss, perplexity and position-wise loss of a checkpoint.
#include <fmt/core.h>
#include <longctx/eval/eval.hpp>
#include <longctx/train/corpus.hpp>
#include <longctx/train/trainer.hpp>

#include <cmath>

#include "commands.hpp"
#include "common.hpp"
#include "core/parallel.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string checkpoint, data, json;
  int64_t seq_len = 0, bucket = 512, max_tokens = 1 << 18, max_seq_len = 0;
  int threads = 0;
};

void run(const Options& o) {
  if (o.threads > 0) parallel::set_threads(o.threads);
  std::string tok_spec;
  Transformer model = load_model(o.checkpoint, &tok_spec, std::max(o.max_seq_len, o.seq_len));
  const int64_t seq_len = o.seq_len > 0 ? o.seq_len : model.config().max_seq_len;
  const Corpus corpus = load_corpus(o.data, *make_tokenizer(tok_spec));
  const EvalResult r = evaluate_positions(model, corpus.val, seq_len, o.bucket, o.max_tokens);
  fmt::print("val loss {:.4f} nats/token (perplexity {:.3f}) over {} tokens in {} windows of {}; {:.0f} tokens/s\n",
             r.loss, std::exp(r.loss), r.tokens, r.windows, seq_len, double(r.tokens) / r.seconds);
  std::vector<nlohmann::json> rows;
  for (const PositionBucket& b : r.buckets)
    rows.push_back({{"begin", b.begin}, {"end", b.end}, {"loss", b.loss}, {"tokens", b.tokens}});
  bench::print_table(rows, {{"begin", "from", ""}, {"end", "to", ""}, {"loss", "loss", "{:.4f}"}, {"tokens", "tokens", ""}});
  if (!o.json.empty())
    bench::write_json(o.json,
                      {{"checkpoint", o.checkpoint}, {"val_loss", r.loss}, {"perplexity", std::exp(r.loss)},
                       {"seq_len", seq_len}, {"tokens", r.tokens}, {"tokens_per_s", double(r.tokens) / r.seconds}},
                      rows);
}

}  // namespace

void add_eval(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("eval", "Validation loss, perplexity and position-wise loss of a checkpoint");
  c->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors written by `longctx train`")->required();
  c->add_option("--data", o->data, "Corpus folder (its val/ split is scored)")->required();
  c->add_option("--seq-len", o->seq_len, "Window length (default: the model's max_seq_len)");
  c->add_option("--bucket", o->bucket, "Positions per bucket of the position-wise loss")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--max-tokens", o->max_tokens, "Most tokens scored")->check(CLI::PositiveNumber)->capture_default_str();
  c->add_option("--max-seq-len", o->max_seq_len, "Extend the RoPE table (evaluate beyond the training length)");
  c->add_option("--threads", o->threads, "OpenMP threads (0 = all cores)");
  c->add_option("--json", o->json, "Also write the result to this JSON file");
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
