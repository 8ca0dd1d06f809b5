// `longctx generate`: stream text from a checkpoint.
#include <fmt/core.h>
#include <longctx/model/checkpoint.hpp>
#include <longctx/core/threads.hpp>
#include <longctx/core/error.hpp>
#include <longctx/core/memory.hpp>
#include <longctx/model/sampler.hpp>
#include <longctx/text/detokenizer.hpp>
#include <longctx/text/tokenizer.hpp>
#include <longctx/train/trainer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>

#include "commands.hpp"
#include "common.hpp"
#include "decode_flags.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string checkpoint, prompt = "\n", prompt_file;
  DecodeFlags decode;
  int64_t tokens = 200, prefill_chunk = 2048;
  SamplerConfig sampler;
  uint64_t seed = 1;
};

std::string read_prompt(const Options& o) {
  if (o.prompt_file.empty()) return o.prompt;
  if (o.prompt_file == "-") return {std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
  std::ifstream f(o.prompt_file, std::ios::binary);
  LONGCTX_CHECK(f.good(), "generate: cannot read --prompt-file '", o.prompt_file, "'");
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void run(const Options& o) {
  o.sampler.validate();  // before anything is printed
  const std::string prompt = read_prompt(o);
  const CheckpointInfo info = read_checkpoint_info(o.checkpoint);
  const DecodeOptions decode = o.decode.options("generate", info.model.n_layers);
  const auto tok = make_tokenizer(info.tokenizer, info.tokenizer_model);
  std::vector<int32_t> ids = tok->encode(prompt);
  if (info.special_tokens.bos >= 0) ids.insert(ids.begin(), info.special_tokens.bos);  // imported models
  LONGCTX_CHECK(!ids.empty(), "generate: the prompt encodes to no tokens");
  const int64_t total = int64_t(ids.size()) + o.tokens, trained = info.model.max_seq_len;
  ModelConfig extended = info.model;
  extended.max_seq_len = std::max(total, trained);
  memory::require_fits(model_bytes(extended) + decode_state_bytes(extended, total, decode),
                       concat("generate: ", ids.size(), " prompt + ", o.tokens, " new tokens (the weights, a RoPE table and ",
                              "KV caches of ", total, " positions)"));
  if (total > trained)
    fmt::print(stderr, "note: {} prompt + {} new tokens run past the {} positions the model was trained on; RoPE "
               "extends, but quality past position {} is untested\n", ids.size(), o.tokens, trained, trained);
  Transformer model = load_model(o.checkpoint, nullptr, extended.max_seq_len);  // RoPE extends
  const int64_t V = model.config().vocab_size;
  std::mt19937_64 rng(o.seed);
  DecodeState state = model.new_decode_state(total, decode);
  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  bench::Progress progress("prefill", "tokens");
  Tensor logits = model.prefill(state, ids, o.prefill_chunk,
                                [&](int64_t done, int64_t n) { if (n > o.prefill_chunk) progress.report(double(done), double(n)); });
  const auto t1 = std::chrono::steady_clock::now();
  StreamDecoder out(*tok, ids);  // each new token's text as it comes
  for (int64_t i = 0; i < o.tokens; ++i) {
    ids.push_back(sample_token(logits.f32(), V, o.sampler, rng));
    std::fputs(out.push(ids.back()).c_str(), stdout);
    std::fflush(stdout);
    if (i + 1 < o.tokens) logits = model.extend(state, {ids.back()});  // one decode step over the decode state
  }
  std::fputs(out.flush().c_str(), stdout);
  const auto t2 = std::chrono::steady_clock::now();
  const double prefill = std::chrono::duration<double>(t1 - t0).count(), decode_s = std::chrono::duration<double>(t2 - t1).count();
  const size_t prompt_tokens = ids.size() - size_t(o.tokens);
  fmt::print(stderr, "\n[prefill {} tokens in {:.3f} s ({:.0f} tokens/s); decoded {} tokens in {:.2f} s ({:.1f} tokens/s); "
             "{}]\n", prompt_tokens, prefill, double(prompt_tokens) / prefill, o.tokens, decode_s,
             o.tokens > 0 ? double(o.tokens) / decode_s : 0.0, o.decode.describe());
}

}  // namespace

void add_generate(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("generate", "Stream text from a checkpoint");
  c->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors written by `longctx train`")->required();
  CLI::Option* text = c->add_option("--prompt", o->prompt, "Text to continue")->capture_default_str();
  c->add_option("--prompt-file", o->prompt_file, "Read the text to continue from this file ('-': standard input)")
      ->excludes(text);
  c->add_option("--tokens", o->tokens, "Tokens to generate")->check(CLI::NonNegativeNumber)->capture_default_str();
  c->add_option("--prefill-chunk", o->prefill_chunk, "Prompt tokens per prefill call (bounds the logits held)")
      ->check(at_least(1))->capture_default_str();
  o->decode.add(c);
  c->add_option("--temperature", o->sampler.temperature, "0 = greedy")->capture_default_str();
  c->add_option("--top-k", o->sampler.top_k, "Keep the k most likely tokens (0 = all)")->capture_default_str();
  c->add_option("--top-p", o->sampler.top_p, "Nucleus sampling threshold")->capture_default_str();
  c->add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
