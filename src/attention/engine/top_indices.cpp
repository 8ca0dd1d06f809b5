#include "attention/engine/top_indices.hpp"

namespace longctx::attn {

int64_t top_indices(const float* score, int64_t count, int64_t n, int32_t* out, std::vector<uint32_t>* scratch) {
  if (n <= 0) return 0;
  if (count <= n) {
    for (int64_t i = 0; i < count; ++i) out[i] = int32_t(i);
    return count;
  }
  std::vector<uint32_t> local;
  std::vector<uint32_t>& u = scratch ? *scratch : local;
  u.resize(size_t(count));
  for (int64_t i = 0; i < count; ++i) u[size_t(i)] = ordered_bits(score[i]);
  const uint32_t* x = u.data();
  const uint32_t m = uint32_t(count), need = uint32_t(n);
  // t: the highest value with at least n scores at or above it (the n-th highest), bit by bit.
  uint32_t t = 0, at_or_above = m;
  for (int bit = 31; bit >= 0 && at_or_above != need; --bit) {
    const uint32_t cand = t | (1u << bit);
    uint32_t c = 0;
    for (uint32_t i = 0; i < m; ++i) c += x[i] >= cand ? 1u : 0u;
    if (c >= need) t = cand, at_or_above = c;
  }
  // Everything above t belongs; of the ties at t, the earliest (at_or_above - n) are left out.
  const uint32_t skip = at_or_above - need;
  uint32_t w = 0, ties = 0;
  for (uint32_t i = 0; w < need; ++i) {  // out[w] holds a candidate until a selected one stays
    const uint32_t tie = x[i] == t ? 1u : 0u;
    out[w] = int32_t(i);
    w += (x[i] > t ? 1u : 0u) | (tie & (ties >= skip ? 1u : 0u));
    ties += tie;
  }
  return n;
}

}  // namespace longctx::attn
