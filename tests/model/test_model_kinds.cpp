// Every attention kind inside the model (full, MoBA, top-k, mass threshold, NSA with learned
// compressors and gates, Infini-attention's compressive memory; a MoE FFN): gradients against finite
// differences of the double reference model and decode against the full forward, as one
// parameterised suite; hybrids, config checks and the kinds' own machinery.
#include <longctx/core/error.hpp>
#include <longctx/model/reference_model.hpp>
#include <longctx/model/transformer.hpp>

#include "helpers.hpp"
#include "model_helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace longctx {
namespace {

using nlohmann::json;
using testing::check_extend_matches_forward;
using testing::check_gradients;
using testing::tiny_model;

// Small enough that the 11-token sequence crosses several blocks / segments.
const json kThreshold{{"kind", "threshold"}, {"block_size", 3}, {"tau", 0.5}, {"stop_rule", "bound"}};
const json kThresholdHeuristic{{"kind", "threshold"}, {"block_size", 3}, {"tau", 0.8}, {"stop_rule", "heuristic"}};
const json kNsa{{"kind", "nsa"}, {"block_len", 2}, {"stride", 1},  {"select_len", 2}, {"top_n", 3},
                {"local_blocks", 1}, {"window", 3}, {"compress", "mlp"}, {"hidden", 3}};
const json kNsaMean{{"kind", "nsa"}, {"block_len", 4}, {"stride", 2},  {"select_len", 3}, {"top_n", 2},
                    {"local_blocks", 1}, {"window", 2}, {"compress", "mean"}};
const json kInfini{{"kind", "infini"}, {"segment_len", 4}, {"update", "linear"}, {"beta_init", -2.0}};
const json kInfiniDelta{{"kind", "infini"}, {"segment_len", 3}, {"update", "delta"}, {"beta_init", 0.5}};

const json kDense{{"kind", "dense"}};
const json kMoe{{"kind", "moe"},      {"num_experts", 4},           {"top_k", 2},          {"d_ff", 6},
                {"num_shared", 1},    {"load_balance_weight", 0.1}, {"z_loss_weight", 0.01}};

// The other routers, reachable from the config: noisy top-k with the importance loss, and the
// auxiliary-loss-free router with Switch gates (softmax over all experts).
const json kMoeNoisy{{"kind", "moe"}, {"num_experts", 4}, {"top_k", 2}, {"d_ff", 6}, {"router", "noisy"},
                     {"importance_weight", 0.1}, {"load_balance_weight", 0.0}};
const json kMoeBiasFree{{"kind", "moe"}, {"num_experts", 3}, {"top_k", 1}, {"d_ff", 5}, {"router", "bias_free"},
                        {"gate_norm", "all"}, {"load_balance_weight", 0.0}};

// One model per attention kind (two variants where a kind has two rules), and MoBA with a MoE FFN.
struct KindCase {
  std::string name;
  json attention, ffn;
};
std::ostream& operator<<(std::ostream& os, const KindCase& c) { return os << c.name; }
const KindCase kKindCases[] = {
    {"full", {{"kind", "full"}}, kDense},
    {"full_window", {{"kind", "full"}, {"window", 4}}, kDense},  // sliding window: decode crosses it
    {"moba", {{"kind", "moba"}, {"block_size", 3}, {"top_k", 2}}, kDense},
    {"moba_moe", {{"kind", "moba"}, {"block_size", 3}, {"top_k", 2}}, kMoe},
    {"moba_group_select", {{"kind", "moba"}, {"block_size", 2}, {"top_k", 3}, {"group_select", true}}, kDense},
    // the learned key convolution at its identity init (test_model_key_conv.cpp randomises it)
    {"moba_key_conv", {{"kind", "moba"}, {"block_size", 3}, {"top_k", 2}, {"key_conv", 3}, {"key_conv_bias", true}}, kDense},
    {"moe_noisy", {{"kind", "full"}}, kMoeNoisy},
    {"moe_bias_free_switch", {{"kind", "full"}}, kMoeBiasFree},
    {"topk", {{"kind", "topk"}, {"block_size", 3}, {"top_k", 2}}, kDense},
    {"topk_group_select", {{"kind", "topk"}, {"block_size", 2}, {"top_k", 3}, {"group_select", true}}, kDense},
    {"threshold_bound", kThreshold, kDense},
    {"threshold_heuristic", kThresholdHeuristic, kDense},
    {"nsa_mlp", kNsa, kDense},
    {"nsa_mean", kNsaMean, kDense},
    {"infini_linear", kInfini, kDense},
    {"infini_delta", kInfiniDelta, kDense},
};

class ModelKind : public ::testing::TestWithParam<KindCase> {
 protected:
  ModelConfig config() const { return tiny_model(GetParam().attention, GetParam().ffn); }
};

TEST_P(ModelKind, GradientsMatchFiniteDifferences) { check_gradients(config()); }

// Prompt prefill, a second multi-token chunk (chunked prefill), then one token per step across
// block / segment boundaries; and token by token from the start.
TEST_P(ModelKind, DecodeEqualsFullForward) {
  check_extend_matches_forward(config(), {5, 3});
  check_extend_matches_forward(config(), {1});
}

INSTANTIATE_TEST_SUITE_P(AllKinds, ModelKind, ::testing::ValuesIn(kKindCases),
                         [](const ::testing::TestParamInfo<KindCase>& i) { return i.param.name; });

ModelConfig hybrid() {  // nsa (mean compressor) then infini (delta update)
  return tiny_model(kThreshold, kDense, json::array({{{"attention", kNsaMean}}, {{"attention", kInfiniDelta}}}));
}

TEST(ModelKinds, HybridGradientsMatchFiniteDifferences) {
  // three kinds across layers, one with a MoE FFN
  check_gradients(tiny_model(kNsa, kDense,
                             json::array({{{"attention", kThreshold}},
                                          {{"attention", kInfiniDelta},
                                           {"ffn", {{"kind", "moe"}, {"num_experts", 3}, {"top_k", 2}, {"d_ff", 5}}}}})));
  check_gradients(hybrid());
}

// The gradient checks above are only as strong as the sparsity they see: at the checked point the
// threshold layers drop keys and NSA's free selection slot picks among several past blocks.
TEST(ModelKinds, GradcheckConfigsAreReallySparse) {
  const Batch b = testing::tiny_batch();
  auto visible = [](const reference::Mask& m) { return std::count(m.begin(), m.end(), uint8_t(1)); };
  for (const json& a : {kThreshold, kThresholdHeuristic}) {
    const ModelConfig cfg = tiny_model(a);
    reference::SelectionTape sparse, dense;
    const auto p = testing::params_as_double(testing::scaled_model(cfg, 7, 20.0f));
    reference::model_loss(cfg, p, b, false, &sparse);
    reference::model_loss(cfg, p, b, true, &dense);
    for (size_t l = 0; l < 2; ++l) EXPECT_LT(visible(sparse.masks[l]), visible(dense.masks[l])) << a.dump();
  }
  const ModelConfig cfg = tiny_model(kNsa);
  reference::SelectionTape tape;
  reference::model_loss(cfg, testing::params_as_double(testing::scaled_model(cfg, 7, 20.0f)), b, false, &tape);
  // rows [T, Hkv = 1, top_n = 3]: the first sequence's queries 6..10 (blocks of 2) have past blocks
  // 1..(own - 1) to choose from beside block 0 and the local block
  for (size_t l = 0; l < 2; ++l) {
    std::set<int32_t> chosen;
    for (int64_t t = 6; t < 11; ++t)
      for (int64_t i = 0; i < 3; ++i) {
        const int32_t id = tape.nsa[l][size_t(t * 3 + i)];
        if (id > 0 && id < t / 2) chosen.insert(id);
      }
    EXPECT_GE(chosen.size(), 2u) << "layer " << l;
  }
}

TEST(ModelKinds, HybridDecodeEqualsFullForward) { check_extend_matches_forward(hybrid(), {6}); }

// Layers without positional encoding (NoPE, "rope": false): the fast model against the double
// reference (gradients, which also compare the loss) and decode against the forward, with a
// sparse kind and Infini (whose local attention is then unrotated too) in the NoPE layer.
ModelConfig nope_hybrid(const json& second) {
  return tiny_model({{"kind", "full"}}, kDense, json::array({json::object(), {{"attention", second}, {"rope", false}}}));
}

TEST(ModelKinds, NopeLayerGradientsAndDecode) {
  for (const json& a : {json{{"kind", "topk"}, {"block_size", 3}, {"top_k", 2}}, kInfini}) {
    const ModelConfig cfg = nope_hybrid(a);
    ASSERT_EQ(cfg.nope_layers, std::vector<int64_t>{1});
    check_gradients(cfg);
    check_extend_matches_forward(cfg, {5, 3});
  }
}

// The last token's logits of a one-layer tiny model (scaled weights) whose layer is `layer` (an
// entry of the config's "layers").
std::vector<float> one_layer_last_logits(const json& layer, std::vector<int32_t> ids) {
  json j = tiny_model({{"kind", "full"}}).to_json();
  j["n_layers"] = 1;
  j["layers"] = json::array({layer});
  Transformer m = testing::scaled_model(ModelConfig::from_json(j), 5, 10.0f);
  Batch b;
  b.tokens = std::move(ids);
  b.cu_seqlens = {0, int64_t(b.tokens.size())};
  const Tensor l = m.logits(b);
  const int64_t V = m.config().vocab_size;
  return std::vector<float>(l.f32() + (l.numel() - V), l.f32() + l.numel());
}

double max_difference(const std::vector<float>& x, const std::vector<float>& y) {
  double d = 0;
  for (size_t v = 0; v < x.size(); ++v) d = std::max(d, double(std::abs(x[v] - y[v])));
  return d;
}

// Without positions, one causal attention layer sees its keys as a set: the last token's logits do
// not change when the tokens before it are shuffled. With RoPE they do.
TEST(ModelKinds, NopeLayerIgnoresOrder) {
  const std::vector<int32_t> a{1, 4, 2, 9, 3, 7}, shuffled{9, 2, 3, 1, 4, 7};
  const json nope{{"rope", false}}, rope{{"rope", true}};
  const std::vector<float> x = one_layer_last_logits(nope, a), y = one_layer_last_logits(nope, shuffled);
  for (size_t v = 0; v < x.size(); ++v) EXPECT_NEAR(x[v], y[v], 1e-5f * (1 + std::abs(x[v]))) << v;
  EXPECT_GT(max_difference(one_layer_last_logits(rope, a), one_layer_last_logits(rope, shuffled)), 1e-3);
}

// A sliding-window layer: in a one-layer model the last token's logits depend on its `window`
// most recent tokens only (and with no window on all of them). A pruned KV cache has no positions
// to count the window in, so that combination is refused.
TEST(ModelKinds, SlidingWindowSeesOnlyRecentTokens) {
  auto windowed = [](int64_t w) { return json{{"attention", {{"kind", "full"}, {"window", w}}}}; };
  const std::vector<int32_t> a{1, 4, 2, 9, 3, 7, 5}, early_changed{8, 0, 6, 9, 3, 7, 5};  // the last 4 kept
  const std::vector<float> x = one_layer_last_logits(windowed(4), a);
  const std::vector<float> y = one_layer_last_logits(windowed(4), early_changed);
  for (size_t v = 0; v < x.size(); ++v) EXPECT_EQ(x[v], y[v]) << v;
  EXPECT_GT(max_difference(one_layer_last_logits(windowed(0), a), one_layer_last_logits(windowed(0), early_changed)),
            1e-3);

  Transformer m(tiny_model({{"kind", "full"}, {"window", 4}}), 1);
  DecodeOptions o;
  o.pruning.budget = {8};
  o.pruning.window = 2;
  testing::expect_error([&] { m.new_decode_state(16, o); },
                        "cascade pruning is not implemented for sliding-window layers (layer 0 has window 4)");
}

TEST(ModelKinds, InfiniLayerKeepsNoKvCache) {
  Transformer m(hybrid(), 1);
  const DecodeState st = m.new_decode_state(64);
  ASSERT_EQ(st.layers.size(), 2u);
  EXPECT_TRUE(st.layers[0].cache && st.layers[0].nsa);  // nsa: KV cache + compressed blocks
  EXPECT_FALSE(st.layers[1].cache);                      // infini: constant memory only
  ASSERT_TRUE(st.layers[1].infini);
  EXPECT_EQ(st.layers[1].infini->memory().numel(), 1 * 4 * 4);  // [Hkv, d, d]
}

TEST(ModelKinds, ParamsAreNamedAndDecayOnMatricesOnly) {
  Transformer m(hybrid(), 1);
  const Param& beta = m.param("layers.1.attention.infini.beta");
  EXPECT_EQ(beta.value.shape(), std::vector<int64_t>{2});
  EXPECT_FALSE(beta.decay);
  for (int64_t i = 0; i < 2; ++i) EXPECT_EQ(beta.value.at(i), 0.5f);  // kInfiniDelta's beta_init (default -2: toward local)
  const Param& gw = m.param("layers.0.attention.nsa.gate_w");
  EXPECT_EQ(gw.value.shape(), (std::vector<int64_t>{6, 8}));
  EXPECT_TRUE(gw.decay);
  const Param& gb = m.param("layers.0.attention.nsa.gate_b");
  EXPECT_FALSE(gb.decay);
  EXPECT_EQ(gb.value.at(2), 2.0f);  // window branch favoured at the start (nsa_init_weights)
  EXPECT_THROW(m.param("layers.0.attention.nsa.compress_k.w1"), std::invalid_argument);  // mean: no compressor
  Transformer mlp(tiny_model(kNsa), 1);
  EXPECT_EQ(mlp.param("layers.1.attention.nsa.compress_v.w1").value.shape(), (std::vector<int64_t>{3, 2 * 4}));
  EXPECT_TRUE(mlp.param("layers.1.attention.nsa.compress_v.w1").decay);
  EXPECT_FALSE(mlp.param("layers.1.attention.nsa.compress_v.b1").decay);
}

TEST(ModelKinds, ForceFullKeepsNsaAndInfini) {
  const ModelConfig cfg = tiny_model(kThreshold, kDense, json::array({json::object(), {{"attention", kInfini}}}));
  Transformer m(cfg, 3);
  m.force_full_attention(true);
  EXPECT_EQ(std::string(enum_name(m.attention_kind(0))), "full");
  EXPECT_EQ(std::string(enum_name(m.attention_kind(1))), "infini");
  const auto p = testing::params_as_double(m);
  const Batch b = testing::tiny_batch();
  EXPECT_NEAR(m.forward(b, false), reference::model_loss(cfg, p, b, true), 1e-5);
  Transformer n(hybrid(), 3);
  n.force_full_attention(true);
  EXPECT_EQ(std::string(enum_name(n.attention_kind(0))), "nsa");
  EXPECT_FALSE(n.layer_uses_moba(0));
}

TEST(ModelKinds, ConfigRoundTrips) {
  const ModelConfig c = tiny_model(kNsa, kDense, json::array({{{"attention", kThresholdHeuristic}},
                                                                            {{"attention", kInfiniDelta}}}));
  const json j = c.to_json();
  EXPECT_EQ(j["layers"][0]["attention"], kThresholdHeuristic);
  EXPECT_EQ(j["layers"][1]["attention"], kInfiniDelta);
  EXPECT_EQ(ModelConfig::from_json(j).to_json(), j);
  const json n = tiny_model(kNsa).to_json()["layers"][0]["attention"];
  EXPECT_EQ(n, kNsa);
  EXPECT_EQ(ModelConfig::from_json(hybrid().to_json()).to_json(), hybrid().to_json());
  const json nope = nope_hybrid(kInfini).to_json();
  EXPECT_FALSE(nope["layers"][0].contains("rope"));  // written only where it is off
  EXPECT_EQ(nope["layers"][1]["rope"], false);
  EXPECT_EQ(ModelConfig::from_json(nope).to_json(), nope);
}

TEST(ModelKinds, ConfigErrorsNameTheFieldAndValue) {
  auto expect_error = [](json attention, const std::string& needle) {
    testing::expect_error([&] { ModelConfig::from_json({{"attention", attention}}); }, needle);
  };
  expect_error({{"kind", "ring"}}, "unknown attention kind 'ring' (available: full, moba, topk, threshold, nsa, infini)");
  expect_error({{"kind", "full"}, {"window", -1}}, "full window must be >= 0 (0 = all keys), got -1");
  expect_error({{"kind", "threshold"}, {"tau", 0}}, "threshold tau must be in (0, 1], got 0");
  expect_error({{"kind", "threshold"}, {"tau", 1.5}}, "threshold tau must be in (0, 1], got 1.5");
  expect_error({{"kind", "threshold"}, {"stop_rule", "proof"}}, "stop_rule must be 'bound' or 'heuristic', got 'proof'");
  expect_error({{"kind", "threshold"}, {"block_size", 0}}, "threshold block_size must be > 0, got 0");
  expect_error({{"kind", "nsa"}, {"top_n", 0}}, "nsa top_n must be >= 1 + local_blocks (3)");
  expect_error({{"kind", "nsa"}, {"block_len", 32}, {"stride", 5}}, "nsa block_len must be a positive multiple of stride (5), got 32");
  expect_error({{"kind", "nsa"}, {"stride", 0}}, "nsa stride must be > 0, got 0");
  expect_error({{"kind", "nsa"}, {"window", 0}}, "nsa window must be > 0, got 0");
  expect_error({{"kind", "nsa"}, {"hidden", 0}}, "nsa hidden must be > 0, got 0");
  expect_error({{"kind", "nsa"}, {"compress", "max"}}, "compress must be 'mlp' or 'mean', got 'max'");
  expect_error({{"kind", "infini"}, {"segment_len", 0}}, "infini segment_len must be > 0, got 0");
  expect_error({{"kind", "infini"}, {"update", "gated"}}, "update must be 'linear' or 'delta', got 'gated'");
  expect_error({{"kind", "infini"}, {"segment", 8}}, "model config: attention: unknown field 'segment'");
  // a per-layer override is checked the same way
  testing::expect_error(
      [] {
        ModelConfig::from_json({{"n_layers", 2}, {"layers", json::array({json::object(), {{"attention", {{"kind", "nsa"}, {"top_n", 1}}}}})}});
      },
      "layer 1: nsa top_n must be >= 1 + local_blocks (3): block 0 and the local blocks are always selected, got 1");
  testing::expect_error([] { ModelConfig::from_json({{"n_layers", 1}, {"layers", json::array({{{"rope", "no"}}})}}); },
                        "rope");
  ModelConfig c;
  c.attention.assign(4, AttentionSpec{});
  c.ffn.assign(4, FfnSpec{});
  c.nope_layers = {2, 1};
  testing::expect_error([&] { c.validate(); }, "nope_layers must be ascending layer indices in [0, 4)");
}

}  // namespace
}  // namespace longctx
