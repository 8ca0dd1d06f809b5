// Import of Hugging Face Llama checkpoints (docs/IMPORT.md): a folder with config.json, the
// weights (model.safetensors, or shards named by model.safetensors.index.json; F32, BF16 or F16)
// and tokenizer.model (SentencePiece), made into a longctx model and the metadata of a
// self-contained checkpoint.
//
// Layouts. HF's nn.Linear weights are [out, in] and longctx's [in, out] (y = x W): every
// projection is transposed. HF Llama rotates q/k by halves (rotate_half: feature i pairs with
// i + head_dim/2), which is longctx's RoPE too (nn::Rope), so q_proj/k_proj rows are taken in
// their order (HF's own conversion script permutes Meta's interleaved pairs into this layout).
//
// Attention. Every layer's kind may be replaced (the `attention`, `layers`, `full_attention_last_n`
// overrides, as in a longctx model config): moba, topk and threshold have no parameters of their
// own and select over the pretrained keys at inference, training-free; nsa and infini add
// parameters the checkpoint does not have, initialised as a new longctx model's (nsa's gate biased
// toward its window branch, infini's beta at beta_init), so they need a fine-tune.
#pragma once
#include <longctx/model/checkpoint.hpp>
#include <longctx/model/transformer.hpp>
#include <nlohmann/json.hpp>

#include <string>

namespace longctx {

// The longctx config of a Hugging Face config.json (`path` names it in errors). Only
// LlamaForCausalLM (model_type "llama") is read: another architecture is refused by name, and so
// are what longctx's Llama does not have (an activation other than silu, attention or MLP
// biases, rope_scaling, a head_dim other than hidden_size / num_attention_heads). `overrides`
// may set the longctx keys attention, layers, full_attention_last_n, max_seq_len (default
// max_position_embeddings) and matmul_precision; any other key is refused.
ModelConfig hf_model_config(const nlohmann::json& hf_config, const nlohmann::json& overrides, const std::string& path);

struct HfImport {
  Transformer model;
  // tokenizer "spm:<dir>/tokenizer.model" with the file's bytes; special tokens from config.json's
  // bos_token_id (when tokenizer_config.json does not turn add_bos_token off) and eos_token_id.
  CheckpointInfo info;
};

// Reads the folder. Throws std::invalid_argument or std::runtime_error naming the file and what
// is wrong: a missing file, a missing tensor (by its HF name), a tensor no Llama weight of this
// config has, a shape that does not match, lm_head differing from embed_tokens in a tied model.
// `seed` initialises the parameters an nsa or infini layer adds.
HfImport import_hf(const std::string& dir, const nlohmann::json& overrides = nlohmann::json::object(),
                   uint64_t seed = 0);

}  // namespace longctx
