#include <longctx/core/error.hpp>
#include <longctx/model/config.hpp>

#include "core/json_fields.hpp"

namespace longctx {

namespace {

AttentionSpec attention_from_json(const nlohmann::json& j, AttentionSpec a) {
  // Fields of every kind are accepted anywhere (a layer may override a field of the default
  // spec's kind); to_json writes only those of the layer's kind.
  check_known_fields(j, {"kind", "block_size", "top_k", "tau", "stop_rule", "block_len", "stride", "select_len",
                         "top_n", "local_blocks", "window", "compress", "hidden", "segment_len", "update"},
                     "model config: attention");
  a.kind = j.value("kind", a.kind);
  a.block_size = j.value("block_size", a.block_size);
  a.top_k = j.value("top_k", a.top_k);
  a.tau = j.value("tau", a.tau);
  a.stop_rule = j.value("stop_rule", a.stop_rule);
  a.block_len = j.value("block_len", a.block_len);
  a.stride = j.value("stride", a.stride);
  a.select_len = j.value("select_len", a.select_len);
  a.top_n = j.value("top_n", a.top_n);
  a.local_blocks = j.value("local_blocks", a.local_blocks);
  a.window = j.value("window", a.window);
  a.compress = j.value("compress", a.compress);
  a.hidden = j.value("hidden", a.hidden);
  a.segment_len = j.value("segment_len", a.segment_len);
  a.update = j.value("update", a.update);
  return a;
}

nlohmann::json attention_to_json(const AttentionSpec& a) {
  nlohmann::json j{{"kind", a.kind}};
  if (a.kind == "moba" || a.kind == "topk") j.update({{"block_size", a.block_size}, {"top_k", a.top_k}});
  if (a.kind == "threshold") j.update({{"block_size", a.block_size}, {"tau", a.tau}, {"stop_rule", a.stop_rule}});
  if (a.kind == "nsa")
    j.update({{"block_len", a.block_len}, {"stride", a.stride}, {"select_len", a.select_len}, {"top_n", a.top_n},
              {"local_blocks", a.local_blocks}, {"window", a.window}, {"compress", a.compress}, {"hidden", a.hidden}});
  if (a.kind == "infini") j.update({{"segment_len", a.segment_len}, {"update", a.update}});
  return j;
}

// Throws naming the layer, the kind, the field and its value.
void validate_attention(const AttentionSpec& a, size_t layer) {
  auto need = [&](bool ok, const char* field, const auto& value, const std::string& rule) {
    LONGCTX_CHECK(ok, "model config: layer ", layer, ": ", a.kind, " ", field, " must be ", rule, ", got ", value);
  };
  if (a.kind == "moba" || a.kind == "topk" || a.kind == "threshold")
    need(a.block_size > 0, "block_size", a.block_size, "> 0");
  if (a.kind == "moba" || a.kind == "topk") need(a.top_k > 0, "top_k", a.top_k, "> 0");
  if (a.kind == "threshold") {
    need(a.tau > 0 && a.tau <= 1, "tau", a.tau, "in (0, 1]");
    need(a.stop_rule == "bound" || a.stop_rule == "heuristic", "stop_rule", "'" + a.stop_rule + "'",
         "'bound' or 'heuristic'");
  }
  if (a.kind == "nsa") {
    need(a.stride > 0, "stride", a.stride, "> 0");
    need(a.block_len > 0 && a.block_len % a.stride == 0, "block_len", a.block_len,
         concat("a positive multiple of stride (", a.stride, ")"));
    need(a.select_len > 0, "select_len", a.select_len, "> 0");
    need(a.local_blocks >= 0, "local_blocks", a.local_blocks, ">= 0");
    need(a.top_n >= 1 + a.local_blocks, "top_n", a.top_n,
         concat(">= 1 + local_blocks (", 1 + a.local_blocks, "): block 0 and the local blocks are always selected"));
    need(a.window > 0, "window", a.window, "> 0");
    need(a.compress == "mlp" || a.compress == "mean", "compress", "'" + a.compress + "'", "'mlp' or 'mean'");
    if (a.compress == "mlp") need(a.hidden > 0, "hidden", a.hidden, "> 0");
  }
  if (a.kind == "infini") {
    need(a.segment_len > 0, "segment_len", a.segment_len, "> 0");
    need(a.update == "linear" || a.update == "delta", "update", "'" + a.update + "'", "'linear' or 'delta'");
  }
}

FfnSpec ffn_from_json(const nlohmann::json& j, FfnSpec f) {
  check_known_fields(j, {"kind", "num_experts", "top_k", "d_ff", "num_shared", "capacity_factor",
                         "load_balance_weight", "z_loss_weight"},
                     "model config: ffn");
  f.kind = j.value("kind", f.kind);
  f.num_experts = j.value("num_experts", f.num_experts);
  f.top_k = j.value("top_k", f.top_k);
  f.d_ff = j.value("d_ff", f.d_ff);
  f.num_shared = j.value("num_shared", f.num_shared);
  f.capacity_factor = j.value("capacity_factor", f.capacity_factor);
  f.load_balance_weight = j.value("load_balance_weight", f.load_balance_weight);
  f.z_loss_weight = j.value("z_loss_weight", f.z_loss_weight);
  return f;
}

}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  LONGCTX_CHECK(j.is_object(), "model config must be a JSON object");
  check_known_fields(j, {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len",
                         "rope_theta", "norm_eps", "tie_embeddings", "attention", "ffn", "layers",
                         "full_attention_last_n"},
                     "model config");
  ModelConfig c;
  try {
    c.vocab_size = j.value("vocab_size", c.vocab_size);
    c.d_model = j.value("d_model", c.d_model);
    c.n_layers = j.value("n_layers", c.n_layers);
    c.n_heads = j.value("n_heads", c.n_heads);
    c.n_kv_heads = j.value("n_kv_heads", c.n_heads);
    c.d_ff = j.value("d_ff", c.d_ff);
    c.max_seq_len = j.value("max_seq_len", c.max_seq_len);
    c.rope_theta = j.value("rope_theta", c.rope_theta);
    c.norm_eps = j.value("norm_eps", c.norm_eps);
    c.tie_embeddings = j.value("tie_embeddings", c.tie_embeddings);
    LONGCTX_CHECK(c.n_layers >= 1, "model config: n_layers must be >= 1, got ", c.n_layers);
    const AttentionSpec attn = attention_from_json(j.value("attention", nlohmann::json::object()), {});
    const FfnSpec ffn = ffn_from_json(j.value("ffn", nlohmann::json::object()), {});
    c.attention.assign(size_t(c.n_layers), attn);
    c.ffn.assign(size_t(c.n_layers), ffn);
    if (j.contains("layers")) {
      const auto& layers = j.at("layers");
      LONGCTX_CHECK(layers.is_array() && int64_t(layers.size()) == c.n_layers, "model config: 'layers' must list ",
                    c.n_layers, " layers, got ", layers.size());
      for (size_t i = 0; i < layers.size(); ++i) {
        c.attention[i] = attention_from_json(layers[i].value("attention", nlohmann::json::object()), c.attention[i]);
        c.ffn[i] = ffn_from_json(layers[i].value("ffn", nlohmann::json::object()), c.ffn[i]);
      }
    }
    const int64_t last_full = j.value("full_attention_last_n", int64_t(0));
    LONGCTX_CHECK(last_full >= 0 && last_full <= c.n_layers, "model config: full_attention_last_n must be in [0, ",
                  c.n_layers, "], got ", last_full);
    for (int64_t i = c.n_layers - last_full; i < c.n_layers; ++i) c.attention[size_t(i)].kind = "full";
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(concat("longctx: model config: ", e.what()));
  }
  c.validate();
  return c;
}

moe::Config moe_config(const ModelConfig& c, int64_t layer) {
  const FfnSpec& f = c.ffn[size_t(layer)];
  moe::Config m;
  m.d_model = c.d_model;
  m.d_ff = f.d_ff > 0 ? f.d_ff : c.d_ff;
  m.num_experts = f.num_experts;
  m.top_k = f.top_k;
  m.num_shared = f.num_shared;
  m.dropless = f.capacity_factor == 0;
  m.capacity_factor = m.dropless ? 1.0 : f.capacity_factor;
  m.load_balance_weight = float(f.load_balance_weight);
  m.z_loss_weight = float(f.z_loss_weight);
  return m;
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json layers = nlohmann::json::array();
  for (int64_t i = 0; i < n_layers; ++i) {
    const nlohmann::json aj = attention_to_json(attention[size_t(i)]);
    const FfnSpec& f = ffn[size_t(i)];
    nlohmann::json fj{{"kind", f.kind}};
    if (f.kind == "moe")
      fj.update({{"num_experts", f.num_experts}, {"top_k", f.top_k}, {"d_ff", f.d_ff}, {"num_shared", f.num_shared},
                 {"capacity_factor", f.capacity_factor}, {"load_balance_weight", f.load_balance_weight},
                 {"z_loss_weight", f.z_loss_weight}});
    layers.push_back({{"attention", aj}, {"ffn", fj}});
  }
  return {{"vocab_size", vocab_size}, {"d_model", d_model}, {"n_layers", n_layers}, {"n_heads", n_heads},
          {"n_kv_heads", n_kv_heads}, {"d_ff", d_ff}, {"max_seq_len", max_seq_len}, {"rope_theta", rope_theta},
          {"norm_eps", norm_eps}, {"tie_embeddings", tie_embeddings}, {"layers", layers}};
}

void ModelConfig::validate() const {
  auto positive = [](const char* name, int64_t v) { LONGCTX_CHECK(v > 0, "model config: ", name, " must be > 0, got ", v); };
  positive("vocab_size", vocab_size);
  positive("d_model", d_model);
  positive("n_layers", n_layers);
  positive("n_heads", n_heads);
  positive("n_kv_heads", n_kv_heads);
  positive("d_ff", d_ff);
  positive("max_seq_len", max_seq_len);
  LONGCTX_CHECK(d_model % n_heads == 0, "model config: n_heads (", n_heads, ") must divide d_model (", d_model, ")");
  LONGCTX_CHECK(head_dim() % 2 == 0, "model config: head_dim (d_model / n_heads = ", head_dim(), ") must be even for RoPE");
  LONGCTX_CHECK(n_heads % n_kv_heads == 0, "model config: n_kv_heads (", n_kv_heads, ") must divide n_heads (", n_heads, ")");
  LONGCTX_CHECK(rope_theta > 0, "model config: rope_theta must be > 0, got ", rope_theta);
  LONGCTX_CHECK(norm_eps > 0, "model config: norm_eps must be > 0, got ", norm_eps);
  LONGCTX_CHECK(int64_t(attention.size()) == n_layers && int64_t(ffn.size()) == n_layers,
                "model config: need one attention and ffn spec per layer");
  for (size_t i = 0; i < attention.size(); ++i) {
    const std::string& kind = attention[i].kind;
    LONGCTX_CHECK(kind == "full" || kind == "moba" || kind == "topk" || kind == "threshold" || kind == "nsa" ||
                      kind == "infini",
                  "model config: layer ", i, ": unknown attention kind '", kind,
                  "' (available: full, moba, topk, threshold, nsa, infini)");
    validate_attention(attention[i], i);
    LONGCTX_CHECK(ffn[i].kind == "dense" || ffn[i].kind == "moe", "model config: layer ", i, ": unknown ffn kind '",
                  ffn[i].kind, "' (available: dense, moe)");
    if (ffn[i].kind == "moe") moe::validate(moe_config(*this, int64_t(i)));
  }
}

}  // namespace longctx
