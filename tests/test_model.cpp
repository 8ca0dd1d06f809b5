// The transformer: loss against the double-precision reference, gradients against finite
// differences of it, config validation, and a tiny model memorising a short text.
#include <longctx/error.hpp>
#include <longctx/model/reference_model.hpp>
#include <longctx/model/transformer.hpp>

#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace longctx {
namespace {

ModelConfig tiny_config(const std::string& attention_kind, const std::string& ffn_kind = "dense") {
  nlohmann::json j{{"vocab_size", 11}, {"d_model", 8}, {"n_layers", 2}, {"n_heads", 2}, {"n_kv_heads", 1},
                   {"d_ff", 12},       {"max_seq_len", 64}, {"tie_embeddings", false},
                   {"attention", {{"kind", attention_kind}, {"block_size", 3}, {"top_k", 2}}},
                   {"ffn", {{"kind", ffn_kind}, {"num_experts", 4}, {"top_k", 2}, {"d_ff", 6}, {"num_shared", 1},
                            {"load_balance_weight", 0.1}, {"z_loss_weight", 0.01}}}};
  if (ffn_kind == "dense") j["ffn"] = {{"kind", "dense"}};
  return ModelConfig::from_json(j);
}

Batch tiny_batch() {
  // two packed sequences of 11 and 2 tokens (blocks of 3: the sparse kinds skip blocks for the
  // late queries of the first); the last token of each has no target
  Batch b;
  b.tokens = {1, 4, 2, 9, 3, 3, 7, 0, 5, 10, 6, 2, 8};
  b.cu_seqlens = {0, 11, 13};
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s)
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t)
      b.targets.push_back(t + 1 < b.cu_seqlens[s + 1] ? b.tokens[size_t(t + 1)] : -1);
  return b;
}

std::vector<std::vector<double>> params_as_double(const Transformer& m) {
  std::vector<std::vector<double>> p;
  for (const Param& x : m.params()) p.emplace_back(x.value.f32(), x.value.f32() + x.value.numel());
  return p;
}

void check_gradients(const std::string& kind, const std::string& ffn = "dense") {
  const ModelConfig cfg = tiny_config(kind, ffn);
  Transformer model(cfg, 7);
  // larger weights than the init, so that attention patterns and gates are far from uniform
  for (Param& p : model.params())
    if (p.value.ndim() == 2)
      for (int64_t i = 0; i < p.value.numel(); ++i) p.value.f32()[i] *= 20.0f;
  const Batch batch = tiny_batch();
  model.zero_grad();
  const double loss = model.forward(batch, true) + model.aux_loss();
  model.backward();
  auto p = params_as_double(model);
  const double ref = reference::model_loss(cfg, p, batch);
  ASSERT_NEAR(loss, ref, 1e-5 * std::abs(ref));
  // every parameter: analytic (fast, fp32) vs central differences of the double reference
  const double h = 1e-5;
  double worst = 0, scale = 0;
  for (size_t i = 0; i < p.size(); ++i)
    for (size_t j = 0; j < p[i].size(); ++j) {
      const double keep = p[i][j];
      p[i][j] = keep + h;
      const double lp = reference::model_loss(cfg, p, batch);
      p[i][j] = keep - h;
      const double lm = reference::model_loss(cfg, p, batch);
      p[i][j] = keep;
      const double fd = (lp - lm) / (2 * h), an = model.params()[i].grad.f32()[j];
      worst = std::max(worst, std::abs(fd - an));
      scale = std::max(scale, std::abs(fd));
      ASSERT_NEAR(an, fd, 2e-3 * (1.0 + std::abs(fd))) << model.params()[i].name << "[" << j << "]";
    }
  EXPECT_LT(worst / scale, 1e-3) << "worst abs error " << worst << " vs largest gradient " << scale;
}

TEST(Model, FullAttentionGradientsMatchFiniteDifferences) { check_gradients("full"); }
TEST(Model, MobaGradientsMatchFiniteDifferences) { check_gradients("moba"); }
TEST(Model, MoeGradientsMatchFiniteDifferences) { check_gradients("moba", "moe"); }
TEST(Model, TopkGradientsMatchFiniteDifferences) { check_gradients("topk"); }

// Prefill a prompt, then decode one token at a time over the KV caches: every row of logits must
// equal the full forward's, for dense, MoBA (block means from the cache) and MoE layers.
void check_extend_matches_forward(const ModelConfig& cfg) {
  Transformer model(cfg, 11);
  for (Param& p : model.params())
    if (p.value.ndim() >= 2)
      for (int64_t i = 0; i < p.value.numel(); ++i) p.value.f32()[i] *= 10.0f;
  const std::vector<int32_t> ids{1, 4, 2, 9, 3, 3, 7, 0, 5, 10, 6, 2, 8, 8, 1};
  Batch whole;
  whole.tokens = ids;
  whole.cu_seqlens = {0, int64_t(ids.size())};
  const Tensor full = model.logits(whole);
  DecodeState st = model.new_decode_state(int64_t(ids.size()));
  const Tensor prompt = model.extend(st, std::vector<int32_t>(ids.begin(), ids.begin() + 5));
  const int64_t V = cfg.vocab_size;
  for (int64_t i = 0; i < 5 * V; ++i) ASSERT_NEAR(prompt.at(i), full.at(i), 1e-4 * (1 + std::abs(full.at(i)))) << i;
  for (size_t t = 5; t < ids.size(); ++t) {
    const Tensor step = model.extend(st, {ids[t]});
    for (int64_t c = 0; c < V; ++c)
      ASSERT_NEAR(step.at(c), full.at(int64_t(t) * V + c), 1e-4 * (1 + std::abs(full.at(int64_t(t) * V + c))))
          << "position " << t << " logit " << c;
  }
  EXPECT_EQ(st.size(), int64_t(ids.size()));
  EXPECT_THROW(model.extend(st, {1}), std::invalid_argument);  // cache full
}

TEST(Model, DecodeOverKvCacheEqualsFullForward) {
  check_extend_matches_forward(tiny_config("full"));
  check_extend_matches_forward(tiny_config("moba", "moe"));
  check_extend_matches_forward(tiny_config("topk"));
}

TEST(Model, ForceFullSwitchesMobaLayersToDense) {
  const ModelConfig cfg = tiny_config("moba");
  Transformer model(cfg, 3);
  const Batch batch = tiny_batch();
  const auto p = params_as_double(model);
  model.force_full_attention(true);
  EXPECT_NEAR(model.forward(batch, false), reference::model_loss(cfg, p, batch, true), 1e-5);
  EXPECT_FALSE(model.layer_uses_moba(0));
}

TEST(Model, HybridConfigMakesLastLayersFull) {
  nlohmann::json j{{"n_layers", 4}, {"attention", {{"kind", "moba"}, {"block_size", 64}, {"top_k", 2}}},
                   {"full_attention_last_n", 1}};
  const ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.attention[2].kind, "moba");
  EXPECT_EQ(c.attention[3].kind, "full");
  const ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());
}

TEST(Model, ConfigErrorsNameTheField) {
  auto expect_error = [](nlohmann::json j, const std::string& needle) {
    testing::expect_error([&] { ModelConfig::from_json(j); }, needle);
  };
  expect_error({{"attention", {{"kind", "sparse?"}}}}, "unknown attention kind 'sparse?'");
  expect_error({{"d_model", 256}, {"n_heads", 3}}, "n_heads (3) must divide d_model (256)");
  expect_error({{"n_heads", 4}, {"n_kv_heads", 3}}, "n_kv_heads (3) must divide n_heads (4)");
  expect_error({{"attention", {{"kind", "moba"}, {"top_k", 0}}}}, "moba top_k must be > 0, got 0");
  expect_error({{"d_modle", 256}}, "unknown field 'd_modle'");
  expect_error({{"ffn", {{"kind", "sparse"}}}}, "unknown ffn kind 'sparse'");
  expect_error({{"ffn", {{"kind", "moe"}, {"num_experts", 4}, {"top_k", 5}}}}, "top_k");
  expect_error({{"ffn", {{"kind", "moe"}, {"experts", 4}}}}, "unknown field 'experts'");
}

}  // namespace
}  // namespace longctx
