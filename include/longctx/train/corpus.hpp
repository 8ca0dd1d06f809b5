// A tokenized corpus and the batches drawn from it. On disk a corpus is a folder with train/ and
// val/ subfolders of .txt files, one document per file (scripts/prepare_data.sh makes them);
// documents never cross the split.
#pragma once
#include <longctx/model/transformer.hpp>
#include <longctx/train/tokenizer.hpp>

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

// Training batch `index` under `seed`: random windows of up to seq_len + 1 tokens (documents drawn
// in proportion to their length), packed varlen until batch_tokens inputs. The same (seed, index)
// always gives the same batch, so a resumed run sees the batches an uninterrupted one would.
Batch sample_batch(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t batch_tokens, uint64_t seed,
                   uint64_t index);

// Validation batches: consecutive windows (stride seq_len) through the documents in order, packed
// into batches of batch_tokens, until max_tokens targets.
std::vector<Batch> eval_batches(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t batch_tokens,
                                int64_t max_tokens);

}  // namespace longctx
