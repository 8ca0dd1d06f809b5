#include <longctx/core/error.hpp>
#include <longctx/model/checkpoint.hpp>

#include <algorithm>
#include <cstring>

namespace longctx {

namespace {

std::string tokenizer_of(const std::map<std::string, std::string>& metadata) {
  const auto it = metadata.find("longctx.tokenizer");
  return it == metadata.end() ? "bytes" : it->second;
}

}  // namespace

ModelConfig checkpoint_config(const std::map<std::string, std::string>& metadata, const std::string& path) {
  const auto it = metadata.find("longctx.model_config");
  if (it == metadata.end()) throw std::runtime_error("longctx: " + path + " is not a longctx checkpoint (no model config)");
  return ModelConfig::from_json(nlohmann::json::parse(it->second));
}

void load_weights(Transformer& m, const SafetensorsFile& f, const std::string& path) {
  for (Param& p : m.params()) {
    const Tensor& t = f.at(p.name);
    LONGCTX_CHECK(t.shape() == p.value.shape() && t.dtype() == DType::f32, "checkpoint ", path, ": tensor '", p.name,
                  "' has shape ", t.shape_str(), ", the model expects ", p.value.shape_str());
    std::memcpy(p.value.raw(), t.raw(), t.nbytes());
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

CheckpointInfo read_checkpoint_info(const std::string& path) {
  const auto metadata = read_safetensors_metadata(path);
  return {checkpoint_config(metadata, path), tokenizer_of(metadata)};
}

Transformer load_model(const std::string& path, std::string* tokenizer, int64_t max_seq_len) {
  const SafetensorsFile f = load_safetensors(path, [](const std::string& name) { return name.rfind("optimizer.", 0) != 0; });
  ModelConfig cfg = checkpoint_config(f.metadata, path);
  if (max_seq_len > 0) cfg.max_seq_len = max_seq_len;
  Transformer m(cfg, 0);
  load_weights(m, f, path);
  if (tokenizer) *tokenizer = tokenizer_of(f.metadata);
  return m;
}

}  // namespace longctx
