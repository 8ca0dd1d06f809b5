#include <longctx/core/error.hpp>
#include <longctx/model/config.hpp>

#include <algorithm>
#include <limits>

#include "core/json_fields.hpp"

namespace longctx {

namespace {

// Upper bounds that keep every product of sizes inside int64; the real bound is memory (the
// Transformer and Trainer refuse a config that does not fit, memory::require_fits).
constexpr int64_t kMaxWidth = int64_t(1) << 24, kMaxLayers = int64_t(1) << 16, kMaxTokens = int64_t(1) << 31;

}  // namespace

AttentionSpec attention_from_json(const nlohmann::json& j, AttentionSpec base, const std::string& what) {
  LONGCTX_CHECK(j.is_object(), what, ": attention must be a JSON object, got ", j.dump());
  AttentionSpec a = std::move(base);
  if (j.contains("kind")) {
    const AttentionKind kind = attention_kind_from_name(read_value<std::string>(j, "kind", "", what + ": attention"));
    if (kind != a.kind()) a = AttentionSpec::defaults(kind);
  }
  a.visit([&](auto& o) {
    std::vector<std::string> known = field_names(o);
    std::string hint;
    for (const std::string& n : known) hint += (hint.empty() ? "" : ", ") + n;
    hint = concat(" (", a.name(), " fields: ", hint.empty() ? "none" : hint, ")");
    known.push_back("kind");
    check_known_fields(j, known, what + ": attention", hint);
    read_fields(j, o, concat(what, ": ", a.name(), " attention"));
  });
  return a;
}

nlohmann::json attention_to_json(const AttentionSpec& a) {
  nlohmann::json j{{"kind", a.name()}};
  a.visit([&](const auto& o) { write_fields(o, j); });
  return j;
}

FfnSpec ffn_from_json(const nlohmann::json& j, FfnSpec f, const std::string& what) {
  LONGCTX_CHECK(j.is_object(), what, ": ffn must be a JSON object, got ", j.dump());
  std::vector<std::string> known = field_names(f);
  known.push_back("kind");
  check_known_fields(j, known, what + ": ffn");
  f.kind = read_value(j, "kind", f.kind, what + ": ffn");
  read_fields(j, f, what + ": ffn");
  return f;
}

nlohmann::json ffn_to_json(const FfnSpec& f) {
  nlohmann::json j{{"kind", f.kind}};
  if (f.kind == "moe") write_fields(f, j);
  return j;
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  LONGCTX_CHECK(j.is_object(), "model config must be a JSON object");
  check_known_fields(
      j,
      {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len", "rope_theta", "norm_eps",
       "tie_embeddings", "matmul_precision", "attention", "ffn", "layers", "full_attention_last_n"},
      "model config");
  ModelConfig c;
  try {
    c.vocab_size = read_value(j, "vocab_size", c.vocab_size, "model config");
    c.d_model = read_value(j, "d_model", c.d_model, "model config");
    c.n_layers = read_value(j, "n_layers", c.n_layers, "model config");
    c.n_heads = read_value(j, "n_heads", c.n_heads, "model config");
    c.n_kv_heads = read_value(j, "n_kv_heads", c.n_heads, "model config");
    c.d_ff = read_value(j, "d_ff", c.d_ff, "model config");
    c.max_seq_len = read_value(j, "max_seq_len", c.max_seq_len, "model config");
    c.rope_theta = read_value(j, "rope_theta", c.rope_theta, "model config");
    c.norm_eps = read_value(j, "norm_eps", c.norm_eps, "model config");
    c.tie_embeddings = read_value(j, "tie_embeddings", c.tie_embeddings, "model config");
    const std::string mp = read_value<std::string>(j, "matmul_precision", "f32", "model config");
    LONGCTX_CHECK(mp == "f32" || mp == "bf16", "model config: matmul_precision must be \"f32\" or \"bf16\", got \"", mp,
                  "\"");
    c.matmul_precision = mp == "bf16" ? DType::bf16 : DType::f32;
    LONGCTX_CHECK(c.n_layers >= 1 && c.n_layers <= kMaxLayers, "model config: n_layers must be in [1, ", kMaxLayers,
                  "], got ", c.n_layers);
    const AttentionSpec attn = attention_from_json(j.value("attention", nlohmann::json::object()));
    const FfnSpec ffn = ffn_from_json(j.value("ffn", nlohmann::json::object()));
    c.attention.assign(size_t(c.n_layers), attn);
    c.ffn.assign(size_t(c.n_layers), ffn);
    if (j.contains("layers")) {
      const auto& layers = j.at("layers");
      LONGCTX_CHECK(layers.is_array() && int64_t(layers.size()) == c.n_layers, "model config: 'layers' must list ",
                    c.n_layers, " layers, got ", layers.size());
      for (size_t i = 0; i < layers.size(); ++i) {
        LONGCTX_CHECK(layers[i].is_object(), "model config: layers[", i, "] must be a JSON object, got ", layers[i].dump());
        check_known_fields(layers[i], {"attention", "ffn", "rope"}, "model config: layers[]");
        if (!read_value(layers[i], "rope", true, "model config: layers[]")) c.nope_layers.push_back(int64_t(i));
        c.attention[i] = attention_from_json(layers[i].value("attention", nlohmann::json::object()), c.attention[i]);
        c.ffn[i] = ffn_from_json(layers[i].value("ffn", nlohmann::json::object()), c.ffn[i]);
      }
    }
    const int64_t last_full = read_value<int64_t>(j, "full_attention_last_n", 0, "model config");
    LONGCTX_CHECK(last_full >= 0 && last_full <= c.n_layers, "model config: full_attention_last_n must be in [0, ",
                  c.n_layers, "], got ", last_full);
    for (int64_t i = c.n_layers - last_full; i < c.n_layers; ++i) c.attention[size_t(i)] = AttentionSpec{};
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(concat("longctx: model config: ", e.what()));
  }
  c.validate();
  return c;
}

moe::Config moe_config(const ModelConfig& c, int64_t layer) { return moe_config(c.ffn[size_t(layer)], c.d_model, c.d_ff); }

moe::Config moe_config(const FfnSpec& f, int64_t d_model, int64_t d_ff) {
  moe::Config m;
  m.d_model = d_model;
  m.d_ff = f.d_ff > 0 ? f.d_ff : d_ff;
  m.num_experts = f.num_experts;
  m.top_k = f.top_k;
  m.num_shared = f.num_shared;
  m.dropless = f.capacity_factor == 0;
  m.capacity_factor = m.dropless ? 1.0 : f.capacity_factor;
  m.router = f.router;
  m.norm = f.gate_norm;
  m.importance_weight = float(f.importance_weight);
  m.load_balance_weight = float(f.load_balance_weight);
  m.z_loss_weight = float(f.z_loss_weight);
  m.bias_update_rate = float(f.bias_update_rate);
  return m;
}

uint64_t moe_noise_seed(uint64_t seed, int64_t layer) { return seed * 0x9E3779B97F4A7C15ull + uint64_t(layer); }

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json layers = nlohmann::json::array();
  for (int64_t i = 0; i < n_layers; ++i) {
    layers.push_back({{"attention", attention_to_json(attention[size_t(i)])}, {"ffn", ffn_to_json(ffn[size_t(i)])}});
    if (!has_rope(i)) layers.back()["rope"] = false;
  }
  return {{"vocab_size", vocab_size},
          {"d_model", d_model},
          {"n_layers", n_layers},
          {"n_heads", n_heads},
          {"n_kv_heads", n_kv_heads},
          {"d_ff", d_ff},
          {"max_seq_len", max_seq_len},
          {"rope_theta", rope_theta},
          {"norm_eps", norm_eps},
          {"tie_embeddings", tie_embeddings},
          {"matmul_precision", matmul_precision == DType::bf16 ? "bf16" : "f32"},
          {"layers", layers}};
}

bool ModelConfig::has_rope(int64_t layer) const {
  return !std::binary_search(nope_layers.begin(), nope_layers.end(), layer);
}

void ModelConfig::validate() const {
  auto size = [](const char* name, int64_t v, int64_t most) {
    LONGCTX_CHECK(v > 0 && v <= most, "model config: ", name, " must be in [1, ", most, "], got ", v);
  };
  size("vocab_size", vocab_size, std::numeric_limits<int32_t>::max());  // token ids are int32
  size("d_model", d_model, kMaxWidth);
  size("n_layers", n_layers, kMaxLayers);
  size("n_heads", n_heads, kMaxWidth);
  size("n_kv_heads", n_kv_heads, kMaxWidth);
  size("d_ff", d_ff, kMaxWidth);
  size("max_seq_len", max_seq_len, kMaxTokens);
  LONGCTX_CHECK(d_model % n_heads == 0, "model config: n_heads (", n_heads, ") must divide d_model (", d_model, ")");
  LONGCTX_CHECK(head_dim() % 2 == 0, "model config: head_dim (d_model / n_heads = ", head_dim(), ") must be even for RoPE");
  LONGCTX_CHECK(n_heads % n_kv_heads == 0, "model config: n_kv_heads (", n_kv_heads, ") must divide n_heads (", n_heads, ")");
  LONGCTX_CHECK(rope_theta > 0, "model config: rope_theta must be > 0, got ", rope_theta);
  LONGCTX_CHECK(norm_eps > 0, "model config: norm_eps must be > 0, got ", norm_eps);
  LONGCTX_CHECK(int64_t(attention.size()) == n_layers && int64_t(ffn.size()) == n_layers,
                "model config: need one attention and ffn spec per layer");
  for (size_t i = 0; i < nope_layers.size(); ++i)
    LONGCTX_CHECK(nope_layers[i] >= 0 && nope_layers[i] < n_layers && (i == 0 || nope_layers[i] > nope_layers[i - 1]),
                  "model config: nope_layers must be ascending layer indices in [0, ", n_layers, ")");
  for (size_t i = 0; i < attention.size(); ++i) {
    attention[i].validate(concat("model config: layer ", i, ": ", attention[i].name(), " "));
    LONGCTX_CHECK(ffn[i].kind == "dense" || ffn[i].kind == "moe", "model config: layer ", i, ": unknown ffn kind '",
                  ffn[i].kind, "' (available: dense, moe)");
    if (ffn[i].kind == "moe") {
      const FfnSpec& f = ffn[i];
      LONGCTX_CHECK(f.num_experts <= kMaxLayers && f.num_shared <= kMaxLayers && f.d_ff <= kMaxWidth, "model config: layer ",
                    i, ": moe num_experts and num_shared must be <= ", kMaxLayers, " and d_ff <= ", kMaxWidth);
      moe::validate(moe_config(*this, int64_t(i)));
    }
  }
}

}  // namespace longctx
