// Passkey retrieval (Mohtashami & Jaggi 2023; the test of Infini-attention and LongLoRA): filler
// text with a random 5-digit key hidden at a chosen depth, then a question; the model must
// complete the key greedily. The text format lives in passkey.cpp only: the same builder makes
// evaluation prompts and fine-tuning documents (`longctx passkey-corpus`).
//
//   <filler> The pass key is 71432. Remember it. 71432 is the pass key. <filler> What is the pass
//   key? The pass key is| 71432
//
// The prompt ends at "is" ('|'); the answer is " " + key (a fine-tuning document adds "\n").
#pragma once
#include <longctx/model/transformer.hpp>
#include <longctx/text/tokenizer.hpp>

#include <functional>
#include <string>
#include <vector>

namespace longctx {

struct PasskeyExample {
  std::string key;                     // 5 digits
  std::string prompt, answer;          // text: the prompt ends at "The pass key is"; answer " <key>"
  std::vector<int32_t> prompt_tokens;  // exactly the requested length
  std::vector<int32_t> answer_tokens;  // tokens that follow the prompt in tokenize(prompt + answer)
  int64_t needle_token;                // token index where the needle sentence starts
};

// The filler source: documents joined by "\n"; throws if there is no non-blank text.
std::string passkey_filler(const std::vector<std::string>& docs);

// Builds one example of exactly `length` prompt tokens with the needle starting at token
// round(depth * (length - needle - question)) (depth 0: right at the start, 1: just before the
// question; give or take a token where the tokenizer merges across the seams). Key and filler
// offset (a word boundary in `filler`, wrapping around at its end) come from `seed`. Throws on
// an empty filler, a depth outside [0, 1] or a length too short for needle and question.
PasskeyExample make_passkey_example(const std::string& filler, const Tokenizer& tok, int64_t length, double depth,
                                    uint64_t seed);

// The fine-tuning document of an example: prompt + answer + "\n".
std::string passkey_document(const PasskeyExample& ex);

// Greedy completion over the KV cache (Transformer::extend, a decode state of `decode`): the prompt
// is prefilled in chunks of at most `prefill_chunk` tokens (bounding the [chunk, vocab] logits),
// then `n` tokens are produced one decode step each (the last is not fed back). Ties go to the
// lower token id.
std::vector<int32_t> greedy_complete(Transformer& model, const std::vector<int32_t>& prompt, int64_t n,
                                     int64_t prefill_chunk = 2048, const DecodeOptions& decode = {});

// A completion is correct when, after leading whitespace, it starts with the key and no further
// digit follows.
bool passkey_correct(const std::string& completion, const std::string& key);

struct PasskeyCell {
  int64_t length;
  double depth;
  int64_t trials, correct;
  double accuracy, seconds;
  std::string sample;  // the first trial's completion (what the model said)
};

struct PasskeyOptions {
  std::vector<int64_t> lengths;  // context lengths in tokens (the prompt)
  std::vector<double> depths;    // needle depths in [0, 1]
  int64_t trials = 5;            // examples per (length, depth) cell
  uint64_t seed = 1;
  int64_t prefill_chunk = 2048;
  DecodeOptions decode;  // KV cache storage and cascade pruning of the decode states
  // Called after every cell: cells done, cells in all, and the cell just finished.
  std::function<void(int64_t done, int64_t total, const PasskeyCell& cell)> progress;
};

struct PasskeyGrid {
  std::vector<PasskeyCell> cells;  // lengths outer, depths inner
  double accuracy;                 // over all trials
  double seconds;
};

// The longest sequence evaluate_passkey() puts in a decode state: the model's max_seq_len must
// be at least this.
int64_t passkey_capacity(const PasskeyOptions& o);

// Trial t of cell (length, depth index d) uses an example seeded by (seed, length, d, t), so a cell's
// examples do not depend on which other cells run.
PasskeyGrid evaluate_passkey(Transformer& model, const Tokenizer& tok, const std::string& filler,
                             const PasskeyOptions& o);

}  // namespace longctx
