// Top-n selection for the block-sparse gates (MoBA, top-k, threshold): the blocks or keys a query
// attends, and the rank order the threshold visits them in.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

namespace longctx::attn {

// The float's bits as an unsigned integer with the same order (for finite values and infinities;
// -0 counts as +0, as float comparison has it).
inline uint32_t ordered_bits(float x) {
  if (x == 0.0f) x = 0.0f;
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b & 0x80000000u ? ~b : b | 0x80000000u;
}

// The n highest of score[0..count), ranked by higher score first and, between equal scores, the
// higher index first; written to out[0..min(n, count)) ascending by index. Returns how many were
// written; NaNs rank by their bits (ordered_bits), the same on every path. `scratch` (optional)
// is reused. For n <= 11 on a CPU with AVX-512: a vector filter down to at most 16 candidates,
// ranked in one vector (top_indices.cpp); else, or when more are left, top_indices_portable.
int64_t top_indices(const float* score, int64_t count, int64_t n, int32_t* out,
                    std::vector<uint32_t>* scratch = nullptr);
// The same by a bitwise search for the n-th highest value (each step one count over the scores,
// stopping once exactly n are at or above it), then one branch-free pass collecting them.
int64_t top_indices_portable(const float* score, int64_t count, int64_t n, int32_t* out,
                             std::vector<uint32_t>* scratch = nullptr);

// Rank key of (score, index): ascending keys are descending scores, equal scores the higher index
// first (top_indices' order), so sorting keys sorts candidates best first.
inline uint64_t rank_key(float score, int32_t index) {
  return uint64_t(~ordered_bits(score)) << 32 | uint32_t(~uint32_t(index));
}
inline int32_t rank_key_index(uint64_t key) { return int32_t(~uint32_t(key)); }
inline float rank_key_score(uint64_t key) {
  uint32_t b = ~uint32_t(key >> 32);
  b = b & 0x80000000u ? b & 0x7fffffffu : ~b;
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

}  // namespace longctx::attn
