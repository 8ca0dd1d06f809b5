#include <longctx/core/error.hpp>
#include <longctx/text/tasks.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <random>
#include <set>

namespace longctx {

std::vector<TaskKind> all_task_kinds() {
  std::vector<TaskKind> v;
  for (size_t i = 0; i < EnumNames<TaskKind>::names.size(); ++i) v.push_back(TaskKind(i));
  return v;
}

uint64_t seed_mix(uint64_t h, uint64_t v) {
  h += v + 0x9E3779B97F4A7C15ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

// ---- filler ----------------------------------------------------------------------------------

TaskFiller::TaskFiller(const std::vector<std::string>& docs) {
  for (const std::string& d : docs) {
    if (!text_.empty()) text_.push_back('\n');
    text_ += d;
  }
  LONGCTX_CHECK(text_.find_first_not_of(" \n\t\r") != std::string::npos,
                "tasks: the filler text is empty (no non-blank text)");
  if (text_.back() != '\n') text_.push_back('\n');
  const auto is_space = [&](size_t i) { return text_[i] == ' ' || text_[i] == '\t'; };
  const auto utf8_start = [&](size_t i) { return (static_cast<unsigned char>(text_[i]) & 0xC0) != 0x80; };
  size_t start = 0;
  starts_.push_back(0);
  for (size_t i = 0; i < text_.size(); ++i) {
    size_t end = 0;  // the unit [start, end) is complete
    if (text_[i] == '\n') {
      end = i + 1;
    } else if ((text_[i] == '.' || text_[i] == '!' || text_[i] == '?') && i + 1 < text_.size() && is_space(i + 1)) {
      end = i + 1;
      while (end < text_.size() && is_space(end)) ++end;
      i = end - 1;
    } else if (i + 1 - start >= kMaxUnitChars) {  // a long run: cut after its last space, else at a character start
      const size_t space = text_.find_last_of(" \t", i);
      end = space != std::string::npos && space > start ? space + 1 : i + 1;
      while (end < text_.size() && end > start + 1 && !utf8_start(end)) --end;
      i = end - 1;
    }
    if (end == 0) continue;
    if (end < text_.size()) starts_.push_back(end);
    start = end;
  }
}

std::string_view TaskFiller::unit(size_t i) const {
  LONGCTX_CHECK(i < starts_.size(), "tasks: unit ", i, " of ", starts_.size());
  const size_t end = i + 1 < starts_.size() ? starts_[i + 1] : text_.size();
  return std::string_view(text_).substr(starts_[i], end - starts_[i]);
}

size_t TaskFiller::unit_at(size_t offset) const {
  const size_t i = size_t(std::lower_bound(starts_.begin(), starts_.end(), offset) - starts_.begin());
  return i == starts_.size() ? 0 : i;
}

// ---- the formats -----------------------------------------------------------------------------

namespace {

using Rng = std::mt19937_64;

std::string number5(Rng& rng) { return std::to_string(std::uniform_int_distribution<int>(10000, 99999)(rng)); }

std::string letters(Rng& rng, int n, char first) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(char(first + std::uniform_int_distribution<int>(0, 25)(rng)));
  return s;
}

// `n` distinct values drawn by `draw`.
template <class Draw>
std::vector<std::string> distinct(int n, Draw draw) {
  std::vector<std::string> out;
  while (int(out.size()) < n) {
    std::string v = draw();
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(std::move(v));
  }
  return out;
}

// Labels of multikey and multivalue needles.
constexpr std::array<const char*, 32> kLabels{
    "apple",  "river",  "garden", "silver", "lantern", "meadow", "harbor", "falcon", "copper", "violet", "thunder",
    "orchard", "marble", "canyon", "ember",  "willow",  "anchor", "beacon", "cobalt", "dune",   "glacier", "hazel",
    "ivory",  "jasper", "kettle", "lagoon", "maple",   "nectar", "onyx",   "pepper", "quartz", "raven"};

double uniform01(Rng& rng) { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); }

// `n` depths drawn uniformly in [lo, 1], sorted.
std::vector<double> sorted_depths(Rng& rng, int n, double lo) {
  std::vector<double> d;
  for (int i = 0; i < n; ++i) d.push_back(lo + (1.0 - lo) * uniform01(rng));
  std::sort(d.begin(), d.end());
  return d;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

void add_insert(TaskPrompt& t, std::string text, double depth) { t.inserts.push_back({std::move(text) + "\n", depth}); }

}  // namespace

TaskPrompt make_task_prompt(TaskKind kind, double depth, uint64_t seed) {
  LONGCTX_CHECK(depth >= 0.0 && depth <= 1.0, "tasks: depth must be in [0, 1], got ", depth);
  Rng rng(seed_mix(seed_mix(seed, 0x7A5C), uint64_t(kind)));
  TaskPrompt t;
  t.kind = kind;
  switch (kind) {
    case TaskKind::passkey: {
      const std::string key = number5(rng);
      add_insert(t, "The pass key is " + key + ". Remember it. " + key + " is the pass key.", depth);
      t.query = "What is the pass key? The pass key is";
      t.items = {key};
      break;
    }
    case TaskKind::multikey: {  // the asked needle first, then three distractors with other labels and keys
      const std::vector<std::string> labels = distinct(4, [&] { return std::string(kLabels[rng() % kLabels.size()]); });
      const std::vector<std::string> keys = distinct(4, [&] { return number5(rng); });
      for (int i = 0; i < 4; ++i)
        add_insert(t, "The pass key of " + labels[size_t(i)] + " is " + keys[size_t(i)] + ". Remember it.",
                   i == 0 ? depth : uniform01(rng));
      t.query = "What is the pass key of " + labels[0] + "? The pass key of " + labels[0] + " is";
      t.items = {keys[0]};
      break;
    }
    case TaskKind::multivalue: {  // the answer lists the keys in the order they appear
      const std::string label = kLabels[rng() % kLabels.size()];
      const std::vector<std::string> keys = distinct(4, [&] { return number5(rng); });
      std::vector<std::pair<double, std::string>> placed;
      for (size_t i = 0; i < 4; ++i) placed.push_back({i == 0 ? depth : uniform01(rng), keys[i]});
      std::stable_sort(placed.begin(), placed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      for (const auto& [d, key] : placed) {
        add_insert(t, "One of the pass keys of " + label + " is " + key + ".", d);
        t.items.push_back(key);
      }
      t.query = "What are all the pass keys of " + label + "? The pass keys of " + label + " are";
      break;
    }
    case TaskKind::vartrack: {  // the asked chain starts at `depth`; a distractor chain anywhere
      const std::vector<std::string> names = distinct(8, [&] { return letters(rng, 4, 'A'); });
      const std::vector<std::string> values = distinct(2, [&] { return number5(rng); });
      for (int chain = 0; chain < 2; ++chain) {
        const double start = chain == 0 ? depth : uniform01(rng);
        const std::vector<double> later = sorted_depths(rng, 3, start);
        const std::string* name = &names[size_t(4 * chain)];
        add_insert(t, "VAR " + name[0] + " = " + values[size_t(chain)] + ".", start);
        for (int i = 1; i < 4; ++i) add_insert(t, "VAR " + name[i] + " = VAR " + name[i - 1] + ".", later[size_t(i - 1)]);
      }
      t.query = "Which variables hold the value " + values[0] + "? They are";
      t.items.assign(names.begin(), names.begin() + 4);
      break;
    }
    case TaskKind::kvrecall: {
      const std::vector<std::string> keys = distinct(6, [&] { return letters(rng, 4, 'a'); });
      const std::vector<std::string> values = distinct(6, [&] { return number5(rng); });
      std::vector<std::string> pairs;
      for (size_t i = 0; i < 6; ++i) pairs.push_back(keys[i] + " " + values[i]);
      add_insert(t, "Table of values: " + join(pairs, "; ") + ".", depth);
      const size_t asked = rng() % 6;
      t.query = "What is the value of " + keys[asked] + "? The value of " + keys[asked] + " is";
      t.items = {values[asked]};
      break;
    }
    case TaskKind::copy: {
      const std::string ident = letters(rng, 4, 'a') + "_" + letters(rng, 5, 'a');
      add_insert(t, "static int " + ident + "(void);", depth);
      t.query = "The function declared above is";
      t.items = {ident};
      break;
    }
  }
  // document order; equal depths keep their order (a chain's links)
  std::stable_sort(t.inserts.begin(), t.inserts.end(),
                   [](const TaskPrompt::Insert& a, const TaskPrompt::Insert& b) { return a.depth < b.depth; });
  t.answer = " " + join(t.items, kind == TaskKind::multivalue ? ", " : " ");
  return t;
}

// ---- placement -------------------------------------------------------------------------------

int64_t task_fixed_tokens(const TaskPrompt& task, const Tokenizer& tok) {
  int64_t n = int64_t(tok.encode(task.query).size());
  for (const TaskPrompt::Insert& in : task.inserts) n += int64_t(tok.encode(in.text).size());
  return n;
}

TaskExample place_task(const TaskPrompt& task, const TaskFiller& filler, const Tokenizer& tok, int64_t length,
                       uint64_t seed) {
  std::vector<std::vector<int32_t>> inserts;
  int64_t fixed = 0;
  for (const TaskPrompt::Insert& in : task.inserts) {
    inserts.push_back(tok.encode(in.text));
    fixed += int64_t(inserts.back().size());
  }
  const std::vector<int32_t> query = tok.encode(task.query);
  fixed += int64_t(query.size());
  LONGCTX_CHECK(length >= fixed, "tasks: length ", length, " is too short for the ", enum_name(task.kind),
                " task's inserts and query (", fixed, " tokens)");
  const int64_t n_filler = length - fixed;

  // Filler units from a random one on, tokenized one by one, until there are n_filler tokens;
  // `bounds` holds where each unit ends. The stream is cut at its front to n_filler tokens.
  Rng rng(seed_mix(seed, 0xF111E5));
  size_t u = filler.unit_at(std::uniform_int_distribution<size_t>(0, filler.chars() - 1)(rng));
  std::vector<int32_t> stream;
  std::vector<int64_t> bounds;
  while (int64_t(stream.size()) < n_filler) {
    const std::vector<int32_t> ids = tok.encode(std::string(filler.unit(u)));
    stream.insert(stream.end(), ids.begin(), ids.end());
    bounds.push_back(int64_t(stream.size()));
    u = (u + 1) % filler.units();
  }
  const int64_t end = int64_t(stream.size()), begin = end - n_filler;
  std::vector<int64_t> allowed{begin};  // where an insert may go: the start, and unit boundaries after it
  for (int64_t b : bounds)
    if (b > begin) allowed.push_back(b);

  TaskExample ex;
  ex.task = task;
  ex.prompt_tokens.reserve(size_t(length));
  int64_t at = begin;
  for (size_t i = 0; i < inserts.size(); ++i) {
    const int64_t want = begin + std::llround(task.inserts[i].depth * double(n_filler));
    auto it = std::lower_bound(allowed.begin(), allowed.end(), want);  // the nearest allowed position
    if (it == allowed.end() || (it != allowed.begin() && want - *(it - 1) <= *it - want)) --it;
    const int64_t pos = std::max(at, *it);  // depths are sorted: never before the previous insert
    ex.prompt_tokens.insert(ex.prompt_tokens.end(), stream.begin() + at, stream.begin() + pos);
    ex.insert_tokens.push_back(int64_t(ex.prompt_tokens.size()));
    ex.prompt_tokens.insert(ex.prompt_tokens.end(), inserts[i].begin(), inserts[i].end());
    at = pos;
  }
  ex.prompt_tokens.insert(ex.prompt_tokens.end(), stream.begin() + at, stream.end());
  ex.prompt_tokens.insert(ex.prompt_tokens.end(), query.begin(), query.end());
  ex.prompt = tok.decode(ex.prompt_tokens);
  ex.answer_tokens = tok.encode(task.answer);
  return ex;
}

TaskExample make_task_example(TaskKind kind, const TaskFiller& filler, const Tokenizer& tok, int64_t length,
                              double depth, uint64_t seed) {
  return place_task(make_task_prompt(kind, depth, seed), filler, tok, length, seed);
}

std::optional<TaskDocument> make_task_document(TaskKind kind, const TaskFiller& filler, const Tokenizer& tok,
                                               int64_t tokens, double depth, uint64_t seed) {
  const TaskPrompt task = make_task_prompt(kind, depth, seed);
  const std::vector<int32_t> tail = tok.encode(task.answer + "\n");
  const int64_t prompt = tokens - int64_t(tail.size());
  if (prompt < task_fixed_tokens(task, tok)) return std::nullopt;
  TaskDocument doc{place_task(task, filler, tok, prompt, seed).prompt_tokens, prompt};
  doc.tokens.insert(doc.tokens.end(), tail.begin(), tail.end());
  return doc;
}

// ---- scoring ---------------------------------------------------------------------------------

namespace {

bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

}  // namespace

TaskScore score_answer(const TaskPrompt& task, const std::string& completion) {
  if (task.items.size() == 1) {
    const std::string& item = task.items[0];
    const size_t b = completion.find_first_not_of(" \t\n");
    const bool ok = b != std::string::npos && completion.compare(b, item.size(), item) == 0 &&
                    (b + item.size() == completion.size() || !word_char(completion[b + item.size()]));
    return {ok, ok ? 1.0 : 0.0};
  }
  std::set<std::string> words;
  for (size_t i = 0; i < completion.size();) {
    if (!word_char(completion[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < completion.size() && word_char(completion[j])) ++j;
    words.insert(completion.substr(i, j - i));
    i = j;
  }
  size_t found = 0;
  for (const std::string& item : task.items) found += words.count(item);
  return {found == task.items.size(), double(found) / double(task.items.size())};
}

}  // namespace longctx
