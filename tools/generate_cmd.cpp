// `longctx generate`: stream text from a checkpoint.
#include <fmt/core.h>
#include <longctx/model/checkpoint.hpp>
#include <longctx/core/threads.hpp>
#include <longctx/core/error.hpp>
#include <longctx/core/memory.hpp>
#include <longctx/model/sampler.hpp>
#include <longctx/text/tokenizer.hpp>
#include <longctx/train/trainer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "commands.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string checkpoint, prompt = "\n";
  int64_t tokens = 200;
  SamplerConfig sampler;
  uint64_t seed = 1;
};

void run(const Options& o) {
  o.sampler.validate();  // before anything is printed
  std::string tok_spec;
  Transformer model = load_model(o.checkpoint, &tok_spec);
  const auto tok = make_tokenizer(tok_spec);
  std::vector<int32_t> ids = tok->encode(o.prompt);
  LONGCTX_CHECK(!ids.empty(), "generate: the prompt encodes to no tokens");
  const int64_t total = int64_t(ids.size()) + o.tokens, V = model.config().vocab_size;
  ModelConfig extended = model.config();
  extended.max_seq_len = std::max(total, extended.max_seq_len);
  memory::require_fits(model_bytes(extended) + decode_state_bytes(extended, total, DType::f32),
                       concat("generate: ", ids.size(), " prompt + ", o.tokens, " new tokens (the weights, a RoPE table and ",
                              "KV caches of ", total, " positions)"));
  if (total > model.config().max_seq_len) {
    fmt::print(stderr, "note: {} prompt + {} new tokens run past the {} positions the model was trained on; RoPE "
               "extends, but quality past position {} is untested\n",
               ids.size(), o.tokens, model.config().max_seq_len, model.config().max_seq_len);
    model = load_model(o.checkpoint, nullptr, total);  // RoPE extends
  }
  std::mt19937_64 rng(o.seed);
  DecodeState state = model.new_decode_state(total);
  std::fputs(o.prompt.c_str(), stdout);
  std::string shown = tok->decode(ids);
  const auto t0 = std::chrono::steady_clock::now();
  Tensor logits = model.extend(state, ids);  // prefill
  const auto t1 = std::chrono::steady_clock::now();
  const float* last = logits.f32() + (int64_t(ids.size()) - 1) * V;
  for (int64_t i = 0; i < o.tokens; ++i) {
    ids.push_back(sample_token(last, V, o.sampler, rng));
    const std::string text = tok->decode(ids);  // print only what the new token added
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) std::fputs(text.c_str() + shown.size(), stdout);
    std::fflush(stdout);
    shown = text;
    if (i + 1 < o.tokens) {
      logits = model.extend(state, {ids.back()});  // one decode step over the decode state
      last = logits.f32();
    }
  }
  const auto t2 = std::chrono::steady_clock::now();
  const double prefill = std::chrono::duration<double>(t1 - t0).count(), decode = std::chrono::duration<double>(t2 - t1).count();
  fmt::print(stderr, "\n[prefill {} tokens in {:.3f} s; decoded {} tokens in {:.2f} s: {:.1f} tokens/s]\n",
             ids.size() - size_t(o.tokens), prefill, o.tokens, decode, double(o.tokens) / decode);
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
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
