#include <longctx/core/error.hpp>
#include <longctx/eval/retrieval.hpp>

#include <algorithm>
#include <chrono>

namespace longctx {

std::vector<int32_t> greedy_complete(Transformer& model, const std::vector<int32_t>& prompt, int64_t n,
                                     int64_t prefill_chunk, const DecodeOptions& decode) {
  LONGCTX_CHECK(!prompt.empty() && n >= 1 && prefill_chunk >= 1, "greedy_complete: needs a prompt, n >= 1 and "
                "prefill_chunk >= 1, got ", prompt.size(), " tokens, n = ", n, ", chunk ", prefill_chunk);
  DecodeState st = model.new_decode_state(int64_t(prompt.size()) + n - 1, decode);
  const int64_t V = model.config().vocab_size;
  Tensor logits = model.prefill(st, prompt, prefill_chunk);
  std::vector<int32_t> out;
  for (;;) {
    const float* last = logits.f32() + (logits.shape()[0] - 1) * V;
    out.push_back(int32_t(std::max_element(last, last + V) - last));  // first maximum: lowest id
    if (int64_t(out.size()) == n) return out;
    logits = model.extend(st, {out.back()});
  }
}

uint64_t task_trial_seed(uint64_t seed, TaskKind kind, int64_t length, size_t depth_index, int64_t trial) {
  return seed_mix(seed_mix(seed_mix(seed_mix(seed, uint64_t(kind)), uint64_t(length)), depth_index), uint64_t(trial));
}

int64_t task_grid_capacity(const TaskGridOptions& o) {
  return o.lengths.empty() ? 0 : *std::max_element(o.lengths.begin(), o.lengths.end());
}

TaskGrid evaluate_tasks(Transformer& model, const Tokenizer& tok, const TaskFiller& filler, const TaskGridOptions& o) {
  LONGCTX_CHECK(!o.kinds.empty() && !o.lengths.empty() && !o.depths.empty(),
                "retrieval: give at least one task, one length and one depth");
  LONGCTX_CHECK(o.trials >= 1, "retrieval: trials must be >= 1, got ", o.trials);
  for (double d : o.depths) LONGCTX_CHECK(d >= 0.0 && d <= 1.0, "retrieval: depth must be in [0, 1], got ", d);
  LONGCTX_CHECK(task_grid_capacity(o) <= model.config().max_seq_len, "retrieval: length ", task_grid_capacity(o),
                " exceeds the model's max_seq_len ", model.config().max_seq_len,
                " (raise it with --max-seq-len: RoPE extends to any length)");
  const auto t0 = std::chrono::steady_clock::now();
  TaskGrid g{{}, 0.0, 0.0, 0.0};
  int64_t correct = 0;
  double partial = 0;
  const int64_t total = int64_t(o.kinds.size() * o.lengths.size() * o.depths.size());
  for (TaskKind kind : o.kinds)
    for (int64_t length : o.lengths)
      for (size_t d = 0; d < o.depths.size(); ++d) {
        const auto c0 = std::chrono::steady_clock::now();
        TaskCell cell{kind, length, o.depths[d], o.trials, 0, 0.0, 0.0, 0.0, {}};
        for (int64_t t = 0; t < o.trials; ++t) {
          const uint64_t seed = task_trial_seed(o.seed, kind, length, d, t);
          const TaskPrompt task = make_task_prompt(kind, o.depths[d], seed);
          const int64_t answer = int64_t(tok.encode(task.answer).size()), fixed = task_fixed_tokens(task, tok);
          LONGCTX_CHECK(length - answer >= fixed, "retrieval: length ", length, " is too short for the ",
                        enum_name(kind), " task (its inserts, query and answer take ", fixed + answer, " tokens)");
          const TaskExample ex = place_task(task, filler, tok, length - answer, seed);
          const std::string said =
              tok.decode(greedy_complete(model, ex.prompt_tokens, answer, o.prefill_chunk, o.decode));
          const TaskScore s = score_answer(task, said);
          cell.correct += s.exact;
          cell.partial += s.partial;
          if (t == 0) cell.sample = said;
        }
        correct += cell.correct;
        partial += cell.partial;
        cell.accuracy = double(cell.correct) / double(cell.trials);
        cell.partial /= double(cell.trials);
        cell.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
        g.cells.push_back(cell);
        if (o.progress) o.progress(int64_t(g.cells.size()), total, cell);
      }
  g.accuracy = double(correct) / double(total * o.trials);
  g.partial = partial / double(total * o.trials);
  g.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return g;
}

}  // namespace longctx
