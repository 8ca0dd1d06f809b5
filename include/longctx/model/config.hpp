// Model configuration: a Llama-style decoder whose every layer names its attention and FFN kind.
// Read from JSON (see configs/*.json and docs/MODEL.md); validated on load.
#pragma once
#include <longctx/moe/moe.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx {

struct AttentionSpec {
  // full | moba | topk (Quest-bound block top-k) | threshold (mass threshold) | nsa | infini
  std::string kind = "full";
  int64_t block_size = 512;  // moba, topk, threshold
  int64_t top_k = 3;         // moba, topk: blocks per query, own block included
  double tau = 0.95;               // threshold: kept attention mass, in (0, 1]
  std::string stop_rule = "bound";  // threshold: bound (Quest proof) | heuristic (the paper's)
  int64_t block_len = 32;    // nsa: compression block length l
  int64_t stride = 16;       // nsa: compression stride d (divides block_len)
  int64_t select_len = 64;   // nsa: selection block length l'
  int64_t top_n = 16;        // nsa: selected blocks per query (block 0 and local blocks included)
  int64_t local_blocks = 2;  // nsa: latest selection blocks always selected
  int64_t window = 512;      // nsa: sliding window w
  std::string compress = "mlp";  // nsa: mlp (learned compressor) | mean (parameter-free)
  int64_t hidden = 64;       // nsa: compressor MLP width
  int64_t segment_len = 2048;      // infini: tokens per segment N
  std::string update = "linear";   // infini: linear | delta memory update
};

struct FfnSpec {
  std::string kind = "dense";  // dense (SwiGLU) | moe (longctx/moe/moe.hpp, Mixtral softmax top-k router)
  int64_t num_experts = 8;     // moe
  int64_t top_k = 2;           // moe: experts per token
  int64_t d_ff = 0;            // moe: width of each expert (0 = the model's d_ff)
  int64_t num_shared = 0;      // moe: shared experts every token uses
  double capacity_factor = 0;  // moe: 0 = dropless, else tokens over capacity are dropped
  double load_balance_weight = 0.01;  // moe: Switch aux loss alpha
  double z_loss_weight = 0.0;         // moe: router z-loss weight
};

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t d_model = 256;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 4;
  int64_t d_ff = 688;
  int64_t max_seq_len = 2048;  // RoPE table length; longer sequences are rejected
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = true;
  std::vector<AttentionSpec> attention;  // one per layer
  std::vector<FfnSpec> ffn;              // one per layer

  int64_t head_dim() const { return d_model / n_heads; }

  // From JSON: top-level "attention" and "ffn" apply to every layer; "layers": [{...}, ...]
  // overrides per layer; "full_attention_last_n": N makes the last N layers full (hybrid).
  static ModelConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;  // fully explicit (one entry per layer)
  void validate() const;           // throws std::invalid_argument naming the field
};

// The MoE layer config of a layer whose ffn kind is "moe" (Mixtral top-k router, softmax over
// the selected experts).
moe::Config moe_config(const ModelConfig& c, int64_t layer);

}  // namespace longctx
