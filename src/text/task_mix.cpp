#include <longctx/core/error.hpp>
#include <longctx/text/task_mix.hpp>

#include <cmath>

#include "core/json_fields.hpp"

namespace longctx {

int64_t TaskMix::max_length_at(int64_t step) const {
  if (curriculum_steps == 0 || step >= curriculum_steps) return max_length;
  return min_length + (max_length - min_length) * step / curriculum_steps;
}

TaskMix TaskMix::from_json(const nlohmann::json& j, int64_t seq_len) {
  const std::string what = "train config: tasks";
  LONGCTX_CHECK(j.is_object(), what, " must be an object, got ", j.dump());
  check_known_fields(j, {"fraction", "kinds", "min_length", "max_length", "curriculum_steps", "score", "answer_weight",
                         "eval_docs"},
                     what.c_str());
  TaskMix m;
  m.fraction = read_value(j, "fraction", m.fraction, what);
  m.min_length = read_value(j, "min_length", seq_len, what);
  m.max_length = read_value(j, "max_length", seq_len, what);
  m.curriculum_steps = read_value(j, "curriculum_steps", m.curriculum_steps, what);
  m.score = enum_from_name<TaskScoring>(read_value<std::string>(j, "score", enum_name(m.score), what),
                                        "train config: tasks.score");
  m.answer_weight = read_value(j, "answer_weight", m.answer_weight, what);
  m.eval_docs = read_value(j, "eval_docs", m.eval_docs, what);
  const nlohmann::json kinds = j.value("kinds", nlohmann::json());
  if (kinds.is_null()) {
    for (TaskKind k : all_task_kinds()) m.kinds.push_back({k, 1.0});
  } else {  // ["passkey", ...] (equal weights) or {"passkey": 2, ...}
    LONGCTX_CHECK(kinds.is_array() || kinds.is_object(), what,
                  ".kinds must be a list of task names or an object of weights, got ", kinds.dump());
    for (const auto& [key, value] : kinds.items()) {
      LONGCTX_CHECK(kinds.is_array() ? value.is_string() : value.is_number(), what, ".kinds: ",
                    kinds.is_array() ? "each entry must be a task name" : "each weight must be a number", ", got ",
                    value.dump());
      const std::string name = kinds.is_array() ? value.get<std::string>() : key;
      const double weight = kinds.is_array() ? 1.0 : value.get<double>();
      const TaskKind k = enum_from_name<TaskKind>(name, "train config: tasks.kinds");
      for (const auto& [seen, w] : m.kinds) LONGCTX_CHECK(seen != k, what, ".kinds names '", name, "' twice");
      LONGCTX_CHECK(weight > 0 && std::isfinite(weight), what, ".kinds: the weight of ", name, " must be > 0, got ", weight);
      m.kinds.push_back({k, weight});
    }
    LONGCTX_CHECK(!m.kinds.empty(), what, ".kinds must name at least one task");
  }
  LONGCTX_CHECK(m.fraction >= 0 && m.fraction <= 1, what, ".fraction must be in [0, 1], got ", m.fraction);
  LONGCTX_CHECK(m.min_length >= 1 && m.min_length <= m.max_length && m.max_length <= seq_len, what,
                ": need 1 <= min_length <= max_length <= seq_len = ", seq_len, ", got min_length ", m.min_length,
                " and max_length ", m.max_length);
  LONGCTX_CHECK(m.curriculum_steps >= 0, what, ".curriculum_steps must be >= 0 (0: none), got ", m.curriculum_steps);
  LONGCTX_CHECK(m.answer_weight > 0 && std::isfinite(m.answer_weight), what, ".answer_weight must be > 0, got ",
                m.answer_weight);
  LONGCTX_CHECK(m.eval_docs >= 0, what, ".eval_docs must be >= 0, got ", m.eval_docs);
  return m;
}

nlohmann::json TaskMix::to_json() const {
  nlohmann::json kinds_json = nlohmann::json::object();
  for (const auto& [k, w] : kinds) kinds_json[enum_name(k)] = w;
  return {{"fraction", fraction},         {"kinds", kinds_json},        {"min_length", min_length},
          {"max_length", max_length},     {"curriculum_steps", curriculum_steps}, {"score", enum_name(score)},
          {"answer_weight", answer_weight}, {"eval_docs", eval_docs}};
}

namespace {

// Appends a task document as one sequence; its answer targets (those predicting tokens from
// answer_begin on) weigh `answer_weight`, and with answer_only the others are not scored.
void append_task(Batch& b, const TaskDocument& doc, bool answer_only, float answer_weight) {
  const int64_t first = b.size(), len = int64_t(doc.tokens.size()) - 1, answer = first + doc.answer_begin - 1;
  append_sequence(b, doc.tokens, 0, len);
  if (answer_only) std::fill(b.targets.begin() + first, b.targets.begin() + answer, -1);
  if (answer_weight != 1.0f) {
    b.weights.resize(size_t(first), 1.0f);  // the sequences before weigh 1
    b.weights.resize(size_t(answer), 1.0f);
    b.weights.resize(size_t(b.size()), answer_weight);
  }
}

TaskKind draw_kind(const TaskMix& mix, std::mt19937_64& rng) {
  double total = 0;
  for (const auto& [k, w] : mix.kinds) total += w;
  double r = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (const auto& [k, w] : mix.kinds)
    if ((r -= w) < 0) return k;
  return mix.kinds.back().first;
}

}  // namespace

Batch mixed_batch(const WindowSampler& windows, const TaskFiller& filler, const Tokenizer& tok, const TaskMix& mix,
                  int64_t seq_len, int64_t batch_tokens, uint64_t seed, uint64_t index, int64_t step) {
  LONGCTX_CHECK(seq_len > 0 && batch_tokens > 0 && !mix.kinds.empty(), "mixed_batch: needs seq_len and batch_tokens > 0 "
                "and a task, got ", seq_len, ", ", batch_tokens, " and ", mix.kinds.size(), " tasks");
  std::mt19937_64 rng(seed_mix(seed_mix(seed, 0x7A5C41), index));
  Batch b;
  while (b.size() < batch_tokens) {
    const int64_t room = std::min(seq_len, batch_tokens - b.size());
    if (std::uniform_real_distribution<double>(0.0, 1.0)(rng) < mix.fraction) {
      const int64_t len = std::uniform_int_distribution<int64_t>(mix.min_length, mix.max_length_at(step))(rng);
      const TaskKind kind = draw_kind(mix, rng);
      const double depth = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
      const uint64_t doc_seed = rng();
      if (const auto doc = make_task_document(kind, filler, tok, std::min(len, room) + 1, depth, doc_seed)) {
        append_task(b, *doc, mix.score == TaskScoring::answer, float(mix.answer_weight));
        continue;
      }
    }
    windows.append(b, rng, room);
  }
  if (!b.weights.empty()) b.weights.resize(size_t(b.size()), 1.0f);
  return b;
}

std::vector<TaskEvalSet> task_eval_batches(const TaskFiller& filler, const Tokenizer& tok, const TaskMix& mix,
                                           int64_t batch_tokens, uint64_t seed) {
  std::vector<TaskEvalSet> out;
  for (const auto& [kind, weight] : mix.kinds) {
    TaskEvalSet set{kind, {}};
    Batch b;
    for (int64_t i = 0; i < mix.eval_docs; ++i) {
      const double depth = (double(i) + 0.5) / double(mix.eval_docs);
      const auto doc = make_task_document(kind, filler, tok, mix.max_length + 1, depth,
                                          seed_mix(seed_mix(seed_mix(seed, 0xE7A1), uint64_t(kind)), uint64_t(i)));
      LONGCTX_CHECK(doc.has_value(), "train config: tasks.max_length ", mix.max_length, " is too short for the ",
                    enum_name(kind), " task");
      if (b.size() > 0 && b.size() + mix.max_length > batch_tokens) set.batches.push_back(std::exchange(b, Batch{}));
      append_task(b, *doc, true, 1.0f);
    }
    if (b.size() > 0) set.batches.push_back(std::move(b));
    out.push_back(std::move(set));
  }
  return out;
}

}  // namespace longctx
