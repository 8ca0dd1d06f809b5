#include <longctx/core/error.hpp>
#include <longctx/model/checkpoint.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/base64.hpp"

namespace longctx {

namespace {

std::string tokenizer_of(const std::map<std::string, std::string>& metadata) {
  const auto it = metadata.find("longctx.tokenizer");
  return it == metadata.end() ? "bytes" : it->second;
}

[[noreturn]] void config_error(const std::string& path, std::string reason) {
  if (reason.rfind("model config: ", 0) == 0) reason.erase(0, 14);  // ModelConfig's own prefix, said once
  if (reason.size() > 300) reason = reason.substr(0, 300) + "...";
  throw std::runtime_error("longctx: corrupt checkpoint " + path + ": model config metadata: " + reason);
}

[[noreturn]] void tensor_error(const std::string& path, const std::string& what) {
  throw std::runtime_error("longctx: checkpoint " + path + ": " + what);
}

}  // namespace

ModelConfig checkpoint_config(const std::map<std::string, std::string>& metadata, const std::string& path) {
  const auto it = metadata.find("longctx.model_config");
  if (it == metadata.end()) throw std::runtime_error("longctx: " + path + " is not a longctx checkpoint (no model config)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    config_error(path, std::string("not JSON (") + e.what() + ")");
  }
  if (!j.is_object()) config_error(path, "not a JSON object (got " + j.dump().substr(0, 80) + ")");
  try {
    return ModelConfig::from_json(j);
  } catch (const std::invalid_argument& e) {
    config_error(path, message_of(e));
  } catch (const nlohmann::json::exception& e) {
    config_error(path, e.what());
  }
}

namespace {
// A weight of one layer's attention kind: "layers.N.attention.<kind>.<name>" (the projections
// wq/wk/wv/wo, shared by every kind, are "layers.N.attention.wq" etc.).
bool is_kind_weight(const std::string& name) {
  const size_t at = name.find(".attention.");
  return name.rfind("layers.", 0) == 0 && at != std::string::npos &&
         name.find('.', at + std::strlen(".attention.")) != std::string::npos;
}
}  // namespace

void load_weights(Transformer& m, const SafetensorsFile& f, const std::string& path, bool attention_kinds_may_differ) {
  std::map<std::string, const Tensor*> file;
  for (const auto& [name, t] : f.tensors) file[name] = &t;
  std::map<std::string, const Param*> weights;
  for (const Param& p : m.params()) weights[p.name] = &p;
  // Every tensor of the file belongs to the model: a weight, or an AdamW moment of one (Trainer).
  for (const auto& [name, t] : file) {
    std::string weight = name;
    for (const std::string prefix : {"optimizer.m.", "optimizer.v."})
      if (name.rfind(prefix, 0) == 0) weight = name.substr(prefix.size());
    const auto w = weights.find(weight);
    if (w == weights.end()) {
      if (attention_kinds_may_differ && is_kind_weight(weight)) continue;  // the old kind's own weight
      tensor_error(path, "tensor '" + name + "' is not a weight of the model" +
                             (weight == name ? "" : " nor an AdamW moment of one") + " (a checkpoint of another model?)");
    }
    const Tensor& want = w->second->value;
    if (t->dtype() != want.dtype())
      tensor_error(path, concat("tensor '", name, "' is ", t->dtype() == DType::f32 ? "F32" : "BF16",
                                ", the model expects F32"));
    if (t->shape() != want.shape())
      tensor_error(path, "tensor '" + name + "' has shape " + t->shape_str() + ", the model expects " + want.shape_str());
  }
  for (Param& p : m.params()) {
    const auto t = file.find(p.name);
    if (t == file.end()) {
      if (attention_kinds_may_differ && is_kind_weight(p.name)) continue;  // the new kind's own: as initialised
      tensor_error(path, "no tensor '" + p.name + "' (a weight of the model)");
    }
    std::memcpy(p.value.raw(), t->second->raw(), t->second->nbytes());
  }
}

std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path) {
  const std::string here = path.empty() ? "(top level)" : path;
  if (a.type() != b.type() && !(a.is_number() && b.is_number())) return here + ": " + a.dump() + " vs " + b.dump();
  if (a.is_object()) {
    for (const auto& [key, value] : a.items())  // shared fields first: "kind" before its options
      if (b.contains(key))
        if (std::string d = first_difference(value, b.at(key), path.empty() ? key : path + "." + key); !d.empty())
          return d;
    for (const auto& [key, value] : a.items())
      if (!b.contains(key)) return (path.empty() ? key : path + "." + key) + ": " + value.dump() + " vs (absent)";
    for (const auto& [key, value] : b.items())
      if (!a.contains(key)) return (path.empty() ? key : path + "." + key) + ": (absent) vs " + value.dump();
    return "";
  }
  if (a.is_array()) {
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
      if (std::string d = first_difference(a[i], b[i], concat(path, "[", i, "]")); !d.empty()) return d;
    return a.size() == b.size() ? "" : concat(here, ": ", a.size(), " entries vs ", b.size());
  }
  return a == b ? "" : here + ": " + a.dump() + " vs " + b.dump();
}

CheckpointInfo checkpoint_info(const std::map<std::string, std::string>& metadata, const std::string& path) {
  CheckpointInfo info{checkpoint_config(metadata, path), tokenizer_of(metadata), "", {}};
  try {
    if (const auto it = metadata.find("longctx.tokenizer_model"); it != metadata.end())
      info.tokenizer_model = base64_decode(it->second, "longctx.tokenizer_model");
    if (const auto it = metadata.find("longctx.special_tokens"); it != metadata.end()) {
      const nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
      const int64_t V = info.model.vocab_size;
      auto id = [&](const nlohmann::json& x) {
        LONGCTX_CHECK(x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < V,
                      "longctx.special_tokens: ", x.dump(), " is not a token id in [0, ", V, ")");
        return x.get<int32_t>();
      };
      LONGCTX_CHECK(j.is_object() && j.contains("eos") && j.at("eos").is_array(),
                    "longctx.special_tokens must be {\"bos\": id, \"eos\": [ids]}, got ", it->second.substr(0, 80));
      if (j.contains("bos")) info.special_tokens.bos = id(j.at("bos"));
      for (const nlohmann::json& e : j.at("eos")) info.special_tokens.eos.push_back(id(e));
    }
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error("longctx: corrupt checkpoint " + path + ": " + message_of(e));
  }
  return info;
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  return checkpoint_info(read_safetensors_metadata(path), path);
}

std::map<std::string, std::string> checkpoint_metadata(const CheckpointInfo& info) {
  std::map<std::string, std::string> metadata{{"format", "longctx"},
                                               {"longctx.model_config", info.model.to_json().dump()},
                                               {"longctx.tokenizer", info.tokenizer}};
  if (!info.tokenizer_model.empty()) metadata["longctx.tokenizer_model"] = base64_encode(info.tokenizer_model);
  const SpecialTokens& s = info.special_tokens;
  if (s.bos >= 0 || !s.eos.empty()) {
    nlohmann::json j{{"eos", s.eos}};
    if (s.bos >= 0) j["bos"] = s.bos;
    metadata["longctx.special_tokens"] = j.dump();
  }
  return metadata;
}

void save_weights(const std::string& path, const Transformer& model, const CheckpointInfo& info) {
  std::vector<std::pair<std::string, const Tensor*>> tensors;
  for (const Param& p : model.params()) tensors.push_back({p.name, &p.value});
  CheckpointInfo own = info;
  own.model = model.config();
  save_safetensors(path, tensors, checkpoint_metadata(own));
}

uint64_t export_weights(const std::string& path, const std::string& out) {
  LONGCTX_CHECK(std::filesystem::weakly_canonical(path) != std::filesystem::weakly_canonical(out),
                "export: --out must not be the checkpoint itself (", out, ")");
  const SafetensorsFile f = load_safetensors(path, [](const std::string& name) { return name.rfind("optimizer.", 0) != 0; });
  CheckpointInfo info = checkpoint_info(f.metadata, path);
  if (info.tokenizer_model.empty() && info.tokenizer.rfind("spm:", 0) == 0) {
    // an older checkpoint names the model file: embed it now
    std::ifstream in(info.tokenizer.substr(4), std::ios::binary);
    LONGCTX_CHECK(in.good(), "export: ", path, " was trained with tokenizer '", info.tokenizer, "', whose model file is not "
                  "there from here: run export from the folder the run was trained in");
    info.tokenizer_model.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::vector<std::pair<std::string, const Tensor*>> tensors;
  for (const auto& [name, t] : f.tensors) tensors.push_back({name, &t});
  save_safetensors(out, tensors, checkpoint_metadata(info));
  return std::filesystem::file_size(out);
}

Transformer load_model(const std::string& path, std::string* tokenizer, int64_t max_seq_len) {
  const SafetensorsFile f = load_safetensors(path, [](const std::string& name) { return name.rfind("optimizer.", 0) != 0; });
  ModelConfig cfg = checkpoint_config(f.metadata, path);
  if (max_seq_len > 0) cfg.max_seq_len = max_seq_len;
  // A config that does not match the tensors must not make us allocate far more than the file
  // holds; the slack leaves a small mismatch to load_weights, which names the tensor.
  double held = 0;
  for (const auto& [name, t] : f.tensors) held += double(t.numel());
  if (const double need = param_count(cfg); need > 2 * held + double(1 << 20))
    config_error(path, concat("it describes a model of ", need, " weights, the file holds ", held));
  Transformer m(cfg, 0);
  load_weights(m, f, path);
  if (tokenizer) *tokenizer = tokenizer_of(f.metadata);
  return m;
}

}  // namespace longctx
