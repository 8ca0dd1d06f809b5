// Evaluation: validation loss / perplexity and position-wise ("trailing token") loss, MoBA paper
// style: the mean loss of the tokens at positions [b * bucket, (b + 1) * bucket) of long
// validation windows, so a method that loses long-range information shows it at late positions.
#pragma once
#include <longctx/model/transformer.hpp>

#include <functional>
#include <vector>

namespace longctx {

struct PositionBucket {
  int64_t begin, end;  // positions [begin, end) within a window
  double loss;         // mean next-token loss there (nats)
  int64_t tokens;
};

struct EvalResult {
  double loss;  // mean over all scored tokens
  int64_t tokens, windows;
  std::vector<PositionBucket> buckets;
  double seconds;
};

// Scores consecutive windows of `seq_len` tokens (stride seq_len) through the documents, at most
// `max_tokens` scored tokens in all; windows shorter than seq_len (document ends) are skipped so
// every bucket averages the same number of windows. `progress(done, total)`, if given, is called
// after each window with the tokens scored so far and the tokens the pass will score. With
// `decode`, each window is fed through a decode state of those options (Transformer::extend: its KV
// cache storage, cascade pruning to a budget) instead of the training forward.
EvalResult evaluate_positions(Transformer& model, const std::vector<std::vector<int32_t>>& docs, int64_t seq_len,
                              int64_t bucket, int64_t max_tokens,
                              const std::function<void(int64_t done, int64_t total)>& progress = {},
                              const DecodeOptions* decode = nullptr);

}  // namespace longctx
