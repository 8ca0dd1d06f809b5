// Test helpers for the transformer: tiny configs and batches, and the two checks every attention
// kind must pass (gradients vs finite differences of the double reference; decode vs forward).
#pragma once
#include <longctx/model/reference_model.hpp>
#include <longctx/model/transformer.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace longctx::testing {

// 11 tokens, d_model 8, 2 query heads sharing 1 KV head (head_dim 4), 2 layers; `attention` is the
// spec every layer gets unless `layers` overrides it.
inline ModelConfig tiny_model(const nlohmann::json& attention, const nlohmann::json& ffn = {{"kind", "dense"}},
                              const nlohmann::json& layers = nullptr) {
  nlohmann::json j{{"vocab_size", 11}, {"d_model", 8}, {"n_layers", 2},  {"n_heads", 2},          {"n_kv_heads", 1},
                   {"d_ff", 12},       {"max_seq_len", 64}, {"tie_embeddings", false}, {"attention", attention},
                   {"ffn", ffn}};
  if (!layers.is_null()) j["layers"] = layers;
  return ModelConfig::from_json(j);
}

inline Batch tiny_batch() {
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

inline std::vector<std::vector<double>> params_as_double(const Transformer& m) {
  std::vector<std::vector<double>> p;
  for (const Param& x : m.params()) p.emplace_back(x.value.f32(), x.value.f32() + x.value.numel());
  return p;
}

// A model whose matrices are `factor` times their init, so that attention patterns, selections
// and gates are far from uniform. Only the matrices that decay: MoBA's key-convolution taps keep
// their identity init (their own tests randomise them).
inline Transformer scaled_model(const ModelConfig& cfg, uint64_t seed, float factor) {
  Transformer model(cfg, seed);
  for (Param& p : model.params())
    if (p.value.ndim() >= 2 && p.decay)
      for (int64_t i = 0; i < p.value.numel(); ++i) p.value.f32()[i] *= factor;
  return model;
}

// Fast backward (fp32) vs central differences of the double reference model, every parameter.
// The reference's selections (sparse masks, NSA blocks) are recorded at the point and held fixed.
inline void check_gradients(Transformer model) {
  const ModelConfig& cfg = model.config();
  const Batch batch = tiny_batch();
  model.zero_grad();
  const double loss = model.forward(batch, true) + model.aux_loss();
  model.backward();
  auto p = params_as_double(model);
  reference::SelectionTape tape;
  const double ref = reference::model_loss(cfg, p, batch, false, &tape);
  ASSERT_NEAR(loss, ref, 1e-5 * std::abs(ref));
  const double h = 1e-5;
  double worst = 0, scale = 0;
  for (size_t i = 0; i < p.size(); ++i)
    for (size_t j = 0; j < p[i].size(); ++j) {
      const double keep = p[i][j];
      p[i][j] = keep + h;
      const double lp = reference::model_loss(cfg, p, batch, false, &tape);
      p[i][j] = keep - h;
      const double lm = reference::model_loss(cfg, p, batch, false, &tape);
      p[i][j] = keep;
      const double fd = (lp - lm) / (2 * h), an = model.params()[i].grad.f32()[j];
      worst = std::max(worst, std::abs(fd - an));
      scale = std::max(scale, std::abs(fd));
      ASSERT_NEAR(an, fd, 2e-3 * (1.0 + std::abs(fd))) << model.params()[i].name << "[" << j << "]";
    }
  EXPECT_LT(worst / scale, 1e-3) << "worst abs error " << worst << " vs largest gradient " << scale;
}
inline void check_gradients(const ModelConfig& cfg) { check_gradients(scaled_model(cfg, 7, 20.0f)); }

// Prefill the first chunks[0] tokens, then extend by chunks[1], chunks[2], ... and one token at a
// time for the rest: every row of logits must equal the full forward's.
inline void check_extend_matches_forward(Transformer& model, std::vector<size_t> chunks = {5}) {
  const ModelConfig& cfg = model.config();
  const std::vector<int32_t> ids{1, 4, 2, 9, 3, 3, 7, 0, 5, 10, 6, 2, 8, 8, 1};
  Batch whole;
  whole.tokens = ids;
  whole.cu_seqlens = {0, int64_t(ids.size())};
  const Tensor full = model.logits(whole);
  DecodeState st = model.new_decode_state(int64_t(ids.size()));
  const int64_t V = cfg.vocab_size;
  size_t t = 0;
  for (size_t c = 0; t < ids.size(); ++c) {
    const size_t n = c < chunks.size() ? chunks[c] : 1;
    const Tensor step = model.extend(st, std::vector<int32_t>(ids.begin() + long(t), ids.begin() + long(t + n)));
    for (size_t i = 0; i < n; ++i)
      for (int64_t v = 0; v < V; ++v) {
        const float want = full.at(int64_t(t + i) * V + v);
        ASSERT_NEAR(step.at(int64_t(i) * V + v), want, 1e-4 * (1 + std::abs(want))) << "position " << t + i << " logit " << v;
      }
    t += n;
  }
  EXPECT_EQ(st.size(), int64_t(ids.size()));
  EXPECT_THROW(model.extend(st, {1}), std::invalid_argument);  // capacity reached
}
inline void check_extend_matches_forward(const ModelConfig& cfg, std::vector<size_t> chunks = {5}) {
  Transformer model = scaled_model(cfg, 11, 10.0f);
  check_extend_matches_forward(model, std::move(chunks));
}

}  // namespace longctx::testing
