// Retrieval accuracy: the tasks of text/tasks.hpp (passkey, and the RULER-style set: multi-key
// needle, multi-value, variable tracking, key-value recall, copy) on a grid of context lengths x
// needle depths x trials, in held-out filler. The model reads each prompt into its KV caches and
// produces the answer greedily; exact match and partial credit per cell (text/tasks.hpp
// score_answer). `longctx eval` runs it as its passkey test and as its RULER grid.
#pragma once
#include <longctx/model/transformer.hpp>
#include <longctx/text/tasks.hpp>

#include <functional>
#include <string>
#include <vector>

namespace longctx {

// Greedy completion over the KV cache (Transformer::extend, a decode state of `decode`): the prompt
// is prefilled in chunks of at most `prefill_chunk` tokens (bounding the [chunk, vocab] logits),
// then `n` tokens are produced one decode step each (the last is not fed back). Ties go to the
// lower token id.
std::vector<int32_t> greedy_complete(Transformer& model, const std::vector<int32_t>& prompt, int64_t n,
                                     int64_t prefill_chunk = 2048, const DecodeOptions& decode = {});

struct TaskCell {
  TaskKind kind;
  int64_t length;
  double depth;
  int64_t trials, correct;  // correct: exact matches
  double accuracy, partial, seconds;  // partial: mean fraction of the answer's items produced
  std::string sample;  // the first trial's completion (what the model said)
};

struct TaskGridOptions {
  std::vector<TaskKind> kinds{TaskKind::passkey};
  std::vector<int64_t> lengths;  // tokens of prompt + answer: the positions the model reads and writes
  std::vector<double> depths;    // of the asked needle, in [0, 1]
  int64_t trials = 5;            // examples per cell
  uint64_t seed = 1;
  int64_t prefill_chunk = 2048;
  DecodeOptions decode;  // KV cache storage and cascade pruning of the decode states
  // Called after every cell: cells done, cells in all, and the cell just finished.
  std::function<void(int64_t done, int64_t total, const TaskCell& cell)> progress;
};

struct TaskGrid {
  std::vector<TaskCell> cells;  // kinds outer, then lengths, then depths
  double accuracy, partial;     // over all trials
  double seconds;
};

// The seed of trial t of cell (kind, length, depth index d) of a grid seeded by `seed`.
uint64_t task_trial_seed(uint64_t seed, TaskKind kind, int64_t length, size_t depth_index, int64_t trial);

// The model's max_seq_len must be at least this (the longest length).
int64_t task_grid_capacity(const TaskGridOptions& o);

// Trial t of cell (kind, length, depth index d) is the example make_task_prompt/place_task make
// from task_trial_seed(seed, kind, length, d, t): a cell's examples do not depend on the rest of
// the grid. Its prompt has length - (answer tokens) tokens; the completion has the answer's token count.
TaskGrid evaluate_tasks(Transformer& model, const Tokenizer& tok, const TaskFiller& filler, const TaskGridOptions& o);

}  // namespace longctx
