// Model configuration: a Llama-style decoder whose every layer names its attention and FFN kind.
// Read from JSON (see configs/*.json and docs/MODEL.md); validated on load.
#pragma once
#include <longctx/attention/kind/kind.hpp>
#include <longctx/moe/moe.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx {

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
  // Inputs of the model's matrix products (JSON "matmul_precision": "f32" or "bf16"): bf16 is mixed
  // precision, the linear layers, dense SwiGLU FFNs, the LM head and the attention tile products
  // take bf16-rounded inputs and sum in fp32, while weights, optimizer state, norms and softmax
  // stay fp32 (MoE experts and Infini-attention stay fp32 in this version).
  DType matmul_precision = DType::f32;
  // One per layer: the kind and its kernel's options (JSON: {"kind": ..., <that kind's fields>}).
  std::vector<AttentionSpec> attention;
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
