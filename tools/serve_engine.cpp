#include "serve_engine.hpp"

#include <longctx/core/error.hpp>
#include <longctx/text/detokenizer.hpp>

#include <algorithm>
#include <random>

namespace longctx::serve {

Job::Update Job::next() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return !pending_.empty() || finished_ || (started_ && !start_reported_); });
  Update u;
  u.started = started_;
  start_reported_ = started_;
  u.text = std::move(pending_);
  pending_.clear();
  u.finished = finished_;
  u.finish_reason = reason_;
  u.error = error_;
  u.completion_tokens = completion_tokens_;
  return u;
}

void Job::cancel() {
  std::lock_guard<std::mutex> lk(mu_);
  cancelled_ = true;
}

bool Job::cancelled() const {
  std::lock_guard<std::mutex> lk(mu_);
  return cancelled_;
}

void Job::start() {
  std::lock_guard<std::mutex> lk(mu_);
  started_ = true;
  cv_.notify_all();
}

void Job::append(const std::string& text) {
  if (text.empty()) return;
  std::lock_guard<std::mutex> lk(mu_);
  pending_ += text;
  cv_.notify_all();
}

void Job::finish(const std::string& reason, int64_t completion_tokens, const std::string& error) {
  std::lock_guard<std::mutex> lk(mu_);
  started_ = finished_ = true;
  reason_ = reason;
  error_ = error;
  completion_tokens_ = completion_tokens;
  cv_.notify_all();
}

// A job the engine holds: queued, prefilling its prompt, or generating.
struct Engine::Sequence {
  explicit Sequence(std::shared_ptr<Job> j) : job(std::move(j)) {}
  std::shared_ptr<Job> job;
  std::optional<DecodeState> state;       // made when the job starts (a queued job holds no cache)
  std::optional<StreamDecoder> decoder;
  std::mt19937_64 rng;
  int64_t prefilled = 0;  // prompt tokens in the state
  int32_t next = -1;      // the sampled token to feed at the next step
  int64_t generated = 0;
  std::string held;       // text that may be the start of a stop string
  bool done = false;

  bool prefilling() const { return prefilled < int64_t(job->request.prompt.size()); }
};

Engine::Engine(Transformer& model, const Tokenizer& tokenizer, EngineOptions options)
    : model_(model), tokenizer_(tokenizer), options_(std::move(options)) {
  LONGCTX_CHECK(options_.max_batch >= 1 && options_.max_queue >= 0 && options_.prefill_chunk >= 1,
                "serve: needs max_batch >= 1, max_queue >= 0 and prefill_chunk >= 1, got ", options_.max_batch, ", ",
                options_.max_queue, ", ", options_.prefill_chunk);
}

Engine::~Engine() = default;

std::shared_ptr<Job> Engine::submit(Request r) {
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_) throw Busy("the server is shutting down");
  if (active_ + int64_t(queue_.size()) >= options_.max_batch + options_.max_queue)
    throw Busy(concat("the server is busy: ", active_, " requests running and ", queue_.size(), " waiting (--max-batch ",
                      options_.max_batch, ", --queue ", options_.max_queue, "); retry later"));
  auto job = std::make_shared<Job>(std::move(r));
  queue_.push_back(std::make_unique<Sequence>(job));
  cv_.notify_all();
  return job;
}

void Engine::stop(bool finish_accepted) {
  std::lock_guard<std::mutex> lk(mu_);
  stopping_ = true;
  cancel_all_ |= !finish_accepted;
  cv_.notify_all();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return {active_, int64_t(queue_.size()), finished_, largest_batch_, stopping_};
}

void Engine::run() {
  std::vector<std::unique_ptr<Sequence>> active;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || !active.empty(); });
      if (cancel_all_) {  // a second signal: everything ends now
        for (const auto& s : queue_) s->job->finish("cancelled", 0);
        for (const auto& s : active) s->job->finish("cancelled", s->generated);
        finished_ += int64_t(queue_.size() + active.size());
        queue_.clear();
        active_ = 0;
        return;
      }
      while (int64_t(active.size()) < options_.max_batch && !queue_.empty()) {
        active.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      active_ = int64_t(active.size());
      if (active.empty()) {
        if (stopping_) return;
        continue;
      }
    }
    step(active);  // the model runs without the lock: the HTTP threads keep submitting and reading
    std::lock_guard<std::mutex> lk(mu_);
    const auto done = std::remove_if(active.begin(), active.end(), [](const auto& s) { return s->done; });
    finished_ += int64_t(active.end() - done);
    active.erase(done, active.end());
    active_ = int64_t(active.size());
  }
}

void Engine::step(std::vector<std::unique_ptr<Sequence>>& active) {
  std::vector<DecodeState*> states;
  std::vector<std::vector<int32_t>> runs;
  std::vector<Sequence*> members;
  int64_t budget = options_.prefill_chunk;  // prompt tokens this step, over all prefilling sequences
  for (const auto& p : active) {
    Sequence& s = *p;
    if (s.job->cancelled()) {
      s.job->finish("cancelled", s.generated);
      s.done = true;
      continue;
    }
    const std::vector<int32_t>& prompt = s.job->request.prompt;
    if (!s.state) {  // starts: its cache, detokeniser and sampler
      try {
        s.state = model_.new_decode_state(int64_t(prompt.size()) + s.job->request.max_tokens, options_.kv_dtype);
      } catch (const std::exception& e) {
        s.job->finish("error", 0, message_of(e));
        s.done = true;
        continue;
      }
      s.decoder.emplace(tokenizer_, prompt);
      s.rng.seed(s.job->request.seed);
      s.job->start();
    }
    if (s.prefilling()) {
      if (budget == 0) continue;
      const int64_t n = std::min(budget, int64_t(prompt.size()) - s.prefilled);
      runs.emplace_back(prompt.begin() + s.prefilled, prompt.begin() + s.prefilled + n);
      s.prefilled += n;
      budget -= n;
    } else {
      runs.push_back({s.next});
    }
    states.push_back(&*s.state);
    members.push_back(&s);
  }
  if (runs.empty()) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    largest_batch_ = std::max(largest_batch_, int64_t(runs.size()));
  }
  Tensor logits;
  try {
    logits = model_.extend_batch(states, runs);
  } catch (const std::exception& e) {
    for (Sequence* s : members) {
      s->job->finish("error", s->generated, message_of(e));
      s->done = true;
    }
    return;
  }
  int64_t row = 0;
  for (size_t i = 0; i < members.size(); ++i) {
    row += int64_t(runs[i].size());
    Sequence& s = *members[i];
    if (s.prefilling()) continue;
    try {
      sample(s, logits.f32() + (row - 1) * logits.dim(1));
    } catch (const std::exception& e) {
      s.job->finish("error", s.generated, message_of(e));
      s.done = true;
    }
  }
}

void Engine::sample(Sequence& s, const float* logits) {
  const Request& r = s.job->request;
  // only ids the tokenizer has (an imported model's head may have padding rows past them)
  const int64_t V = std::min(model_.config().vocab_size, tokenizer_.vocab_size());
  const int32_t token = sample_token(logits, V, r.sampler, s.rng);
  ++s.generated;
  const bool eos = std::find(options_.eos.begin(), options_.eos.end(), token) != options_.eos.end();
  const bool last = eos || s.generated == r.max_tokens;
  std::string text = eos ? "" : s.decoder->push(token);  // EOS ends the text, it is not part of it
  if (last) text += s.decoder->flush();
  emit(s, text, last);
  if (s.done) return;
  if (last) {
    s.job->finish(eos ? "stop" : "length", s.generated);
    s.done = true;
  }
  s.next = token;
}

// Passes text on, ending it before the first stop string; while the text ends with the start of
// one, that part waits (the next tokens decide), unless this is the last text.
void Engine::emit(Sequence& s, const std::string& text, bool last) {
  s.held += text;
  size_t cut = std::string::npos;
  for (const std::string& stop : s.job->request.stop) cut = std::min(cut, s.held.find(stop));
  if (cut != std::string::npos) {
    s.job->append(s.held.substr(0, cut));
    s.job->finish("stop", s.generated);
    s.done = true;
    return;
  }
  size_t keep = 0;
  if (!last)
    for (const std::string& stop : s.job->request.stop)
      for (size_t k = std::min(stop.size() - 1, s.held.size()); k > keep; --k)
        if (s.held.compare(s.held.size() - k, k, stop, 0, k) == 0) {
          keep = k;
          break;
        }
  s.job->append(s.held.substr(0, s.held.size() - keep));
  s.held.erase(0, s.held.size() - keep);
}

}  // namespace longctx::serve
