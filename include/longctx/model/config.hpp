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

// A layer's FFN: dense SwiGLU, or a sparse mixture of experts (longctx/moe/moe.hpp, docs/MOE.md)
// whose every router and balancing loss the config can name.
struct FfnSpec {
  std::string kind = "dense";  // dense (SwiGLU) | moe
  int64_t num_experts = 8;
  int64_t top_k = 2;           // experts per token
  int64_t d_ff = 0;            // width of each expert (0 = the model's d_ff)
  int64_t num_shared = 0;      // shared experts every token uses
  moe::Router router = moe::Router::topk;
  moe::GateNorm gate_norm = moe::GateNorm::selected;
  double capacity_factor = 0;  // 0 = dropless, else tokens over capacity are dropped
  double importance_weight = 0.0;     // Shazeer 2017 importance loss (CV^2 of summed gates)
  double load_balance_weight = 0.01;  // Switch aux loss alpha
  double z_loss_weight = 0.0;         // ST-MoE router z-loss
  double bias_update_rate = 1e-3;     // bias_free router: gamma of the per-step bias update

  // The moe fields (read only when kind is "moe"; "kind" is read apart).
  template <class V>
  void fields(V&& v) {
    v("num_experts", num_experts, "experts E");
    v("top_k", top_k, "experts per token k");
    v("d_ff", d_ff, "width of each expert (0: the model's d_ff)");
    v("num_shared", num_shared, "shared experts every token uses");
    v("router", router, "topk (Mixtral), noisy (Shazeer 2017) or bias_free (DeepSeek-V3, auxiliary-loss-free)");
    v("gate_norm", gate_norm, "selected (softmax over the k chosen) or all (softmax over all E, Switch)");
    v("capacity_factor", capacity_factor, "0: dropless; else capacity per expert, tokens over it dropped");
    v("importance_weight", importance_weight, "weight of the importance loss (CV^2 of per-expert gate sums)");
    v("load_balance_weight", load_balance_weight, "weight of the Switch load-balancing loss");
    v("z_loss_weight", z_loss_weight, "weight of the router z-loss");
    v("bias_update_rate", bias_update_rate, "bias_free: step of the expert-bias update");
  }
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
  // Layers without positional encoding (NoPE; JSON per layer "rope": false): their q and k are not
  // rotated, so their scores depend on content alone, at any distance (Kazemnejad et al.,
  // arXiv 2305.19466; Llama 4's interleaved NoPE layers). Ascending layer indices.
  std::vector<int64_t> nope_layers;

  int64_t head_dim() const { return d_model / n_heads; }
  bool has_rope(int64_t layer) const;

  // From JSON: top-level "attention" and "ffn" apply to every layer; "layers": [{...}, ...]
  // overrides per layer; "full_attention_last_n": N makes the last N layers full (hybrid).
  static ModelConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;  // fully explicit (one entry per layer)
  void validate() const;           // throws std::invalid_argument naming the field
};

// The MoE layer config of a layer whose ffn kind is "moe".
moe::Config moe_config(const ModelConfig& c, int64_t layer);
// The same from an FFN spec alone: experts d_model -> (f.d_ff, or d_ff when that is 0) -> d_model.
moe::Config moe_config(const FfnSpec& f, int64_t d_model, int64_t d_ff);

// One layer's "attention" object (JSON {"kind": ..., <that kind's fields>}) over `base` (the default
// spec, or the layer's so far): naming another kind starts from that kind's defaults; only "kind"
// and that kind's fields are allowed. Errors start with `what` ("model config: attention: unknown
// field 'x' (moba fields: ...)"). The Python binding reads its option dicts with these too.
AttentionSpec attention_from_json(const nlohmann::json& j, AttentionSpec base = {},
                                  const std::string& what = "model config");
nlohmann::json attention_to_json(const AttentionSpec& a);  // every field, with "kind"
// One layer's "ffn" object ({"kind": "dense"} or {"kind": "moe", <FfnSpec fields>}) over `base`.
FfnSpec ffn_from_json(const nlohmann::json& j, FfnSpec base = {}, const std::string& what = "model config");
nlohmann::json ffn_to_json(const FfnSpec& f);

// The noisy router's noise seed of `layer` in a forward seeded `seed` (the Trainer seeds each
// micro-batch): one formula for the Transformer and the double reference model.
uint64_t moe_noise_seed(uint64_t seed, int64_t layer);

}  // namespace longctx
