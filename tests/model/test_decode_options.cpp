// Decode options of the model. An int8 KV cache against an fp32 one on a small model: dense layers'
// logits close and the same greedy text; with MoBA, top-k and threshold layers, the same next token
// almost everywhere; memory accounted; nsa layers refuse int8 clearly. Cascade pruning to a KV
// budget: a budget above the length changes no bit, caches stay within their budgets with nested
// token sets, sparse kinds are refused.
#include <longctx/model/transformer.hpp>

#include "model_helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

namespace longctx {
namespace {

using nlohmann::json;

// 4 layers (full, moba, block top-k, threshold; blocks of 8), 4 query heads over 2 KV heads of 32
// (the AVX-512 int8 path's shape).
ModelConfig four_kinds() {
  return ModelConfig::from_json(
      {{"vocab_size", 64}, {"d_model", 128}, {"n_layers", 4}, {"n_heads", 4}, {"n_kv_heads", 2}, {"d_ff", 96},
       {"max_seq_len", 128}, {"tie_embeddings", false}, {"attention", {{"kind", "full"}}}, {"ffn", {{"kind", "dense"}}},
       {"layers", json::array({{{"attention", {{"kind", "full"}}}},
                               {{"attention", {{"kind", "moba"}, {"block_size", 8}, {"top_k", 2}}}},
                               {{"attention", {{"kind", "topk"}, {"block_size", 8}, {"top_k", 2}}}},
                               {{"attention", {{"kind", "threshold"}, {"block_size", 8}, {"tau", 0.9}}}}})}});
}

ModelConfig all_full() {
  ModelConfig cfg = four_kinds();
  for (AttentionSpec& a : cfg.attention) a = AttentionSpec{};
  return cfg;
}

std::vector<int32_t> greedy(Transformer& m, KVDType dtype, const std::vector<int32_t>& prompt, int64_t n) {
  DecodeState st = m.new_decode_state(int64_t(prompt.size()) + n, dtype);
  Tensor logits = m.prefill(st, prompt, 8);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const float* l = logits.f32();
    out.push_back(int32_t(std::max_element(l, l + m.config().vocab_size) - l));
    if (i + 1 < n) logits = m.extend(st, {out.back()});
  }
  return out;
}

// Logits of every position of `ids` fed through a decode state of `dtype`: a 30-token prefill,
// then one token per step.
std::vector<Tensor> teacher_forced(Transformer& m, KVDType dtype, const std::vector<int32_t>& ids) {
  DecodeState st = m.new_decode_state(int64_t(ids.size()), dtype);
  std::vector<Tensor> out;
  out.push_back(m.extend(st, std::vector<int32_t>(ids.begin(), ids.begin() + 30)));
  for (size_t t = 30; t < ids.size(); ++t) out.push_back(m.extend(st, {ids[t]}));
  return out;
}

std::vector<int32_t> some_text(int n) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(int32_t((i * i + 5 * i) % 64));
  return ids;
}

// Dense layers: the int8 cache moves each logit by a small fraction of the logits' spread, and
// the greedy text is the fp32 cache's.
TEST(KvDtype, Int8CacheTracksFp32InDenseLayers) {
  Transformer m = testing::scaled_model(all_full(), 6, 4.0f);
  const std::vector<int32_t> ids = some_text(100);
  const std::vector<Tensor> a = teacher_forced(m, KVDType::f32, ids), b = teacher_forced(m, KVDType::int8, ids);
  double worst = 0, spread = 0;
  for (size_t s = 0; s < a.size(); ++s)
    for (int64_t i = 0; i < a[s].numel(); ++i) {
      worst = std::max(worst, std::abs(double(a[s].f32()[i]) - b[s].f32()[i]));
      spread = std::max(spread, std::abs(double(a[s].f32()[i])));
    }
  EXPECT_LT(worst, 0.02 * spread) << "worst logit difference " << worst << " of logits up to " << spread;
  EXPECT_GT(worst, 0.0);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 40), f32 = greedy(m, KVDType::f32, prompt, 60);
  EXPECT_EQ(greedy(m, KVDType::int8, prompt, 60), f32);
  EXPECT_GT(std::set<int32_t>(f32.begin(), f32.end()).size(), 4u) << "the text is not a constant";
}

// Sparse layers select blocks from statistics of the int8-dequantised keys, so a near tie between
// blocks can flip and move a logit by a step; teacher-forced, the next-token choice still agrees
// with the fp32 cache's at almost every position (as the bf16 cache's does).
TEST(KvDtype, Int8CacheKeepsTheNextTokenInSparseLayers) {
  Transformer m = testing::scaled_model(four_kinds(), 6, 3.0f);
  const std::vector<int32_t> ids = some_text(100);
  const std::vector<Tensor> ref = teacher_forced(m, KVDType::f32, ids);
  const int64_t V = m.config().vocab_size;
  for (KVDType dt : {KVDType::bf16, KVDType::int8}) {
    const std::vector<Tensor> got = teacher_forced(m, dt, ids);
    int64_t same = 0, rows = 0;
    for (size_t s = 0; s < ref.size(); ++s)
      for (int64_t r = 0; r < ref[s].dim(0); ++r, ++rows) {
        const float *x = ref[s].f32() + r * V, *y = got[s].f32() + r * V;
        same += std::max_element(x, x + V) - x == std::max_element(y, y + V) - y;
      }
    EXPECT_GE(double(same) / double(rows), 0.95) << enum_name(dt) << ": " << same << " of " << rows;
  }
}

TEST(KvDtype, StateBytesAndNsaRefusal) {
  const ModelConfig cfg = four_kinds();
  // per layer and token: K and V of 2 heads of 32 values, 4 bytes each or 1 plus a 4-byte scale
  const double f32 = decode_state_bytes(cfg, 1000, KVDType::f32), i8 = decode_state_bytes(cfg, 1000, KVDType::int8);
  EXPECT_NEAR(f32 - i8, 4 * 1000 * 2 * 2 * (4 * 32.0 - (32 + 4)), 1e-6);
  ModelConfig nsa = ModelConfig::from_json(
      {{"vocab_size", 16}, {"d_model", 16}, {"n_layers", 1}, {"n_heads", 2}, {"n_kv_heads", 1}, {"d_ff", 16},
       {"max_seq_len", 32}, {"attention", {{"kind", "nsa"}, {"block_len", 4}, {"stride", 2}, {"select_len", 4},
                                           {"top_n", 3}, {"window", 4}, {"compress", "mean"}}}});
  Transformer m(nsa, 1);
  try {
    m.new_decode_state(8, KVDType::int8);
    FAIL() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("int8 KV cache is not implemented for nsa layers"), std::string::npos);
  }
  EXPECT_NO_THROW(m.new_decode_state(8, KVDType::bf16));
}

// Logits of `ids` fed through a decode state: `first` tokens in one extend, then one at a time.
std::vector<float> decode_logits(Transformer& m, const DecodeOptions& o, const std::vector<int32_t>& ids, size_t first) {
  DecodeState st = m.new_decode_state(int64_t(ids.size()), o);
  const Tensor head = m.extend(st, std::vector<int32_t>(ids.begin(), ids.begin() + long(first)));
  std::vector<float> out(head.f32(), head.f32() + head.numel());
  for (size_t t = first; t < ids.size(); ++t) {
    const Tensor l = m.extend(st, {ids[t]});
    out.insert(out.end(), l.f32(), l.f32() + l.numel());
  }
  return out;
}

CascadePruningOptions budget(std::vector<int64_t> b, int64_t window = 8, int64_t sink = 2) {
  CascadePruningOptions o;
  o.budget = std::move(b), o.window = window, o.sink = sink;
  return o;
}

TEST(KvBudget, BudgetAboveTheLengthEqualsDenseDecodeBitForBit) {
  Transformer m = testing::scaled_model(all_full(), 7, 2.0f);
  const std::vector<int32_t> ids = some_text(90);
  for (KVDType dt : {KVDType::f32, KVDType::int8}) {
    const std::vector<float> dense = decode_logits(m, dt, ids, 40), pruned = decode_logits(m, {dt, budget({90})}, ids, 40);
    ASSERT_EQ(dense.size(), pruned.size());
    EXPECT_EQ(0, std::memcmp(dense.data(), pruned.data(), dense.size() * sizeof(float))) << enum_name(dt);
  }
}

// Budgets shrinking with depth: after every step each cache is within its budget, the layers'
// tokens are nested, each token is held by exactly the layers before the one that pruned it, and
// the protected tokens (sink, window) are all there. An infini layer (no KV cache) passes through.
TEST(KvBudget, CachesStayWithinBudgetsAndNest) {
  ModelConfig cfg = all_full();
  cfg.attention[2] = AttentionSpec(InfiniOptions{});
  Transformer m = testing::scaled_model(cfg, 8, 2.0f);
  const std::vector<int32_t> ids = some_text(128);
  const CascadePruningOptions o = budget({48, 40, 40, 32});
  DecodeState st = m.new_decode_state(128, {KVDType::bf16, o});
  EXPECT_FALSE(st.layers[2].cache);
  EXPECT_EQ(st.layers[0].cache->capacity(), 48 + 8);  // budget + chunk (a quarter of the smallest budget)
  for (size_t t = 0; t < ids.size();) {
    const size_t n = t == 0 ? 70 : 1;  // a prompt longer than a step, then decode
    const Tensor logits = m.extend(st, std::vector<int32_t>(ids.begin() + long(t), ids.begin() + long(t + n)));
    for (int64_t i = 0; i < logits.numel(); ++i) ASSERT_TRUE(std::isfinite(logits.f32()[i]));
    t += n;
    std::vector<std::vector<int64_t>> held;
    for (int l : {0, 1, 3}) {
      ASSERT_LE(st.layers[size_t(l)].cache->size(), o.budget_of(l)) << "layer " << l;
      held.push_back(st.layers[size_t(l)].cache->positions());
      std::sort(held.back().begin(), held.back().end());
    }
    for (size_t i = 1; i < held.size(); ++i)
      ASSERT_TRUE(std::includes(held[i - 1].begin(), held[i - 1].end(), held[i].begin(), held[i].end()));
    for (int64_t p = 0; p < int64_t(t); ++p) {
      const int64_t at = st.pruning->pruned_at(p);
      for (int l : {0, 1, 3}) {
        const auto& h = held[size_t(l == 3 ? 2 : l)];
        ASSERT_EQ(std::binary_search(h.begin(), h.end(), p), l < at) << "position " << p << " layer " << l;
      }
      if (p < o.sink || p >= int64_t(t) - o.window) ASSERT_EQ(at, 4) << "protected position " << p;
    }
  }
  int64_t pruned = 0, deeper = 0;
  for (int64_t p = 0; p < 128; ++p) {
    pruned += st.pruning->pruned_at(p) < 4;
    deeper += st.pruning->pruned_at(p) == 3;  // by the last layer's smaller budget alone
  }
  EXPECT_EQ(pruned, 128 - 32) << "the last layer keeps 32 of 128";
  EXPECT_GT(deeper, 0);
  EXPECT_LT(decode_state_bytes(cfg, 128, {KVDType::bf16, o}), decode_state_bytes(cfg, 128, KVDType::bf16));
}

TEST(KvBudget, SparseKindsAndBadBudgetsAreRefused) {
  Transformer m(four_kinds(), 1);
  try {
    m.new_decode_state(64, {KVDType::f32, budget({40})});
    FAIL() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("runs over dense attention, but layer 1 is moba"), std::string::npos) << e.what();
  }
  Transformer full(all_full(), 1);
  EXPECT_THROW(full.new_decode_state(64, {KVDType::f32, budget({40, 50, 40, 40})}), std::invalid_argument);
  EXPECT_THROW(full.new_decode_state(64, {KVDType::f32, budget({9})}), std::invalid_argument);  // < sink + window
}

}  // namespace
}  // namespace longctx
