// Hostile configs (issue 19 item 3): wrong JSON types, out-of-range sizes, and models or training
// runs that do not fit in memory are refused up front, naming the field or the bytes.
#include <longctx/core/memory.hpp>
#include <longctx/model/transformer.hpp>
#include <longctx/train/trainer.hpp>

#include <gtest/gtest.h>

#include "helpers.hpp"
#include "model_helpers.hpp"

namespace longctx {
namespace {

using testing::expect_error;

nlohmann::json small() {
  return {{"vocab_size", 64}, {"d_model", 16}, {"n_layers", 2}, {"n_heads", 2}, {"d_ff", 24}, {"max_seq_len", 32}};
}

ModelConfig with(const char* field, const nlohmann::json& value) {
  nlohmann::json j = small();
  j[field] = value;
  return ModelConfig::from_json(j);
}

TEST(ConfigLimits, FieldsTakeOnlyTheirJsonType) {
  expect_error([] { with("d_model", 16.5); }, "model config: d_model must be an integer, got 16.5");
  expect_error([] { with("d_model", "16"); }, "d_model must be an integer, got \"16\"");
  expect_error([] { with("n_layers", true); }, "n_layers must be an integer, got true");
  expect_error([] { with("vocab_size", 1e30); }, "vocab_size must be an integer");
  expect_error([] { with("d_ff", uint64_t(1) << 63); }, "d_ff must be an integer in range");
  expect_error([] { with("tie_embeddings", 1); }, "tie_embeddings must be true or false, got 1");
  expect_error([] { with("rope_theta", "1e4"); }, "rope_theta must be a number");
  expect_error([] { with("matmul_precision", 16); }, "matmul_precision must be a string");
  expect_error([] { with("ffn", {{"kind", "moe"}, {"top_k", 1.5}}); }, "model config: ffn: top_k must be an integer");
  expect_error([] { with("ffn", nlohmann::json::array()); }, "ffn must be a JSON object");
  expect_error([] { with("attention", {{"kind", "moba"}, {"block_size", "64"}}); },
               "model config: moba attention: block_size must be an integer, got \"64\"");
  expect_error([] { with("attention", {{"kind", 3}}); }, "kind must be a string, got 3");
  expect_error([] { with("layers", {1, 2}); }, "layers[0] must be a JSON object, got 1");
  expect_error([] { with("layers", {{{"atention", nlohmann::json::object()}}, nlohmann::json::object()}); },
               "unknown field 'atention'");
  EXPECT_EQ(with("rope_theta", 500000).rope_theta, 500000.0);  // an integer is a number
}

TEST(ConfigLimits, SizesOutOfRangeNameTheirBounds) {
  expect_error([] { with("d_model", 0); }, "d_model must be in [1, 16777216], got 0");
  expect_error([] { with("n_heads", -2); }, "n_heads must be in [1, 16777216], got -2");
  expect_error([] { with("n_layers", int64_t(1) << 40); }, "n_layers must be in [1, 65536], got 1099511627776");
  expect_error([] { with("vocab_size", int64_t(1) << 31); }, "vocab_size must be in [1, 2147483647]");
  expect_error([] { with("max_seq_len", int64_t(1) << 40); }, "max_seq_len must be in [1, 2147483648]");
  expect_error([] { with("ffn", {{"kind", "moe"}, {"num_experts", int64_t(1) << 30}}); },
               "moe num_experts and num_shared must be <= 65536");
  TrainConfig t;
  auto train_with = [](const char* field, const nlohmann::json& v) { return TrainConfig::from_json({{field, v}}); };
  expect_error([&] { train_with("beta2", 1.0); }, "beta1 and beta2 must be in [0, 1)");
  expect_error([&] { train_with("lr", -1); }, "lr must be a finite number > 0, got -1");
  expect_error([&] { train_with("min_lr", 1.0); }, "min_lr must be in [0, lr = 0.003], got 1");
  expect_error([&] { train_with("eval_tokens", 0); }, "eval_tokens must be > 0");
  expect_error([&] { train_with("warmup", -5); }, "warmup must be >= 0");
  expect_error([&] { train_with("seed", -1); }, "seed must be a non-negative integer in range, got -1");
  expect_error([&] { train_with("steps", 2.5); }, "train config: steps must be an integer, got 2.5");
}

// param_count is what the Transformer allocates, for every kind of layer the config can name.
TEST(ConfigLimits, ParamCountEqualsTheBuiltModel) {
  const std::vector<std::pair<nlohmann::json, nlohmann::json>> cases = {
      {{{"kind", "full"}}, {{"kind", "dense"}}},
      {{{"kind", "moba"}}, {{"kind", "moe"}, {"num_experts", 3}, {"top_k", 2}, {"num_shared", 1}, {"d_ff", 5}}},
      {{{"kind", "nsa"}, {"block_len", 4}, {"stride", 2}, {"select_len", 4}, {"hidden", 6}}, {{"kind", "dense"}}},
      {{{"kind", "nsa"}, {"compress", "mean"}}, {{"kind", "moe"}}},
      {{{"kind", "infini"}, {"segment_len", 4}}, {{"kind", "dense"}}},
      {{{"kind", "topk"}}, {{"kind", "dense"}}},
      {{{"kind", "moba"}, {"key_conv", 3}, {"key_conv_bias", true}}, {{"kind", "dense"}}},
      {{{"kind", "moba"}, {"key_conv", 5}}, {{"kind", "dense"}}},
  };
  for (const auto& [attention, ffn] : cases) {
    const ModelConfig cfg = testing::tiny_model(attention, ffn);
    EXPECT_EQ(param_count(cfg), double(Transformer(cfg, 1).num_params())) << attention.dump() << ffn.dump();
  }
  nlohmann::json tied = small();
  tied["tie_embeddings"] = true;
  const ModelConfig cfg = ModelConfig::from_json(tied);
  EXPECT_EQ(param_count(cfg), double(Transformer(cfg, 1).num_params()));
}

TEST(ConfigLimits, ModelsAndRunsOverTheMemoryLimitAreRefusedBeforeAllocating) {
  // far beyond any machine: 16384-wide, 4096 layers (13 T parameters); refused at once
  nlohmann::json huge = small();
  huge.update({{"d_model", 16384}, {"n_layers", 4096}, {"n_heads", 128}, {"d_ff", 65536}});
  const ModelConfig big = ModelConfig::from_json(huge);
  expect_error([&] { Transformer(big, 1); }, "of RAM");
  expect_error([&] { Transformer(big, 1); }, "a model of 1.75923e+13 parameters");

  // a small limit: the model fits, its training run (AdamW moments + activations) does not
  const ModelConfig cfg = ModelConfig::from_json(small());
  memory::set_limit(uint64_t(model_bytes(cfg)) + 4096);
  EXPECT_NO_THROW(Transformer(cfg, 1));
  TrainConfig t;
  t.seq_len = 32;
  t.batch_tokens = 1 << 20;
  expect_error([&] { Trainer(cfg, t, Corpus{}, 1); }, "training a model of 5");
  expect_error([&] { Trainer(cfg, t, Corpus{}, 1); }, "more than the memory limit of");
  memory::set_limit(uint64_t(model_bytes(cfg)) - 1);
  expect_error([&] { Transformer(cfg, 1); }, "parameters and 32 positions (fp32 weights, gradients and RoPE table) needs");
  memory::set_limit(0);
  EXPECT_EQ(memory::limit(), memory::physical());
  EXPECT_GT(memory::physical(), uint64_t(1) << 28);
  EXPECT_EQ(memory::format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(memory::format_bytes(24.1 * (1 << 30)), "24.1 GiB");
  EXPECT_EQ(memory::format_bytes(812 * 1024), "812 KiB");
  EXPECT_EQ(memory::format_bytes(100), "100 B");
}

}  // namespace
}  // namespace longctx
