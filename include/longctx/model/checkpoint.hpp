// longctx checkpoints: a safetensors file (model/safetensors.hpp) holding the weights under their
// Param names, the AdamW moments under "optimizer.m.<name>" / "optimizer.v.<name>" (training
// checkpoints only), and in its metadata the model config ("longctx.model_config"), the
// tokenizer spec ("longctx.tokenizer"), the train config and the step. Written by
// Trainer::save; read here for inference, which never needs the optimizer state.
#pragma once
#include <longctx/model/config.hpp>
#include <longctx/model/safetensors.hpp>
#include <longctx/model/transformer.hpp>
#include <nlohmann/json.hpp>

#include <string>

namespace longctx {

// The model config and tokenizer spec a checkpoint was trained with, from its header alone.
struct CheckpointInfo {
  ModelConfig model;
  std::string tokenizer;
};
CheckpointInfo read_checkpoint_info(const std::string& checkpoint);

// The model config stored in a checkpoint's metadata; throws when the file is not a longctx one,
// and std::runtime_error "longctx: corrupt checkpoint <path>: model config metadata: <reason>"
// when the config is not JSON, not an object, or fails ModelConfig's validation.
ModelConfig checkpoint_config(const std::map<std::string, std::string>& metadata, const std::string& path);

// Copies the checkpoint's tensors into the model's Params. Throws std::runtime_error
// "longctx: checkpoint <path>: ..." naming the tensor when a weight is missing, when the file holds
// a tensor that is neither a weight nor an AdamW moment ("optimizer.m.<weight>",
// "optimizer.v.<weight>") of one, or when a tensor's dtype (the model's are F32) or shape differ
// from the weight's.
void load_weights(Transformer& model, const SafetensorsFile& file, const std::string& path);

// The first place two JSON values differ, as "path: a vs b" (e.g. "d_ff: 64 vs 128",
// "layers[1].attention.kind: \"moba\" vs \"full\""); empty when they are equal.
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path = "");

// Loads a model (config + weights, never the optimizer state) from a checkpoint; returns the
// tokenizer spec via `tokenizer`. max_seq_len > 0 replaces the config's (RoPE is computed, so
// any length works; for evaluating beyond the training length). Before building the model, a config
// whose weights could not fit in the file's tensors is refused (model config metadata error), so
// a small hostile file cannot make it allocate gigabytes.
Transformer load_model(const std::string& checkpoint, std::string* tokenizer = nullptr, int64_t max_seq_len = 0);

}  // namespace longctx
