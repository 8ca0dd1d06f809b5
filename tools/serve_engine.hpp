// The generation engine behind `longctx serve` (docs/SERVE.md): a bounded queue of requests and
// one thread that decodes every active request together, continuous batching: each step is one
// Transformer::extend_batch over the active sequences, a decode token for each sequence already
// generating and the next prefill chunk of each sequence still reading its prompt (within a
// token budget per step), so a new request prefills and then joins the batch while the others
// keep decoding. The HTTP threads (serve_http.hpp) submit requests and read each one's text as
// it comes through its Job.
#pragma once
#include <longctx/model/sampler.hpp>
#include <longctx/model/transformer.hpp>
#include <longctx/text/tokenizer.hpp>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace longctx::serve {

// What a request asks the engine for (its text already encoded).
struct Request {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  SamplerConfig sampler;
  uint64_t seed = 0;
  std::vector<std::string> stop;  // the text ends before the first of these it would contain
};

// One request's progress, shared by the HTTP thread that waits on it and the engine that feeds it.
class Job {
 public:
  explicit Job(Request r) : request(std::move(r)) {}
  const Request request;

  // What is new since the last call: blocks until there is new text, the job has started (first
  // call only), or it has finished. `error` is set when the engine could not run it.
  struct Update {
    std::string text;
    bool started = false, finished = false;
    std::string finish_reason;  // "stop" (EOS or a stop string), "length" (max_tokens) or "cancelled"
    std::string error;
    int64_t completion_tokens = 0;
  };
  Update next();
  void cancel();  // the client went away: the engine drops the job at its next step
  bool cancelled() const;

  // The engine's side.
  void start();
  void append(const std::string& text);
  void finish(const std::string& reason, int64_t completion_tokens, const std::string& error = "");

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  bool started_ = false, start_reported_ = false, finished_ = false, cancelled_ = false;
  std::string reason_, error_;
  int64_t completion_tokens_ = 0;
};

struct EngineOptions {
  int64_t max_batch = 4;       // sequences decoded together
  int64_t max_queue = 16;      // requests waiting beyond those; more are refused (Busy)
  int64_t prefill_chunk = 512; // prompt tokens per step, over all prefilling sequences
  KVDType kv_dtype = KVDType::f32;
  std::vector<int32_t> eos;    // generation stops at these tokens
};

// Thrown by submit() when the queue is full or the engine is stopping.
struct Busy : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct EngineStats {
  int64_t active = 0, queued = 0, finished = 0, largest_batch = 0;
  bool stopping = false;
};

class Engine {
 public:
  Engine(Transformer& model, const Tokenizer& tokenizer, EngineOptions options);
  ~Engine();

  // Queues a request; throws Busy when max_queue requests already wait, or after stop().
  std::shared_ptr<Job> submit(Request r);
  // The engine loop: runs until stop() and then until its accepted jobs are done (or cancelled).
  void run();
  // finish_accepted: take no new requests, finish the accepted ones, then run() returns;
  // otherwise cancel every job now.
  void stop(bool finish_accepted);
  EngineStats stats() const;

 private:
  struct Sequence;
  void step(std::vector<std::unique_ptr<Sequence>>& active);
  void sample(Sequence& s, const float* logits);
  void emit(Sequence& s, const std::string& text, bool last);

  Transformer& model_;
  const Tokenizer& tokenizer_;
  const EngineOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> queue_;
  int64_t active_ = 0, finished_ = 0, largest_batch_ = 0;
  bool stopping_ = false, cancel_all_ = false;
};

}  // namespace longctx::serve
