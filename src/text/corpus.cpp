#include <longctx/core/error.hpp>
#include <longctx/text/corpus.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace longctx {

namespace fs = std::filesystem;

namespace {

// A split's documents: its .txt files, sorted by name.
std::vector<fs::path> split_files(const fs::path& dir) {
  LONGCTX_CHECK(fs::is_directory(dir), "corpus: missing folder ", dir.string(),
                " (make it with scripts/prepare_data.sh)");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  LONGCTX_CHECK(!files.empty(), "corpus: no .txt documents in ", dir.string());
  return files;
}

std::string read_text(const fs::path& f) {
  std::ifstream in(f, std::ios::binary);
  LONGCTX_CHECK(in.good(), "corpus: cannot read ", f.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::vector<int32_t>> load_split(const fs::path& dir, const Tokenizer& tok) {
  std::vector<std::vector<int32_t>> docs;
  for (const fs::path& f : split_files(dir)) {
    std::vector<int32_t> ids;
    try {
      ids = tok.encode(read_text(f));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(concat("longctx: corpus: ", f.string(), ": ", message_of(e)));
    }
    if (ids.size() >= 2) docs.push_back(std::move(ids));  // a document needs a token and its successor
  }
  LONGCTX_CHECK(!docs.empty(), "corpus: every document in ", dir.string(), " is shorter than 2 tokens");
  return docs;
}

int64_t total(const std::vector<std::vector<int32_t>>& docs) {
  int64_t n = 0;
  for (const auto& d : docs) n += int64_t(d.size());
  return n;
}

// Appends a document's tail (its last seq_len inputs at most) with only the last score_last targets kept.
void append_tail(Batch& b, const std::vector<int32_t>& doc, int64_t seq_len, int64_t score_last) {
  const int64_t len = std::min(seq_len, int64_t(doc.size()) - 1);
  append_sequence(b, doc, int64_t(doc.size()) - 1 - len, len);
  std::fill(b.targets.end() - len, b.targets.end() - std::min(len, score_last), -1);
}

void check_tail_args(int64_t seq_len, int64_t batch_tokens, int64_t score_last) {
  LONGCTX_CHECK(seq_len > 0 && batch_tokens >= seq_len && score_last > 0, "tail batches: need seq_len > 0, "
                "batch_tokens >= seq_len and score_last > 0, got ", seq_len, ", ", batch_tokens, ", ", score_last);
}

}  // namespace

void append_sequence(Batch& b, const std::vector<int32_t>& doc, int64_t start, int64_t len) {
  if (b.cu_seqlens.empty()) b.cu_seqlens.push_back(0);
  b.tokens.insert(b.tokens.end(), doc.begin() + start, doc.begin() + start + len);
  b.targets.insert(b.targets.end(), doc.begin() + start + 1, doc.begin() + start + len + 1);
  b.cu_seqlens.push_back(b.size());
}

WindowSampler::WindowSampler(const std::vector<std::vector<int32_t>>& docs) : docs_(docs) {
  int64_t sum = 0;
  for (const auto& d : docs) cum_.push_back(sum += int64_t(d.size()) - 1);
  LONGCTX_CHECK(sum > 0, "corpus: no document has two tokens to draw a window from");
}

void WindowSampler::append(Batch& b, std::mt19937_64& rng, int64_t max_len) const {
  const int64_t r = std::uniform_int_distribution<int64_t>(0, cum_.back() - 1)(rng);
  const size_t di = size_t(std::upper_bound(cum_.begin(), cum_.end(), r) - cum_.begin());
  const int64_t start = r - (di ? cum_[di - 1] : 0);
  append_sequence(b, docs_[di], start, std::min(max_len, int64_t(docs_[di].size()) - 1 - start));
}

std::vector<std::string> load_split_texts(const std::string& split_dir) {
  std::vector<std::string> texts;
  for (const fs::path& f : split_files(split_dir)) texts.push_back(read_text(f));
  return texts;
}

int64_t Corpus::train_tokens() const { return total(train); }
int64_t Corpus::val_tokens() const { return total(val); }

Corpus load_corpus(const std::string& dir, const Tokenizer& tok) {
  LONGCTX_CHECK(fs::is_directory(dir), "corpus: no such folder '", dir, "' (make it with scripts/prepare_data.sh)");
  return {load_split(fs::path(dir) / "train", tok), load_split(fs::path(dir) / "val", tok)};
}

Batch sample_batch(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t batch_tokens, uint64_t seed,
                   uint64_t index) {
  LONGCTX_CHECK(seq_len > 0 && batch_tokens > 0, "sample_batch: seq_len and batch_tokens must be > 0, got ", seq_len,
                " and ", batch_tokens);
  const WindowSampler windows(docs);
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + index);
  Batch b;
  while (b.size() < batch_tokens) windows.append(b, rng, std::min(seq_len, batch_tokens - b.size()));
  return b;
}

std::vector<Batch> eval_batches(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t batch_tokens,
                                int64_t max_tokens) {
  std::vector<Batch> out;
  Batch b;
  int64_t taken = 0;
  for (const auto& doc : docs)
    for (int64_t start = 0; start + 1 < int64_t(doc.size()) && taken < max_tokens; start += seq_len) {
      const int64_t len = std::min({seq_len, int64_t(doc.size()) - 1 - start, max_tokens - taken});
      if (b.size() + len > batch_tokens && b.size() > 0) out.push_back(std::exchange(b, Batch{}));
      append_sequence(b, doc, start, len);
      taken += len;
    }
  if (b.size() > 0) out.push_back(std::move(b));
  return out;
}

Batch tail_batch(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t batch_tokens,
                 int64_t score_last, uint64_t seed, uint64_t index) {
  check_tail_args(seq_len, batch_tokens, score_last);
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + index);
  Batch b;
  for (;;) {
    const auto& doc = docs[std::uniform_int_distribution<size_t>(0, docs.size() - 1)(rng)];
    if (b.size() > 0 && b.size() + std::min(seq_len, int64_t(doc.size()) - 1) > batch_tokens) return b;
    append_tail(b, doc, seq_len, score_last);
  }
}

std::vector<Batch> tail_eval_batches(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len,
                                     int64_t batch_tokens, int64_t score_last, int64_t max_tokens) {
  check_tail_args(seq_len, batch_tokens, score_last);
  std::vector<Batch> out;
  Batch b;
  int64_t taken = 0;
  for (const auto& doc : docs) {
    const int64_t len = std::min(seq_len, int64_t(doc.size()) - 1);
    if (taken > 0 && taken + len > max_tokens) break;
    if (b.size() > 0 && b.size() + len > batch_tokens) out.push_back(std::exchange(b, Batch{}));
    append_tail(b, doc, seq_len, score_last);
    taken += len;
  }
  if (b.size() > 0) out.push_back(std::move(b));
  return out;
}

}  // namespace longctx
