#include <longctx/core/error.hpp>
#include <longctx/eval/eval.hpp>

#include <chrono>

#include "nn/layers.hpp"

namespace longctx {

namespace {
// Next-token losses of a one-sequence batch fed through a decode state.
std::vector<double> decode_losses(Transformer& model, const Batch& b, const DecodeOptions& o) {
  DecodeState st = model.new_decode_state(b.size(), o);
  const Tensor logits = model.extend(st, b.tokens);
  return nn::cross_entropy(logits.f32(), b.size(), model.config().vocab_size, b.targets.data(), nullptr, nullptr).rows;
}
}  // namespace

EvalResult evaluate_positions(Transformer& model, const std::vector<std::vector<int32_t>>& docs, int64_t seq_len,
                              int64_t bucket, int64_t max_tokens, const std::function<void(int64_t, int64_t)>& progress,
                              const DecodeOptions* decode) {
  LONGCTX_CHECK(seq_len > 0 && bucket > 0, "eval: seq_len and bucket must be > 0, got ", seq_len, " and ", bucket);
  LONGCTX_CHECK(seq_len <= model.config().max_seq_len, "eval: seq_len ", seq_len, " exceeds the model's max_seq_len ",
                model.config().max_seq_len, " (raise it with --max-seq-len: RoPE extends to any length)");
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t nb = (seq_len + bucket - 1) / bucket;
  EvalResult r{0, 0, 0, {}, 0};
  std::vector<double> sum(size_t(nb), 0.0);
  std::vector<int64_t> count(size_t(nb), 0);
  int64_t total = 0;  // tokens the loop below will score
  for (const auto& doc : docs)
    for (int64_t start = 0; start + seq_len + 1 <= int64_t(doc.size()) && total < max_tokens; start += seq_len)
      total += seq_len;
  for (const auto& doc : docs)
    for (int64_t start = 0; start + seq_len + 1 <= int64_t(doc.size()) && r.tokens < max_tokens; start += seq_len) {
      Batch b;
      b.tokens.assign(doc.begin() + start, doc.begin() + start + seq_len);
      b.targets.assign(doc.begin() + start + 1, doc.begin() + start + seq_len + 1);
      b.cu_seqlens = {0, seq_len};
      const std::vector<double> losses = decode ? decode_losses(model, b, *decode) : model.token_losses(b);
      for (int64_t p = 0; p < seq_len; ++p) {
        sum[size_t(p / bucket)] += losses[size_t(p)];
        ++count[size_t(p / bucket)];
        r.loss += losses[size_t(p)];
      }
      r.tokens += seq_len;
      ++r.windows;
      if (progress) progress(r.tokens, total);
    }
  LONGCTX_CHECK(r.windows > 0, "eval: no document has ", seq_len + 1, " tokens; use a shorter --seq-len");
  r.loss /= double(r.tokens);
  for (int64_t i = 0; i < nb; ++i)
    r.buckets.push_back({i * bucket, std::min(seq_len, (i + 1) * bucket), sum[size_t(i)] / double(count[size_t(i)]),
                         count[size_t(i)]});
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace longctx
