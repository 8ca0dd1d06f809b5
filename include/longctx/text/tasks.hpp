// Synthetic long-range retrieval tasks in real filler text, RULER-style (Hsieh et al., "RULER:
// What's the Real Context Size of Your Long-Context Language Models?", arXiv 2404.06654; the
// passkey test of Mohtashami & Jaggi 2023). One generator serves both the training mix
// (text/task_mix.hpp: task documents mixed into the corpus) and `longctx eval` (eval/retrieval.hpp),
// so the model is scored on exactly the format it trained on. The formats are written down in
// tasks.cpp only; docs/EVAL.md shows an example of each.
//
// An example is filler text with a few inserted lines (needles) at chosen depths, then a query;
// the model must continue the query with the answer:
//   <filler> The pass key is 71432. Remember it. 71432 is the pass key.\n <filler> What is the pass
//   key? The pass key is| 71432
// Needles and the query sit at unit boundaries of the filler (a unit is a line, or a sentence
// ending in . ! or ? and a space), never inside a word.
#pragma once
#include <longctx/core/fields.hpp>
#include <longctx/text/tokenizer.hpp>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace longctx {

enum class TaskKind {
  passkey,     // one 5-digit key
  multikey,    // four labelled keys, one asked (the others are distractors)
  multivalue,  // one label with four keys, all asked
  vartrack,    // a chain VAR A = 12345, VAR B = VAR A, ... (and a distractor chain); which variables hold the value?
  kvrecall,    // a table of six key-value pairs, one key asked
  copy,        // a code identifier declared once, asked for at the end
};
template <>
struct EnumNames<TaskKind> {
  static constexpr std::array<const char*, 6> names{"passkey", "multikey", "multivalue", "vartrack", "kvrecall", "copy"};
};
std::vector<TaskKind> all_task_kinds();

// A step of splitmix64 over a running hash: seeds derived from (seed, a, b, ...) by folding.
uint64_t seed_mix(uint64_t h, uint64_t v);

// Filler text cut into units: lines, and sentences within a line (after . ! or ? followed by
// spaces). A run of more than kMaxUnitChars characters with neither is cut after its last space
// (after kMaxUnitChars characters, at a UTF-8 character start, when it has none).
class TaskFiller {
 public:
  static constexpr size_t kMaxUnitChars = 256;
  // The documents joined by "\n", with a final "\n"; throws when there is no non-blank text.
  explicit TaskFiller(const std::vector<std::string>& docs);
  size_t units() const { return starts_.size(); }
  std::string_view unit(size_t i) const;
  // The first unit starting at or after character `offset` (unit 0 past the last start).
  size_t unit_at(size_t offset) const;
  size_t chars() const { return text_.size(); }

 private:
  std::string text_;
  std::vector<size_t> starts_;  // unit i is text_[starts_[i], starts_[i + 1]) (the last ends at text_'s end)
};

// A task before it is placed in filler: the text of its inserts, each with its depth in [0, 1]
// (in document order), the query the prompt ends with, the answer that follows it, and the items
// a correct answer holds (one, or several that must all be present).
struct TaskPrompt {
  struct Insert {
    std::string text;  // a whole line: ends with "\n"
    double depth;
  };
  TaskKind kind;
  std::vector<Insert> inserts;
  std::string query, answer;
  std::vector<std::string> items;
};

// The task of `kind` with its asked insert at `depth` (the first insert of multivalue and the
// chain's start of vartrack; distractors and the other values at random depths; the chain's
// later links after its start). Keys, labels and names come from `seed`.
TaskPrompt make_task_prompt(TaskKind kind, double depth, uint64_t seed);

struct TaskExample {
  TaskPrompt task;
  std::string prompt;                  // decode(prompt_tokens)
  std::vector<int32_t> prompt_tokens;  // exactly the requested length
  std::vector<int32_t> answer_tokens;  // tokenize(answer)
  std::vector<int64_t> insert_tokens;  // where each insert starts in prompt_tokens
};

// Tokens of the inserts and the query: a prompt needs at least this many.
int64_t task_fixed_tokens(const TaskPrompt& task, const Tokenizer& tok);

// Places the task in filler: a prompt of exactly `length` tokens, filler from a random unit of
// `filler` (from `seed`; continuing at its first unit past its end), each insert at the unit
// boundary nearest to round(depth * filler tokens) (depth 0: the prompt's first token; 1: just
// before the query), the query at the end. Filler, inserts and query are tokenized unit by unit
// and concatenated (for bytes the same as tokenizing the text; for SentencePiece, which splits
// at whitespace, the same up to its normalisation); only the first unit may be cut, at a token,
// to make the length exact. Throws when `length` < task_fixed_tokens().
TaskExample place_task(const TaskPrompt& task, const TaskFiller& filler, const Tokenizer& tok, int64_t length,
                       uint64_t seed);

// make_task_prompt then place_task under one seed.
TaskExample make_task_example(TaskKind kind, const TaskFiller& filler, const Tokenizer& tok, int64_t length,
                              double depth, uint64_t seed);

// A training document of exactly `tokens` tokens: a prompt, then tokenize(answer + "\n") from
// index answer_begin. nullopt when `tokens` cannot hold the task's inserts, query and answer.
struct TaskDocument {
  std::vector<int32_t> tokens;
  int64_t answer_begin;
};
std::optional<TaskDocument> make_task_document(TaskKind kind, const TaskFiller& filler, const Tokenizer& tok,
                                               int64_t tokens, double depth, uint64_t seed);

// Exact match and partial credit of a completion. One item: correct when the completion, after
// leading whitespace, starts with it and no letter, digit or '_' follows (partial = 0 or 1).
// Several: partial is the fraction of items found among the completion's words (runs of letters,
// digits and '_'), exact when all are.
struct TaskScore {
  bool exact;
  double partial;
};
TaskScore score_answer(const TaskPrompt& task, const std::string& completion);

}  // namespace longctx
