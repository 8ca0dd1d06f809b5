// `longctx serve`: an OpenAI-compatible HTTP server over a checkpoint (docs/SERVE.md). The engine
// (serve_engine.hpp) decodes every active request in one batched step; the HTTP side
// (serve_http.hpp) answers on its own threads. SIGINT / SIGTERM: take no new requests (503),
// finish the accepted ones, then exit 0; a second signal cancels them.
#include <fmt/core.h>
#include <longctx/core/error.hpp>
#include <longctx/core/memory.hpp>
#include <longctx/model/checkpoint.hpp>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <thread>

#include "commands.hpp"
#include "decode_flags.hpp"
#include "serve_http.hpp"

namespace longctx::cli {

namespace {

struct Options {
  std::string checkpoint, host = "127.0.0.1", name, kv_dtype = "f32";
  int port = 8080;
  int64_t max_batch = 4, queue = 16, prefill_chunk = 512, context = 0;
};

void run(const Options& o) {
  // sigwait takes the signals below: blocked before any thread starts, so every thread inherits it
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const CheckpointInfo info = read_checkpoint_info(o.checkpoint);
  const auto tok = make_tokenizer(info.tokenizer, info.tokenizer_model);
  const int64_t context = o.context > 0 ? o.context : info.model.max_seq_len;
  const KVDType kv = enum_from_name<KVDType>(o.kv_dtype, "serve: --kv-dtype");
  ModelConfig cfg = info.model;
  cfg.max_seq_len = context;
  memory::require_fits(model_bytes(cfg) + double(o.max_batch) * decode_state_bytes(cfg, context, kv),
                       concat("serve: the weights and ", o.max_batch, " KV caches (--max-batch) of ", context,
                              " positions (--context)"));
  Transformer model = load_model(o.checkpoint, nullptr, context);  // RoPE computed for `context` positions
  serve::Engine engine(model, *tok, {o.max_batch, o.queue, o.prefill_chunk, kv, info.special_tokens.eos});
  const std::string name = o.name.empty() ? std::filesystem::path(o.checkpoint).stem().string() : o.name;
  serve::HttpServer http(engine, {tok.get(), info.special_tokens, context, name}, int(o.max_batch + o.queue + 4));
  const int port = http.bind(o.host, o.port);

  std::atomic<bool> engine_done{false}, http_done{false}, exiting{false};
  std::thread engine_thread([&] {
    engine.run();
    engine_done = true;
  });
  std::thread http_thread([&] {
    http.listen();
    http_done = true;
  });
  std::thread signal_thread([&] {  // the first signal drains, a second cancels
    for (int seen = 0;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0 || exiting) return;
      const serve::EngineStats s = engine.stats();
      if (++seen == 1) {
        fmt::print(stderr, "longctx serve: {}: finishing {} running and {} waiting requests, then exiting (a second "
                   "signal cancels them)\n", strsignal(sig), s.active, s.queued);
        engine.stop(true);
      } else {
        fmt::print(stderr, "longctx serve: {}: cancelling {} requests\n", strsignal(sig), s.active + s.queued);
        engine.stop(false);
      }
    }
  });
  fmt::print("longctx serve: {} ({} parameters, context {}, batch {}, queue {}) listening on http://{}:{}\n", name,
             model.num_params(), context, o.max_batch, o.queue, o.host, port);
  std::fflush(stdout);
  // Until a signal's drain is over: the engine has finished (or cancelled) every accepted job and
  // every response is written; the listener keeps answering meanwhile (503 to new requests).
  while (!http_done && !(engine_done && http.open_requests() == 0))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  engine.stop(true);  // when the listener ended by itself
  http.stop();
  http_thread.join();
  engine_thread.join();
  exiting = true;
  pthread_kill(signal_thread.native_handle(), SIGTERM);  // wakes its sigwait
  signal_thread.join();
  fmt::print(stderr, "longctx serve: stopped after {} requests\n", engine.stats().finished);
}

}  // namespace

void add_serve(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions "
                                            "(streaming or not), /v1/models, /health");
  c->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors (longctx train, export or import-hf)")
      ->required()->check(CLI::ExistingFile);
  c->add_option("--host", o->host, "Address to listen on")->capture_default_str();
  c->add_option("--port", o->port, "Port (0: any free port, printed at start)")->check(CLI::Range(0, 65535))
      ->capture_default_str();
  c->add_option("--model-name", o->name, "The model's id in responses and /v1/models (default: the file's stem)");
  c->add_option("--max-batch", o->max_batch, "Requests decoded together in one batched step")->check(at_least(1))
      ->capture_default_str();
  c->add_option("--queue", o->queue, "Requests that may wait beyond those; more get 503")->check(at_least(0))
      ->capture_default_str();
  c->add_option("--context", o->context, "Prompt + max_tokens of a request at most (default: the model's max_seq_len)")
      ->check(at_least(1));
  c->add_option("--prefill-chunk", o->prefill_chunk, "Prompt tokens per step, over all requests reading their prompts")
      ->check(at_least(1))->capture_default_str();
  add_kv_dtype_option(c, o->kv_dtype);
  c->callback([o] { run(*o); });
}

}  // namespace longctx::cli
