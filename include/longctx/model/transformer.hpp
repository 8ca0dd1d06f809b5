// A Llama-style decoder: token embedding -> N x [RMSNorm -> attention (per layer: full, moba,
// topk, threshold, nsa or infini; src/model/attention_layer.hpp) -> residual -> RMSNorm -> SwiGLU FFN -> residual] -> RMSNorm -> LM head (tied or untied).
// Forward keeps the activations its hand-written backward needs; batches are packed varlen.
#pragma once
#include <longctx/attention/infini/infini.hpp>
#include <longctx/attention/nsa/nsa.hpp>
#include <longctx/attention/cache/cascade_pruning.hpp>
#include <longctx/attention/cache/kv_cache.hpp>
#include <longctx/attention/moba/key_conv.hpp>
#include <longctx/model/config.hpp>
#include <longctx/core/tensor.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace longctx {

struct Param {
  std::string name;
  Tensor value, grad;
  bool decay;  // AdamW weight decay applies (matrices yes, norm gains no)
  double lr_scale = 1.0;  // AdamW's step is lr * lr_scale (the Trainer gives Infini's beta its own lr)
};

// Packed sequences: tokens[T], targets[T] (next token, -1 = none), cu_seqlens {0, ..., T}.
// positions[T] are RoPE positions (empty = 0, 1, ... within each sequence).
struct Batch {
  std::vector<int32_t> tokens, targets;
  std::vector<int64_t> cu_seqlens, positions;
  std::vector<float> weights;  // per target, >= 0 (empty: each weighs 1); the loss is sum(w * loss) / sum(w)
  int64_t size() const { return int64_t(tokens.size()); }
};

// One layer's inference state, by its attention kind: full, moba, topk and threshold layers keep a
// KV cache (its block statistics serve the sparse kinds); nsa layers a KV cache plus NSA's cache
// of compressed blocks and a snapshot of the layer's NSA weights; infini layers only their
// constant-size memory stream (M, z and the current segment; its beta is a snapshot too). A moba
// layer with a key convolution also keeps its last K - 1 unconvolved keys (and a snapshot of the
// convolution's weights); its cache holds the convolved keys.
struct LayerDecodeState {
  std::optional<KVCache> cache;
  std::optional<KeyConvStream> key_conv;
  std::optional<NsaDecodeCache> nsa;
  NsaWeights<float> nsa_weights;
  std::optional<InfiniStream> infini;
};

// Incremental inference state of one sequence. It belongs to the weights it was made with (its
// caches hold their keys and values): after changing the weights, make a new one.
struct DecodeState {
  std::vector<LayerDecodeState> layers;
  int64_t tokens = 0;    // tokens so far
  int64_t capacity = 0;  // most tokens it can hold
  std::optional<CascadePruner> pruning;  // with a KV budget (DecodeOptions::pruning)
  int64_t size() const { return tokens; }
};

// How a decode state keeps its KV caches: their storage, and optionally SpAtten's cascade token
// pruning to a token budget (cascade_pruning.hpp; full-attention layers only).
struct DecodeOptions {
  KVDType kv_dtype = KVDType::f32;
  CascadePruningOptions pruning;  // off unless a budget is set
  DecodeOptions(KVDType dtype = KVDType::f32, CascadePruningOptions prune = {})  // NOLINT: a dtype alone converts
      : kv_dtype(dtype), pruning(std::move(prune)) {}
};

// The parameters a model of this config has (equal to Transformer(cfg, .).num_params()), counted
// without allocating; a double, so that an absurd config cannot overflow it.
double param_count(const ModelConfig& cfg);
// What a Transformer of this config allocates when built: fp32 weights and their gradients, and
// the RoPE table. The constructor refuses a config over memory::limit() with this number.
double model_bytes(const ModelConfig& cfg);

// One MoE layer's routing in a train forward, or summed over a step's micro-batches
// (add_moe_stats): per-expert load before and after dropping, dropped tokens, the balancing
// losses and router entropy (means per token), and a bias_free router's selection bias.
struct MoeLayerStats {
  int64_t layer = 0;
  moe::Stats stats;
  int64_t tokens = 0;
  std::vector<float> expert_bias;  // bias_free routers only
};
// Adds one forward's stats to a sum over forwards (counts add, per-token means weight by tokens).
void add_moe_stats(std::vector<MoeLayerStats>& sum, const std::vector<MoeLayerStats>& one);

// What new_decode_state(capacity, options) allocates: each cached layer's keys and values (infini
// layers cache nothing; with a KV budget, budget + chunk tokens per layer), their positions and
// block statistics (mean, min, max per block), and the key convolutions' kept keys and weights.
double decode_state_bytes(const ModelConfig& cfg, int64_t capacity, const DecodeOptions& o);

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

  // Inference state for up to `capacity` tokens (<= max_seq_len); KV caches in o.kv_dtype (int8:
  // not for nsa layers, which refuse it), pruned to a budget when o.pruning has one (every cached
  // layer must be full attention). Refuses a state over memory::limit() (decode_state_bytes).
  DecodeState new_decode_state(int64_t capacity, const DecodeOptions& o = {}) const;
  // Appends tokens to the sequence (a prompt prefill, or one token per decode step) and returns
  // their logits [n, V]; each row equals the corresponding row of logits() over the whole
  // sequence (with a KV budget: over the tokens the caches keep; the tokens then go in steps of at
  // most the pruning's chunk). Full layers attend densely over the cache, moba/topk/threshold layers sparsely by
  // the cache's block statistics, nsa layers by nsa_forward (n > 1) or nsa_decode_step (n = 1)
  // over the cache and its compressed blocks, infini layers through their memory stream.
  Tensor extend(DecodeState& state, const std::vector<int32_t>& tokens);
  // extend() of several sequences in one call: appends tokens[i] to *states[i] (distinct states,
  // each a non-empty run of tokens: a decode step, or a prefill chunk) and returns the logits
  // [sum of the runs' lengths, V], sequence i's rows after sequence i-1's. The linear layers, the
  // FFNs and the LM head run as one product over all the new tokens; each layer attends per
  // sequence over that sequence's own state. Each row equals extend() of its sequence alone up to
  // fp32 rounding (a product over more rows may sum in another order).
  Tensor extend_batch(const std::vector<DecodeState*>& states, const std::vector<std::vector<int32_t>>& tokens);
  // extend() over `tokens` in calls of at most `chunk` tokens, so the logits held stay within
  // chunk x vocab; returns the last token's logits [1, V]. progress(done, total) after each call.
  Tensor prefill(DecodeState& state, const std::vector<int32_t>& tokens, int64_t chunk,
                 const std::function<void(int64_t done, int64_t total)>& progress = {});
  // Adds the gradient of the last train forward's mean loss + aux_loss() to every Param::grad.
  void backward();
  void zero_grad();

  // MoE routing. The noisy routers draw their train-time noise from this seed (the Trainer sets
  // one per micro-batch, so a resumed run draws the same noise). moe_stats(): each MoE layer's
  // routing in the last train forward. update_expert_biases(step): the auxiliary-loss-free
  // balancing step (arXiv 2412.19437 sec. 2.1.2) of every bias_free layer from the step's summed
  // loads; it records each new bias in `step`. The bias is a Param (checkpointed) that gets no
  // gradient, so AdamW leaves it alone.
  void set_moe_noise_seed(uint64_t seed) { noise_seed_ = seed; }
  std::vector<MoeLayerStats> moe_stats() const;
  void update_expert_biases(std::vector<MoeLayerStats>& step);

  // Training-time switch (docs/DESIGN.md "Hybrid", train.moba_to_full_step): run the layers whose
  // kind is a sparse approximation of full attention (moba, topk, threshold) as full attention.
  // nsa and infini layers keep their own architecture (they have their own parameters).
  void force_full_attention(bool on) { force_full_ = on; }
  // Training-time options of a layer's attention, of the kind its config names (progressive
  // sparsity: the Trainer widens top-k / threshold layers early in training). Forwards run with
  // them until set again; the config (and so checkpoints and decode) keeps the layer's own.
  void set_running_attention(int64_t layer, const AttentionSpec& spec);
  bool layer_uses_moba(int64_t layer) const;
  AttentionKind attention_kind(int64_t layer) const;  // the kind a forward runs now
  // Per layer, the keys each (head, query) attended in the last train forward (read it before
  // backward(), which frees the forward's state), mean over them, for the kinds that report it
  // (topk, threshold); -1 for the others. Empty when no forward state is held.
  std::vector<double> attended_keys() const;

 private:
  struct Acts;
  AttentionSpec running_spec(int64_t layer) const;  // the layer's spec, or full when forced
  // Inference over decode states: `states` holds one per sequence of the batch (its tokens are
  // the sequence's next ones); empty for a plain forward.
  void run(const Batch& batch, bool train, Tensor& logits_out, const std::vector<DecodeState*>& states = {});
  ModelConfig cfg_;
  std::vector<Param> params_;
  std::unique_ptr<Acts> acts_;
  std::vector<AttentionSpec> running_;  // per layer: the config's, or set_running_attention's
  bool force_full_ = false;
  double aux_loss_ = 0;
  uint64_t noise_seed_ = 0;
};

}  // namespace longctx
