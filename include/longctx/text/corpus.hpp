// A tokenized corpus and the batches drawn from it. On disk a corpus is a folder with train/ and
// val/ subfolders of .txt files, one document per file (scripts/prepare_data.sh makes them);
// documents never cross the split.
#pragma once
#include <longctx/model/transformer.hpp>
#include <longctx/text/tokenizer.hpp>

#include <random>
#include <string>
#include <vector>

namespace longctx {

struct Corpus {
  std::vector<std::vector<int32_t>> train, val;
  int64_t train_tokens() const;
  int64_t val_tokens() const;
};

// The raw texts of one split folder (e.g. "data/kjv/val"): its .txt files sorted by name; throws
// naming the folder when it is missing or holds no .txt file.
std::vector<std::string> load_split_texts(const std::string& split_dir);

// Reads dir/train/*.txt and dir/val/*.txt (sorted by name); throws naming what is missing.
Corpus load_corpus(const std::string& dir, const Tokenizer& tok);

// Appends the window doc[start, start + len + 1) to `b` as one sequence (len inputs, len targets).
void append_sequence(Batch& b, const std::vector<int32_t>& doc, int64_t start, int64_t len);

// Random windows of the documents, each position that has a successor equally likely to start one
// (documents drawn in proportion to their length). Keeps a reference to `docs`.
class WindowSampler {
 public:
  explicit WindowSampler(const std::vector<std::vector<int32_t>>& docs);
  // Appends a window of up to max_len inputs (fewer at the document's end) to `b`.
  void append(Batch& b, std::mt19937_64& rng, int64_t max_len) const;

 private:
  const std::vector<std::vector<int32_t>>& docs_;
  std::vector<int64_t> cum_;  // positions with a successor in documents 0..i
};

// Training batch `index` under `seed`: random windows of up to seq_len + 1 tokens (documents drawn
// in proportion to their length), packed varlen until batch_tokens inputs. The same (seed, index)
// always gives the same batch, so a resumed run sees the batches an uninterrupted one would.
Batch sample_batch(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t batch_tokens, uint64_t seed,
                   uint64_t index);

// Validation batches: consecutive windows (stride seq_len) through the documents in order, packed
// into batches of batch_tokens, until max_tokens targets.
std::vector<Batch> eval_batches(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t batch_tokens,
                                int64_t max_tokens);

// Answer-only batches (train.score_last > 0), for fine-tunes on documents that end with the answer
// to a question about their context (passkey corpora): each sequence is the tail of one whole
// document, its last seq_len + 1 tokens, and only its last score_last targets are scored (the
// others are -1). tail_batch draws documents uniformly under (seed, index) until batch_tokens
// inputs; tail_eval_batches takes them in order until max_tokens inputs.
Batch tail_batch(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t batch_tokens,
                 int64_t score_last, uint64_t seed, uint64_t index);
std::vector<Batch> tail_eval_batches(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len,
                                     int64_t batch_tokens, int64_t score_last, int64_t max_tokens);

}  // namespace longctx
