// A Llama-style decoder: token embedding -> N x [RMSNorm -> attention (full or MoBA, per layer)
// -> residual -> RMSNorm -> SwiGLU FFN -> residual] -> RMSNorm -> LM head (tied or untied).
// Forward keeps the activations its hand-written backward needs; batches are packed varlen.
#pragma once
#include <longctx/kv_cache.hpp>
#include <longctx/model/config.hpp>
#include <longctx/tensor.hpp>

#include <memory>
#include <string>
#include <vector>

namespace longctx {

struct Param {
  std::string name;
  Tensor value, grad;
  bool decay;  // AdamW weight decay applies (matrices yes, norm gains no)
};

// Packed sequences: tokens[T], targets[T] (next token, -1 = none), cu_seqlens {0, ..., T}.
// positions[T] are RoPE positions (empty = 0, 1, ... within each sequence).
struct Batch {
  std::vector<int32_t> tokens, targets;
  std::vector<int64_t> cu_seqlens, positions;
  int64_t size() const { return int64_t(tokens.size()); }
};

// Incremental inference state: one KV cache per layer (its block statistics serve MoBA layers).
struct DecodeState {
  std::vector<KVCache> caches;
  int64_t size() const { return caches.empty() ? 0 : caches.front().size(); }  // tokens so far
};

class Transformer {
 public:
  Transformer(const ModelConfig& cfg, uint64_t seed);
  ~Transformer();
  Transformer(Transformer&&) noexcept;  // Param addresses survive a move (the vector buffer moves)
  Transformer& operator=(Transformer&&) noexcept;

  const ModelConfig& config() const { return cfg_; }
  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  Param& param(const std::string& name);
  int64_t num_params() const;

  // Mean next-token loss over the batch's targets. With `train`, keeps what backward() needs. The
  // training objective is this plus aux_loss(); backward() differentiates both.
  double forward(const Batch& batch, bool train);
  // The MoE balancing losses of the last forward (0 without MoE layers).
  double aux_loss() const { return aux_loss_; }
  // Logits [T, V] of every position.
  Tensor logits(const Batch& batch);
  // Next-token loss of every position (0 where the target is -1).
  std::vector<double> token_losses(const Batch& batch);

  // Inference over KV caches holding up to `capacity` tokens (<= max_seq_len).
  DecodeState new_decode_state(int64_t capacity, DType cache_dtype = DType::f32) const;
  // Appends tokens to the sequence (a prompt prefill, or one token per decode step) and returns
  // their logits [n, V]. Full layers attend densely over the cache, MoBA layers sparsely (own
  // block plus the top-(k-1) past blocks by their cached mean keys); each row equals the
  // corresponding row of logits() over the whole sequence.
  Tensor extend(DecodeState& state, const std::vector<int32_t>& tokens);
  // Adds the gradient of the last train forward's mean loss + aux_loss() to every Param::grad.
  void backward();
  void zero_grad();

  // Training-time switch (DESIGN.md "Hybrid"): run the sparse (MoBA, top-k) layers as full attention.
  void force_full_attention(bool on) { force_full_ = on; }
  bool layer_uses_moba(int64_t layer) const;
  std::string attention_kind(int64_t layer) const;  // the kind a forward runs now: full, moba or topk

 private:
  struct Acts;
  void run(const Batch& batch, bool train, Tensor& logits_out, DecodeState* state = nullptr);
  ModelConfig cfg_;
  std::vector<Param> params_;
  std::unique_ptr<Acts> acts_;
  bool force_full_ = false;
  double aux_loss_ = 0;
};

}  // namespace longctx
