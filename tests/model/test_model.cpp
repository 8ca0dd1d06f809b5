// The transformer: force-full and hybrid switches, config validation, and a tiny model memorising a
// short text (gradients and decode of every kind: test_model_kinds.cpp).
#include <longctx/core/error.hpp>
#include <longctx/model/reference_model.hpp>
#include <longctx/model/transformer.hpp>

#include "helpers.hpp"
#include "model_helpers.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace longctx {
namespace {

using testing::params_as_double;
using testing::tiny_batch;

ModelConfig tiny_config(const std::string& attention_kind) {
  return testing::tiny_model(testing::attention_json(attention_kind, {{"block_size", 3}, {"top_k", 2}}));
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
  EXPECT_EQ(std::string(c.attention[2].name()), "moba");
  EXPECT_EQ(std::string(c.attention[3].name()), "full");
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
  expect_error({{"matmul_precision", "fp8"}}, "matmul_precision must be \"f32\" or \"bf16\", got \"fp8\"");
}

// Mixed precision: the same model with bf16 products gives the fp32 loss and gradients to within
// bf16 rounding (2^-9 relative per input), and is not silently the fp32 path.
TEST(Model, Bf16MatmulsTrackFp32LossAndGradients) {
  for (const std::string kind : {"full", "moba", "topk", "nsa"}) {
    SCOPED_TRACE(kind);
    ModelConfig cfg = tiny_config(kind);
    EXPECT_EQ(ModelConfig::from_json(cfg.to_json()).matmul_precision, DType::f32);
    Transformer f32 = testing::scaled_model(cfg, 5, 3.0f);
    cfg.matmul_precision = DType::bf16;
    EXPECT_EQ(ModelConfig::from_json(cfg.to_json()).matmul_precision, DType::bf16);
    Transformer bf16 = testing::scaled_model(cfg, 5, 3.0f);
    const Batch batch = tiny_batch();
    f32.zero_grad(), bf16.zero_grad();
    const double l32 = f32.forward(batch, true), l16 = bf16.forward(batch, true);
    f32.backward(), bf16.backward();
    EXPECT_NE(l32, l16);
    EXPECT_NEAR(l16, l32, 1e-2 * std::abs(l32));
    double num = 0, den = 0;
    for (size_t i = 0; i < f32.params().size(); ++i) {
      const Tensor &a = f32.params()[i].grad, &b = bf16.params()[i].grad;
      for (int64_t e = 0; e < a.numel(); ++e) {
        num += std::pow(double(a.f32()[e]) - double(b.f32()[e]), 2);
        den += std::pow(double(a.f32()[e]), 2);
      }
    }
    EXPECT_LT(std::sqrt(num / den), 3e-2) << "relative gradient error";
  }
}

}  // namespace
}  // namespace longctx
