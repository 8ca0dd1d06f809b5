// Transformer::extend_batch: several sequences' decode steps (and prefill chunks) in one call
// equal each sequence's own extend(), over a model whose layers mix every attention kind.
#include <longctx/model/transformer.hpp>

#include "helpers.hpp"
#include "model_helpers.hpp"

#include <gtest/gtest.h>

namespace longctx {
namespace {

using nlohmann::json;

// Six layers, one per attention kind (blocks of 3 and segments of 4, so the sequences below cross
// several), GQA (4 query heads over 2 KV heads) and a MoE FFN in the moba layer.
ModelConfig mixed_config() {
  const json moba{{"kind", "moba"}, {"block_size", 3}, {"top_k", 2}};
  const json topk{{"kind", "topk"}, {"block_size", 3}, {"top_k", 2}};
  const json threshold{{"kind", "threshold"}, {"block_size", 3}, {"tau", 0.5}};
  const json nsa{{"kind", "nsa"}, {"block_len", 2}, {"stride", 1}, {"select_len", 2}, {"top_n", 3},
                 {"local_blocks", 1}, {"window", 3}, {"compress", "mlp"}, {"hidden", 3}};
  const json infini{{"kind", "infini"}, {"segment_len", 4}, {"update", "delta"}, {"beta_init", 0.5}};
  const json moe{{"kind", "moe"}, {"num_experts", 3}, {"top_k", 2}, {"d_ff", 6}};
  json layers = json::array();
  for (const json& a : {json{{"kind", "full"}}, moba, topk, threshold, nsa, infini}) layers.push_back({{"attention", a}});
  layers[1]["ffn"] = moe;
  return ModelConfig::from_json({{"vocab_size", 13}, {"d_model", 16}, {"n_layers", 6}, {"n_heads", 4},
                                 {"n_kv_heads", 2}, {"d_ff", 24}, {"max_seq_len", 64}, {"tie_embeddings", false},
                                 {"layers", layers}});
}

std::vector<int32_t> tokens_of(int64_t n, int32_t seed) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(int32_t((seed * 7 + i * 5 + i * i) % 13));
  return t;
}

// Rows [begin, begin + n) of logits [T, V] as a tensor of their own.
Tensor rows(const Tensor& logits, int64_t begin, int64_t n) {
  const int64_t V = logits.dim(1);
  Tensor out({n, V});
  std::copy_n(logits.f32() + begin * V, n * V, out.f32());
  return out;
}

void expect_close(const Tensor& batched, const Tensor& alone, const std::string& what) {
  ASSERT_EQ(batched.shape(), alone.shape()) << what;
  EXPECT_LT(testing::rel_error(batched, testing::to_vec<double>(alone)), 1e-5) << what;
}

// Each step gives some of the sequences a run of tokens (one: a decode step; more: a prefill
// chunk), in one extend_batch for the batched states and one extend per sequence for the others.
TEST(BatchedDecode, EqualsEachSequenceAlone) {
  const ModelConfig cfg = mixed_config();
  Transformer model = testing::scaled_model(cfg, 5, 10.0f);
  const std::vector<int64_t> prompts{7, 12, 3, 1};
  std::vector<DecodeState> alone, batched;
  for (size_t s = 0; s < prompts.size(); ++s) {
    alone.push_back(model.new_decode_state(40));
    batched.push_back(model.new_decode_state(40));
    const std::vector<int32_t> p = tokens_of(prompts[s], int32_t(s));
    if (s == 3) continue;  // sequence 3 prefills inside a batch, beside the others' decode steps
    expect_close(model.extend(batched[s], p), model.extend(alone[s], p), "prefill");
  }
  // steps: which sequences take part and how many tokens each gets
  const std::vector<std::vector<std::pair<size_t, int64_t>>> steps{
      {{0, 1}, {1, 1}, {2, 1}},
      {{0, 1}, {1, 1}, {2, 1}, {3, 5}},  // 3 joins with its prompt
      {{2, 1}, {0, 1}, {3, 1}},          // 1 sits out; order differs from the states'
      {{0, 4}, {1, 1}, {2, 1}, {3, 1}},  // a chunk for 0 beside decode steps
      {{1, 1}},                          // a batch of one
      {{0, 1}, {1, 1}, {2, 1}, {3, 1}},
      {{0, 1}, {1, 1}, {2, 1}, {3, 1}}};
  int32_t seed = 10;
  for (size_t i = 0; i < steps.size(); ++i) {
    std::vector<DecodeState*> states;
    std::vector<std::vector<int32_t>> runs;
    for (auto [s, n] : steps[i]) {
      states.push_back(&batched[s]);
      runs.push_back(tokens_of(n, seed++));
    }
    const Tensor logits = model.extend_batch(states, runs);
    int64_t row = 0;
    for (size_t j = 0; j < runs.size(); ++j) {
      const size_t s = steps[i][j].first;
      const int64_t n = int64_t(runs[j].size());
      expect_close(rows(logits, row, n), model.extend(alone[s], runs[j]), concat("step ", i, " sequence ", s));
      EXPECT_EQ(batched[s].tokens, alone[s].tokens);
      row += n;
    }
    EXPECT_EQ(row, logits.dim(0));
  }
}

TEST(BatchedDecode, RefusesBadBatches) {
  Transformer model(mixed_config(), 1);
  DecodeState a = model.new_decode_state(4), b = model.new_decode_state(4);
  using testing::expect_error;
  expect_error([&] { model.extend_batch({&a, &b}, {{1}}); }, "2 decode states for 1 token runs");
  expect_error([&] { model.extend_batch({}, {}); }, "0 decode states for 0 token runs");
  expect_error([&] { model.extend_batch({&a, &a}, {{1}, {2}}); }, "decode states 0 and 1 are the same state");
  expect_error([&] { model.extend_batch({&a, &b}, {{1}, {}}); }, "no tokens for decode state 1");
  expect_error([&] { model.extend_batch({&a, &b}, {{1}, {1, 2, 3, 4, 5}}); },
               "5 more tokens would exceed the capacity of decode state 1 (0 of 4 used)");
  DecodeState empty;
  expect_error([&] { model.extend_batch({&a, &empty}, {{1}, {2}}); }, "decode state 1 has 0 layers for 6");
  EXPECT_EQ(a.tokens, 0);  // refused before any work
}

}  // namespace
}  // namespace longctx
