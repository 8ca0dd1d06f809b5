// Next-token sampling from logits: temperature, top-k, top-p (nucleus), seeded.
#pragma once
#include <cstdint>
#include <random>

namespace longctx {

struct SamplerConfig {
  double temperature = 0.8;  // 0 = greedy (argmax)
  int64_t top_k = 0;         // keep the k most likely tokens (0 = all)
  double top_p = 1.0;        // keep the smallest set whose probability reaches top_p
  // Throws std::invalid_argument naming the first bad field (temperature >= 0 and finite,
  // top_k >= 0, top_p in (0, 1]).
  void validate() const;
};

// Draws a token id from logits[0..V); ties in greedy mode go to the lowest id.
int32_t sample_token(const float* logits, int64_t V, const SamplerConfig& cfg, std::mt19937_64& rng);

}  // namespace longctx
