// Task documents (text/tasks.hpp) mixed into training batches of real text, generated on the fly:
// batch `index` depends only on (seed, index, step), so a resumed run sees the batches an
// uninterrupted one would, with nothing written to disk. The train config's "tasks" section
// (docs/MODEL.md "Retrieval tasks in training") configures it.
#pragma once
#include <longctx/text/corpus.hpp>
#include <longctx/text/tasks.hpp>
#include <nlohmann/json.hpp>

#include <utility>
#include <vector>

namespace longctx {

enum class TaskScoring { all, answer };  // a task document's targets: every token, or its answer only
template <>
struct EnumNames<TaskScoring> {
  static constexpr std::array<const char*, 2> names{"all", "answer"};
};

struct TaskMix {
  double fraction = 0;                              // chance that a sequence of a batch is a task document (0: off)
  std::vector<std::pair<TaskKind, double>> kinds;   // the tasks drawn, with their weights (default: all, equal)
  int64_t min_length = 0, max_length = 0;           // tokens of a task sequence, drawn uniformly (default seq_len)
  int64_t curriculum_steps = 0;                     // > 0: the longest grows from min_length to max_length over these steps
  TaskScoring score = TaskScoring::all;             // all: language modelling on the whole document
  double answer_weight = 1;                         // loss weight of the answer targets (the others weigh 1)
  int64_t eval_docs = 4;                            // held-out documents per task for the logged answer loss

  bool enabled() const { return fraction > 0; }
  // The longest task sequence drawn at `step` (the curriculum).
  int64_t max_length_at(int64_t step) const;
  // Reads the section; lengths default to (and may not exceed) seq_len. Throws naming the field.
  static TaskMix from_json(const nlohmann::json& j, int64_t seq_len);
  nlohmann::json to_json() const;
};

// Training batch `index` at `step`: sequences until batch_tokens inputs, each a task document with
// probability mix.fraction (task drawn by weight, length uniform in [min_length,
// max_length_at(step)], needle depth uniform in [0, 1], filler from `filler`: the training text),
// else a random window of up to seq_len tokens of real text. A task document is cut to the room
// left in the batch; one too short for its task's inserts and query gives way to a real window.
// Answer targets weigh mix.answer_weight (Batch::weights, when it is not 1); with score "answer"
// only they are scored.
Batch mixed_batch(const WindowSampler& windows, const TaskFiller& filler, const Tokenizer& tok, const TaskMix& mix,
                  int64_t seq_len, int64_t batch_tokens, uint64_t seed, uint64_t index, int64_t step);

// Held-out answer losses: for each task, mix.eval_docs documents of max_length + 1 tokens (needles
// at depths (i + 0.5) / eval_docs, filler from `filler`: held-out text), packed into batches of at
// most batch_tokens inputs, only the answer targets scored. Fixed by `seed`.
struct TaskEvalSet {
  TaskKind kind;
  std::vector<Batch> batches;
};
std::vector<TaskEvalSet> task_eval_batches(const TaskFiller& filler, const Tokenizer& tok, const TaskMix& mix,
                                           int64_t batch_tokens, uint64_t seed);

}  // namespace longctx
