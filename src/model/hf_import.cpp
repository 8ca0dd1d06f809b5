#include <longctx/core/error.hpp>
#include <longctx/model/hf_import.hpp>
#include <longctx/model/safetensors.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <unordered_map>

#include "core/json_fields.hpp"

namespace longctx {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json read_json_file(const fs::path& p) {
  std::ifstream f(p);
  LONGCTX_CHECK(f.good(), "hf import: cannot read ", p.string());
  const json j = json::parse(f, nullptr, false);
  LONGCTX_CHECK(!j.is_discarded() && j.is_object(), "hf import: ", p.string(), " is not a JSON object");
  return j;
}

// A config value that may be absent or null (HF writes both for "unset").
template <class T>
T field(const json& j, const char* name, T def, const std::string& what) {
  return j.contains(name) && !j.at(name).is_null() ? read_value<T>(j, name, def, what) : def;
}

int64_t required(const json& j, const char* name, const std::string& what) {
  LONGCTX_CHECK(j.contains(name) && !j.at(name).is_null(), what, ": no ", name);
  return read_value<int64_t>(j, name, 0, what);
}

// The architecture a config names: its "architectures" list, else its model_type.
std::string architecture(const json& hf, const std::string& what) {
  if (!hf.contains("architectures")) return field<std::string>(hf, "model_type", "(none)", what);
  const json& a = hf.at("architectures");
  LONGCTX_CHECK(a.is_array() && a.size() == 1 && a[0].is_string(), what,
                ": architectures must list one architecture, got ", a.dump());
  return a[0].get<std::string>();
}

// Where a HF tensor goes: the longctx Param, and whether it is a projection ([out, in] in HF,
// [in, out] here) that is transposed.
struct Target {
  std::string hf, param;
  bool transpose;
};

std::vector<Target> llama_targets(const ModelConfig& c) {
  std::vector<Target> t{{"model.embed_tokens.weight", "tok_embeddings.weight", false}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string hf = concat("model.layers.", l, "."), lc = concat("layers.", l, ".");
    t.push_back({hf + "input_layernorm.weight", lc + "attention_norm.weight", false});
    t.push_back({hf + "self_attn.q_proj.weight", lc + "attention.wq", true});
    t.push_back({hf + "self_attn.k_proj.weight", lc + "attention.wk", true});
    t.push_back({hf + "self_attn.v_proj.weight", lc + "attention.wv", true});
    t.push_back({hf + "self_attn.o_proj.weight", lc + "attention.wo", true});
    t.push_back({hf + "post_attention_layernorm.weight", lc + "ffn_norm.weight", false});
    t.push_back({hf + "mlp.gate_proj.weight", lc + "feed_forward.w1", true});  // SwiGLU: silu(x W1) * (x W3)
    t.push_back({hf + "mlp.up_proj.weight", lc + "feed_forward.w3", true});
    t.push_back({hf + "mlp.down_proj.weight", lc + "feed_forward.w2", true});
  }
  t.push_back({"model.norm.weight", "norm.weight", false});
  if (!c.tie_embeddings) t.push_back({"lm_head.weight", "output.weight", false});
  return t;
}

// The weight files: the shards an index names, or model.safetensors.
std::vector<fs::path> weight_files(const fs::path& dir) {
  const fs::path index = dir / "model.safetensors.index.json";
  if (!fs::exists(index)) {
    LONGCTX_CHECK(fs::exists(dir / "model.safetensors"), "hf import: ", dir.string(),
                  " has neither model.safetensors nor model.safetensors.index.json (PyTorch .bin weights are not "
                  "read: save the model with safe_serialization=True)");
    return {dir / "model.safetensors"};
  }
  const json j = read_json_file(index);
  LONGCTX_CHECK(j.contains("weight_map") && j.at("weight_map").is_object(), "hf import: ", index.string(),
                " has no weight_map object");
  std::set<std::string> names;
  for (const auto& [tensor, file] : j.at("weight_map").items()) {
    LONGCTX_CHECK(file.is_string() && fs::path(file.get<std::string>()).filename() == file.get<std::string>(),
                  "hf import: ", index.string(), ": tensor '", tensor, "' is in ", file.dump(), ", not a file name");
    names.insert(file.get<std::string>());
  }
  std::vector<fs::path> files;
  for (const std::string& n : names) {
    LONGCTX_CHECK(fs::exists(dir / n), "hf import: ", index.string(), " names the shard ", n, ", which is not in ",
                  dir.string());
    files.push_back(dir / n);
  }
  return files;
}

// Copies a HF tensor (F32 or BF16; F16 is read as F32) into a Param, transposed for projections.
void copy_weight(const Tensor& src, const Target& t, Param& p, const std::string& file) {
  const Tensor& dst = p.value;
  std::vector<int64_t> want = dst.shape();
  if (t.transpose) std::swap(want[0], want[1]);
  LONGCTX_CHECK(src.shape() == want, "hf import: ", file, ": tensor '", t.hf, "' has shape ", src.shape_str(),
                ", this config expects ", shape_str(want));
  const int64_t n = src.numel();
  std::vector<float> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    values[size_t(i)] = src.dtype() == DType::bf16 ? bf16_to_f32(src.bf16()[i]) : src.f32()[i];
  float* out = p.value.f32();
  if (!t.transpose) {
    std::copy(values.begin(), values.end(), out);
    return;
  }
  const int64_t rows = want[0], cols = want[1];  // HF [out, in] -> ours [in, out]
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = values[size_t(r * cols + c)];
}

SpecialTokens special_tokens(const json& hf, const fs::path& dir, const std::string& what) {
  SpecialTokens s;
  bool add_bos = true;  // LlamaTokenizer's default
  if (const fs::path tc = dir / "tokenizer_config.json"; fs::exists(tc))
    add_bos = field<bool>(read_json_file(tc), "add_bos_token", true, "hf import: " + tc.string());
  // LlamaConfig's defaults are 1 and 2 when absent; null means none
  const json bos = hf.contains("bos_token_id") ? hf.at("bos_token_id") : json(1);
  if (add_bos && !bos.is_null()) s.bos = read_value<int32_t>(json{{"bos_token_id", bos}}, "bos_token_id", 0, what);
  const json eos = hf.contains("eos_token_id") ? hf.at("eos_token_id") : json(2);
  for (const json& e : eos.is_array() ? eos : eos.is_null() ? json::array() : json::array({eos}))
    s.eos.push_back(read_value<int32_t>(json{{"eos_token_id", e}}, "eos_token_id", 0, what));
  return s;
}

}  // namespace

ModelConfig hf_model_config(const json& hf, const json& overrides, const std::string& path) {
  const std::string what = "hf import: " + path;
  LONGCTX_CHECK(hf.is_object(), what, " is not a JSON object");
  const std::string arch = architecture(hf, what);
  LONGCTX_CHECK(arch == "LlamaForCausalLM" || arch == "llama", what, ": architecture '", arch,
                "' is not supported (longctx imports LlamaForCausalLM)");
  const std::string act = field<std::string>(hf, "hidden_act", "silu", what);
  LONGCTX_CHECK(act == "silu", what, ": hidden_act '", act, "' is not supported (longctx's FFN is SwiGLU: silu)");
  for (const char* bias : {"attention_bias", "mlp_bias"})
    LONGCTX_CHECK(!field<bool>(hf, bias, false, what), what, ": ", bias, " is true; longctx's linear layers have no bias");
  if (hf.contains("rope_scaling") && !hf.at("rope_scaling").is_null()) {
    const json& r = hf.at("rope_scaling");
    const std::string type = r.is_object() ? r.value("rope_type", r.value("type", std::string())) : std::string();
    LONGCTX_CHECK(type == "default", what, ": rope_scaling ", r.dump(),
                  " is not supported (longctx's RoPE is unscaled; max_seq_len extends it as it is)");
  }
  const int64_t d_model = required(hf, "hidden_size", what), heads = required(hf, "num_attention_heads", what);
  LONGCTX_CHECK(heads > 0 && d_model % heads == 0, what, ": num_attention_heads (", heads, ") must divide hidden_size (",
                d_model, ")");
  const int64_t head_dim = field<int64_t>(hf, "head_dim", d_model / heads, what);
  LONGCTX_CHECK(head_dim == d_model / heads, what, ": head_dim ", head_dim, " is not hidden_size / num_attention_heads (",
                d_model / heads, "), which longctx's layers assume");
  json j{{"vocab_size", required(hf, "vocab_size", what)},
         {"d_model", d_model},
         {"n_layers", required(hf, "num_hidden_layers", what)},
         {"n_heads", heads},
         {"n_kv_heads", field<int64_t>(hf, "num_key_value_heads", heads, what)},
         {"d_ff", required(hf, "intermediate_size", what)},
         {"max_seq_len", required(hf, "max_position_embeddings", what)},
         {"rope_theta", field<double>(hf, "rope_theta", 10000.0, what)},
         {"norm_eps", field<double>(hf, "rms_norm_eps", 1e-6, what)},  // LlamaConfig's defaults
         {"tie_embeddings", field<bool>(hf, "tie_word_embeddings", false, what)}};
  LONGCTX_CHECK(overrides.is_object(), "hf import: overrides must be a JSON object, got ", overrides.dump());
  check_known_fields(overrides, {"attention", "layers", "full_attention_last_n", "max_seq_len", "matmul_precision"},
                     "hf import: overrides");
  for (const auto& [key, value] : overrides.items()) j[key] = value;
  const ModelConfig c = ModelConfig::from_json(j);
  for (int64_t l = 0; l < c.n_layers; ++l)
    LONGCTX_CHECK(c.ffn[size_t(l)].kind == "dense", "hf import: layer ", l, ": ffn kind '", c.ffn[size_t(l)].kind,
                  "': a Llama checkpoint has dense SwiGLU FFNs");
  return c;
}

HfImport import_hf(const std::string& dir_name, const json& overrides, uint64_t seed) {
  const fs::path dir(dir_name);
  const fs::path config_path = dir / "config.json", tokenizer_path = dir / "tokenizer.model";
  const json hf = read_json_file(config_path);
  const ModelConfig cfg = hf_model_config(hf, overrides, config_path.string());
  std::ifstream tok(tokenizer_path, std::ios::binary);
  LONGCTX_CHECK(tok.good(), "hf import: ", dir.string(), " has no tokenizer.model (longctx reads SentencePiece "
                "tokenizers; a tokenizer.json-only BPE tokenizer, as Llama 3's, is not supported)");
  HfImport out{Transformer(cfg, seed), {}};
  out.info = {cfg, "spm:" + tokenizer_path.string(),
              std::string(std::istreambuf_iterator<char>(tok), std::istreambuf_iterator<char>()),
              special_tokens(hf, dir, "hf import: " + config_path.string())};

  const std::vector<Target> targets = llama_targets(cfg);
  std::unordered_map<std::string, const Target*> by_name;
  for (const Target& t : targets) by_name[t.hf] = &t;
  std::set<std::string> filled;
  Tensor lm_head;  // a tied model's copy of embed_tokens, if the files hold one
  for (const fs::path& file : weight_files(dir)) {
    const SafetensorsFile f = load_safetensors(file.string());
    for (const auto& [name, t] : f.tensors) {
      if (name.ends_with("rotary_emb.inv_freq")) continue;  // older files save RoPE's frequencies: derived
      if (cfg.tie_embeddings && name == "lm_head.weight") {
        lm_head = t.to(DType::f32);
        continue;
      }
      const auto it = by_name.find(name);
      LONGCTX_CHECK(it != by_name.end(), "hf import: ", file.string(), ": tensor '", name,
                    "' is not a weight of a Llama model of this config (", cfg.n_layers, " layers, ",
                    cfg.tie_embeddings ? "tied" : "untied", " head)");
      LONGCTX_CHECK(filled.insert(name).second, "hf import: tensor '", name, "' is in more than one file (", file.string(),
                    ")");
      copy_weight(t, *it->second, out.model.param(it->second->param), file.string());
    }
  }
  for (const Target& t : targets)
    LONGCTX_CHECK(filled.count(t.hf), "hf import: ", dir.string(), ": no tensor '", t.hf, "' (a weight of the model)");
  if (!lm_head.empty()) {
    const Tensor& e = out.model.param("tok_embeddings.weight").value;
    LONGCTX_CHECK(lm_head.shape() == e.shape() && std::equal(e.f32(), e.f32() + e.numel(), lm_head.f32()),
                  "hf import: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight");
  }
  return out;
}

}  // namespace longctx
