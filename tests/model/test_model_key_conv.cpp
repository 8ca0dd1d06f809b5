// MoBA's learned key convolution inside the model: gradients against finite differences of the
// double reference model and decode against the full forward with taps far from the identity,
// the identity init, the forced-full switch, the decode state and the config field.
#include <longctx/core/error.hpp>
#include <longctx/model/reference_model.hpp>
#include <longctx/model/transformer.hpp>

#include "helpers.hpp"
#include "model_helpers.hpp"

#include <gtest/gtest.h>

#include <random>

namespace longctx {
namespace {

using nlohmann::json;
using testing::tiny_model;

const json kKeyConv{{"kind", "moba"}, {"block_size", 3}, {"top_k", 2}, {"key_conv", 3}, {"key_conv_bias", true}};
// kernel 5, no bias: longer than tiny_batch's 2-token sequence
const json kKeyConv5{{"kind", "moba"}, {"block_size", 2}, {"top_k", 3}, {"key_conv", 5}};

// scaled_model with the key convolutions' taps and bias moved off their identity init by N(0, 0.5)
// draws: the keys then mix across tokens.
Transformer mixing_model(const ModelConfig& cfg, uint64_t seed, float factor) {
  Transformer m = testing::scaled_model(cfg, seed, factor);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> dist(0.0f, 0.5f);
  int moved = 0;
  for (Param& p : m.params())
    if (p.name.find(".key_conv.") != std::string::npos)
      for (int64_t i = 0; i < p.value.numel(); ++i) p.value.f32()[i] += dist(rng), ++moved;
  EXPECT_GT(moved, 0);
  return m;
}

// layer 0 convolves its keys, layer 1 is plain MoBA (no kind params)
ModelConfig mixed() {
  return tiny_model(kKeyConv, {{"kind", "dense"}},
                    json::array({json::object(), {{"attention", {{"kind", "moba"}, {"key_conv", 0}}}}}));
}

TEST(ModelKeyConv, GradientsMatchFiniteDifferences) {
  for (const ModelConfig& cfg : {tiny_model(kKeyConv), tiny_model(kKeyConv5), mixed()})
    testing::check_gradients(mixing_model(cfg, 7, 20.0f));
}

// Prompt prefill, a second chunk, then one token at a time; and token by token from the start:
// the decode state's kept keys continue the convolution exactly.
TEST(ModelKeyConv, DecodeEqualsFullForward) {
  for (const ModelConfig& cfg : {tiny_model(kKeyConv), tiny_model(kKeyConv5)})
    for (std::vector<size_t> chunks : {std::vector<size_t>{5, 3}, {1}, {2, 1}}) {
      Transformer m = mixing_model(cfg, 11, 10.0f);
      testing::check_extend_matches_forward(m, chunks);
    }
}

TEST(ModelKeyConv, StartsAsPlainMobaWithNamedUndecayedParams) {
  const ModelConfig with = tiny_model(kKeyConv), without = tiny_model({{"kind", "moba"}, {"block_size", 3}, {"top_k", 2}});
  Transformer a(with, 5), b(without, 5);
  EXPECT_EQ(a.num_params(), b.num_params() + 2 * (3 + 1) * 4);  // 2 layers x (3 taps + bias) x Hkv * head_dim
  const Param& w = a.param("layers.1.attention.moba.key_conv.weight");
  EXPECT_EQ(w.value.shape(), (std::vector<int64_t>{3, 4}));
  EXPECT_FALSE(w.decay);
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(w.value.at(i), i >= 8 ? 1.0f : 0.0f) << i;  // tap 2 = the token itself
  const Param& bias = a.param("layers.0.attention.moba.key_conv.bias");
  EXPECT_FALSE(bias.decay);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(bias.value.at(i), 0.0f);
  const Batch batch = testing::tiny_batch();
  EXPECT_TRUE(testing::bitwise_equal(a.logits(batch), b.logits(batch)));  // identity: the same model
}

// Forced to full attention (train.moba_to_full_step), the layer still convolves its keys: the
// convolution is part of the layer, not of the sparse approximation.
TEST(ModelKeyConv, ForcedFullKeepsTheConvolution) {
  const ModelConfig cfg = tiny_model(kKeyConv);
  Transformer m = mixing_model(cfg, 3, 10.0f);
  m.force_full_attention(true);
  EXPECT_EQ(std::string(enum_name(m.attention_kind(0))), "full");
  const Batch b = testing::tiny_batch();
  const auto p = testing::params_as_double(m);
  const double loss = m.forward(b, false);
  EXPECT_NEAR(loss, reference::model_loss(cfg, p, b, true), 1e-5);
  // and the taps matter: the same weights without the convolution give another loss
  Transformer plain(tiny_model({{"kind", "moba"}, {"block_size", 3}, {"top_k", 2}}), 3);
  plain.force_full_attention(true);
  for (Param& q : plain.params()) q.value = m.param(q.name).value.clone();
  EXPECT_GT(std::abs(plain.forward(b, false) - loss), 1e-4);
}

TEST(ModelKeyConv, DecodeStateKeepsTheConvolution) {
  const ModelConfig cfg = tiny_model(kKeyConv);
  Transformer m(cfg, 1);
  const DecodeState st = m.new_decode_state(16);
  for (const LayerDecodeState& l : st.layers) EXPECT_TRUE(l.cache && l.key_conv);
  const ModelConfig plain = tiny_model({{"kind", "moba"}, {"block_size", 3}, {"top_k", 2}});
  EXPECT_FALSE(Transformer(plain, 1).new_decode_state(16).layers[0].key_conv);
  // per layer: the taps [3, 4], the bias [4] and the 2 kept keys [2, 4], fp32
  EXPECT_EQ(decode_state_bytes(cfg, 16, KVDType::f32) - decode_state_bytes(plain, 16, KVDType::f32), 2 * 4.0 * (12 + 4 + 8));
}

TEST(ModelKeyConv, ConfigFieldDefaultsOffAndIsChecked) {
  const json j = tiny_model(kKeyConv).to_json()["layers"][0]["attention"];
  EXPECT_EQ(j["key_conv"], 3);
  EXPECT_EQ(j["key_conv_bias"], true);
  EXPECT_EQ(ModelConfig::from_json(tiny_model(kKeyConv).to_json()).to_json(), tiny_model(kKeyConv).to_json());
  // a config written before the field exists reads as no convolution
  const ModelConfig old = tiny_model({{"kind", "moba"}, {"block_size", 3}});
  EXPECT_EQ(old.attention[0].get<MobaOptions>().key_conv, 0);
  auto expect_error = [](json attention, const std::string& needle) {
    testing::expect_error([&] { ModelConfig::from_json({{"attention", attention}}); }, needle);
  };
  expect_error({{"kind", "moba"}, {"key_conv", 17}}, "moba key_conv must be in [0, 16] (0: none), got 17");
  expect_error({{"kind", "moba"}, {"key_conv", -1}}, "moba key_conv must be in [0, 16] (0: none), got -1");
  expect_error({{"kind", "topk"}, {"key_conv", 3}}, "unknown field 'key_conv'");
}

}  // namespace
}  // namespace longctx
