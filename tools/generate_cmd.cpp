// `longctx generate`: stream text from a checkpoint.
#include <fmt/core.h>
#include <longctx/error.hpp>
#include <longctx/model/sampler.hpp>
#include <longctx/train/tokenizer.hpp>
#include <longctx/train/trainer.hpp>

#include <chrono>
#include <cstdio>

#include "commands.hpp"
#include "core/parallel.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string checkpoint, prompt = "\n";
  int64_t tokens = 200;
  SamplerConfig sampler;
  uint64_t seed = 1;
  int threads = 0;
};

void run(const Options& o) {
  if (o.threads > 0) parallel::set_threads(o.threads);
  std::string tok_spec;
  Transformer model = load_model(o.checkpoint, &tok_spec);
  const auto tok = make_tokenizer(tok_spec);
  std::vector<int32_t> ids = tok->encode(o.prompt);
  LONGCTX_CHECK(!ids.empty(), "generate: the prompt encodes to no tokens");
  std::mt19937_64 rng(o.seed);
  const int64_t window = model.config().max_seq_len, V = model.config().vocab_size;
  std::fputs(o.prompt.c_str(), stdout);
  std::string shown = tok->decode(ids);
  const auto t0 = std::chrono::steady_clock::now();
  // Without a KV cache yet: each step runs the model over the last max_seq_len tokens.
  for (int64_t i = 0; i < o.tokens; ++i) {
    const int64_t n = std::min<int64_t>(int64_t(ids.size()), window);
    Batch b;
    b.tokens.assign(ids.end() - n, ids.end());
    b.cu_seqlens = {0, n};
    const Tensor logits = model.logits(b);
    ids.push_back(sample_token(logits.f32() + (n - 1) * V, V, o.sampler, rng));
    const std::string text = tok->decode(ids);  // print only what the new token added
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) std::fputs(text.c_str() + shown.size(), stdout);
    std::fflush(stdout);
    shown = text;
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(stderr, "\n[{} tokens in {:.2f} s: {:.1f} tokens/s]\n", o.tokens, dt, double(o.tokens) / dt);
}

}  // namespace

void add_generate(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("generate", "Stream text from a checkpoint");
  c->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors written by `longctx train`")->required();
  c->add_option("--prompt", o->prompt, "Text to continue")->capture_default_str();
  c->add_option("--tokens", o->tokens, "Tokens to generate")->check(CLI::NonNegativeNumber)->capture_default_str();
  c->add_option("--temperature", o->sampler.temperature, "0 = greedy")->capture_default_str();
  c->add_option("--top-k", o->sampler.top_k, "Keep the k most likely tokens (0 = all)")->capture_default_str();
  c->add_option("--top-p", o->sampler.top_p, "Nucleus sampling threshold")->capture_default_str();
  c->add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
  c->add_option("--threads", o->threads, "OpenMP threads (0 = all cores)");
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
