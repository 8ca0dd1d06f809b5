#include <longctx/core/error.hpp>
#include <longctx/eval/passkey.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <random>

namespace longctx {

namespace {

// The passkey text format: the only place it is written down.
std::string needle_text(const std::string& key) {
  return " The pass key is " + key + ". Remember it. " + key + " is the pass key. ";
}
const char* const kQuestion = " What is the pass key? The pass key is";
std::string answer_text(const std::string& key) { return " " + key; }

constexpr int64_t kMaxAnswerTokens = 8;  // " " + 5 digits: at most 6 tokens in any tokenizer

uint64_t mix(uint64_t h, uint64_t v) {  // splitmix64 step over a running hash
  h += v + 0x9E3779B97F4A7C15ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

// At least `want` tokens of filler text starting at a word boundary at or after `offset`, the text
// continuing at its beginning when it runs out.
std::vector<int32_t> filler_tokens(const std::string& filler, const Tokenizer& tok, size_t offset, int64_t want) {
  const size_t space = filler.find_first_of(" \n\t", offset);
  const size_t start = space == std::string::npos ? 0 : space + 1;
  size_t chars = size_t(want) + 64;
  for (int attempt = 0; attempt < 40; ++attempt) {
    std::string text;
    text.reserve(chars);
    for (size_t pos = start; text.size() < chars;) {
      const size_t n = std::min(chars - text.size(), filler.size() - pos);
      text.append(filler, pos, n);
      pos += n;
      if (pos == filler.size()) pos = 0, text.push_back('\n');
    }
    std::vector<int32_t> ids = tok.encode(text);
    if (int64_t(ids.size()) >= want) {
      ids.resize(size_t(want));
      return ids;
    }
    // grow by the observed characters per token, with a margin
    chars = ids.empty() ? chars * 2 : size_t(double(chars) * double(want) / double(ids.size()) * 1.1) + 64;
  }
  throw std::invalid_argument(concat("longctx: passkey: the filler text does not yield ", want, " tokens"));
}

std::vector<int32_t> slice(const std::vector<int32_t>& v, int64_t begin, int64_t end) {
  return std::vector<int32_t>(v.begin() + begin, v.begin() + end);
}

}  // namespace

std::string passkey_filler(const std::vector<std::string>& docs) {
  std::string s;
  for (const std::string& d : docs) {
    if (!s.empty()) s.push_back('\n');
    s += d;
  }
  LONGCTX_CHECK(s.find_first_not_of(" \n\t\r") != std::string::npos,
                "passkey: the filler corpus is empty (no non-blank text)");
  return s;
}

PasskeyExample make_passkey_example(const std::string& filler, const Tokenizer& tok, int64_t length, double depth,
                                    uint64_t seed) {
  LONGCTX_CHECK(filler.find_first_not_of(" \n\t\r") != std::string::npos,
                "passkey: the filler corpus is empty (no non-blank text)");
  LONGCTX_CHECK(depth >= 0.0 && depth <= 1.0, "passkey: depth must be in [0, 1], got ", depth);
  std::mt19937_64 rng(mix(seed, 0x70A55));
  PasskeyExample ex;
  ex.key = std::to_string(std::uniform_int_distribution<int>(10000, 99999)(rng));
  const std::string needle = needle_text(ex.key);
  const int64_t fixed = int64_t(tok.encode(needle).size() + tok.encode(kQuestion).size());
  LONGCTX_CHECK(length >= fixed, "passkey: length ", length, " is too short for the needle and the question (",
                fixed, " tokens)");
  const int64_t n_filler = length - fixed;
  const size_t offset = std::uniform_int_distribution<size_t>(0, filler.size() - 1)(rng);
  const std::vector<int32_t> f = filler_tokens(filler, tok, offset, n_filler + 64);

  // Tokens can merge across the seams (SentencePiece): retokenize and move the filler after the
  // needle (before it when none is left) until the prompt has exactly `length` tokens.
  int64_t before = std::llround(depth * double(n_filler)), after = n_filler - before;
  std::string head;
  for (int iter = 0;; ++iter) {
    head = tok.decode(slice(f, 0, before));
    ex.prompt = head + needle + tok.decode(slice(f, before, before + after)) + kQuestion;
    ex.prompt_tokens = tok.encode(ex.prompt);
    const int64_t diff = length - int64_t(ex.prompt_tokens.size());
    if (diff == 0) break;
    LONGCTX_CHECK(iter < 16 && before + after + diff <= int64_t(f.size()) && before + after + diff >= 0,
                  "passkey: cannot fit the prompt to exactly ", length, " tokens (the tokenizer merges across seams)");
    after += diff;
    if (after < 0) before += after, after = 0;
  }
  ex.needle_token = int64_t(tok.encode(head).size());
  ex.answer = answer_text(ex.key);
  const std::vector<int32_t> full = tok.encode(ex.prompt + ex.answer);
  LONGCTX_CHECK(full.size() > ex.prompt_tokens.size() &&
                    std::equal(ex.prompt_tokens.begin(), ex.prompt_tokens.end(), full.begin()) &&
                    int64_t(full.size() - ex.prompt_tokens.size()) <= kMaxAnswerTokens,
                "passkey: the tokenizer does not keep the answer apart from the prompt");
  ex.answer_tokens.assign(full.begin() + int64_t(ex.prompt_tokens.size()), full.end());
  return ex;
}

std::string passkey_document(const PasskeyExample& ex) { return ex.prompt + ex.answer + "\n"; }

std::vector<int32_t> greedy_complete(Transformer& model, const std::vector<int32_t>& prompt, int64_t n,
                                     int64_t prefill_chunk, const DecodeOptions& decode) {
  LONGCTX_CHECK(!prompt.empty() && n >= 1 && prefill_chunk >= 1, "greedy_complete: needs a prompt, n >= 1 and "
                "prefill_chunk >= 1, got ", prompt.size(), " tokens, n = ", n, ", chunk ", prefill_chunk);
  DecodeState st = model.new_decode_state(int64_t(prompt.size()) + n - 1, decode);
  const int64_t V = model.config().vocab_size;
  Tensor logits = model.prefill(st, prompt, prefill_chunk);
  std::vector<int32_t> out;
  for (;;) {
    const float* last = logits.f32() + (logits.shape()[0] - 1) * V;
    out.push_back(int32_t(std::max_element(last, last + V) - last));  // first maximum: lowest id
    if (int64_t(out.size()) == n) return out;
    logits = model.extend(st, {out.back()});
  }
}

bool passkey_correct(const std::string& completion, const std::string& key) {
  const size_t b = completion.find_first_not_of(" \t\n");
  if (b == std::string::npos || completion.compare(b, key.size(), key) != 0) return false;
  const size_t after = b + key.size();
  return after >= completion.size() || !std::isdigit(static_cast<unsigned char>(completion[after]));
}

int64_t passkey_capacity(const PasskeyOptions& o) {
  return o.lengths.empty() ? 0 : *std::max_element(o.lengths.begin(), o.lengths.end()) + kMaxAnswerTokens;
}

PasskeyGrid evaluate_passkey(Transformer& model, const Tokenizer& tok, const std::string& filler,
                             const PasskeyOptions& o) {
  LONGCTX_CHECK(!o.lengths.empty() && !o.depths.empty(), "passkey: give at least one length and one depth");
  LONGCTX_CHECK(o.trials >= 1, "passkey: trials must be >= 1, got ", o.trials);
  for (double d : o.depths) LONGCTX_CHECK(d >= 0.0 && d <= 1.0, "passkey: depth must be in [0, 1], got ", d);
  LONGCTX_CHECK(passkey_capacity(o) <= model.config().max_seq_len, "passkey: length ", passkey_capacity(o) -
                kMaxAnswerTokens, " (plus the answer) exceeds the model's max_seq_len ", model.config().max_seq_len,
                " (raise it with --max-seq-len: RoPE extends to any length)");
  const auto t0 = std::chrono::steady_clock::now();
  PasskeyGrid g{{}, 0.0, 0.0};
  int64_t correct = 0;
  const int64_t total = int64_t(o.lengths.size() * o.depths.size());
  for (int64_t length : o.lengths)
    for (size_t d = 0; d < o.depths.size(); ++d) {
      const auto c0 = std::chrono::steady_clock::now();
      PasskeyCell cell{length, o.depths[d], o.trials, 0, 0.0, 0.0, {}};
      for (int64_t t = 0; t < o.trials; ++t) {
        const uint64_t seed = mix(mix(mix(o.seed, uint64_t(length)), d), uint64_t(t));
        const PasskeyExample ex = make_passkey_example(filler, tok, length, o.depths[d], seed);
        const std::string said =
            tok.decode(greedy_complete(model, ex.prompt_tokens, int64_t(ex.answer_tokens.size()), o.prefill_chunk, o.decode));
        cell.correct += passkey_correct(said, ex.key);
        if (t == 0) cell.sample = said;
      }
      cell.accuracy = double(cell.correct) / double(cell.trials);
      cell.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
      correct += cell.correct;
      g.cells.push_back(cell);
      if (o.progress) o.progress(int64_t(g.cells.size()), total, cell);
    }
  g.accuracy = double(correct) / double(total * o.trials);
  g.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return g;
}

}  // namespace longctx
