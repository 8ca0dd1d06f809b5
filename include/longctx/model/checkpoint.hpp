// longctx checkpoints: a safetensors file (model/safetensors.hpp) holding the weights under their
// Param names, the AdamW moments under "optimizer.m.<name>" / "optimizer.v.<name>" (training
// checkpoints only), and in its metadata the model config ("longctx.model_config"), the
// tokenizer spec ("longctx.tokenizer") and model ("longctx.tokenizer_model"), the train config and
// the step. Written by
// Trainer::save; read here for inference, which never needs the optimizer state.
#pragma once
#include <longctx/model/config.hpp>
#include <longctx/model/safetensors.hpp>
#include <longctx/model/transformer.hpp>
#include <nlohmann/json.hpp>

#include <string>

namespace longctx {

// Token ids the tokenizer alone does not say how to use ("longctx.special_tokens", JSON
// {"bos": id, "eos": [ids]}); set by `longctx import-hf` from the model's Hugging Face config,
// absent (no BOS, no EOS) for models longctx trained, whose corpora have neither.
struct SpecialTokens {
  int32_t bos = -1;           // prepended to every prompt when >= 0
  std::vector<int32_t> eos;   // generation stops at any of them
};

// The model config and tokenizer spec a checkpoint was trained with, from its header alone.
struct CheckpointInfo {
  ModelConfig model;
  std::string tokenizer;
  // The tokenizer model's bytes the checkpoint carries ("longctx.tokenizer_model", base64 in the
  // metadata), so it works from any folder; empty for bytes and for older checkpoints (then the
  // spec's path is read). make_tokenizer(tokenizer, tokenizer_model) builds it.
  std::string tokenizer_model;
  SpecialTokens special_tokens;
};
CheckpointInfo read_checkpoint_info(const std::string& checkpoint);
// The same from a header's metadata (`path` names the file in errors).
CheckpointInfo checkpoint_info(const std::map<std::string, std::string>& metadata, const std::string& path);

// The metadata of a checkpoint's inference part: format, model config, tokenizer spec and model
// (base64), special tokens. Training checkpoints add their train config and state to it.
std::map<std::string, std::string> checkpoint_metadata(const CheckpointInfo& info);

// Writes the model's weights with checkpoint_metadata(info) (info.model is the model's config):
// a checkpoint eval, generate, serve and `train --init-from` take.
void save_weights(const std::string& path, const Transformer& model, const CheckpointInfo& info);

// The model config stored in a checkpoint's metadata; throws when the file is not a longctx one,
// and std::runtime_error "longctx: corrupt checkpoint <path>: model config metadata: <reason>"
// when the config is not JSON, not an object, or fails ModelConfig's validation.
ModelConfig checkpoint_config(const std::map<std::string, std::string>& metadata, const std::string& path);

// Copies the checkpoint's tensors into the model's Params. Throws std::runtime_error
// "longctx: checkpoint <path>: ..." naming the tensor when a weight is missing, when the file holds
// a tensor that is neither a weight nor an AdamW moment ("optimizer.m.<weight>",
// "optimizer.v.<weight>") of one, or when a tensor's dtype (the model's are F32) or shape differ
// from the weight's. With `attention_kinds_may_differ` (a fine-tune that switches attention
// kinds): a kind's own weights ("layers.N.attention.<kind>.*") that the file lacks keep the model's
// fresh initialisation, and the file's kind weights the model lacks are skipped.
void load_weights(Transformer& model, const SafetensorsFile& file, const std::string& path,
                  bool attention_kinds_may_differ = false);

// The first place two JSON values differ, as "path: a vs b" (e.g. "d_ff: 64 vs 128",
// "layers[1].attention.kind: \"moba\" vs \"full\""); empty when they are equal.
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path = "");

// Writes the inference part of a checkpoint to `out`: the weights (no AdamW moments: a third of a
// training checkpoint's size) and the model config and tokenizer, with the tokenizer model
// embedded (an older checkpoint's "spm:<path>" is read from that path). `--resume` refuses the
// result; eval, generate and `train --init-from` take it. Returns the bytes written.
uint64_t export_weights(const std::string& checkpoint, const std::string& out);

// Loads a model (config + weights, never the optimizer state) from a checkpoint; returns the
// tokenizer spec via `tokenizer`. max_seq_len > 0 replaces the config's (RoPE is computed, so
// any length works; for evaluating beyond the training length). Before building the model, a config
// whose weights could not fit in the file's tensors is refused (model config metadata error), so
// a small hostile file cannot make it allocate gigabytes.
Transformer load_model(const std::string& checkpoint, std::string* tokenizer = nullptr, int64_t max_seq_len = 0);

}  // namespace longctx
