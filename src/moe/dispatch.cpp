#include "moe/dispatch.hpp"

#include <cmath>
#include <cstring>

#include "moe/token_chunks.hpp"

namespace longctx::moe::detail {

int64_t capacity_of(double factor, int64_t tokens, int64_t k, int64_t num_experts) {
  if (factor == 0) return -1;
  return int64_t(std::ceil(factor * double(tokens * k) / double(num_experts)));
}

Dispatch make_dispatch(const std::vector<int32_t>& expert, int64_t tokens, int64_t k, int64_t num_experts,
                       int64_t capacity) {
  Dispatch dp;
  dp.slot.assign(size_t(tokens * k), 0);
  dp.routed.assign(size_t(num_experts), 0);
  for (int32_t e : expert) ++dp.routed[size_t(e)];
  // Capacity: serve ranks in order, tokens in order within a rank; mark dropped slots -1.
  std::vector<int64_t> kept(size_t(num_experts), 0);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < tokens; ++t) {
      const int32_t e = expert[size_t(t * k + j)];
      if (capacity >= 0 && kept[size_t(e)] >= capacity) {
        dp.slot[size_t(t * k + j)] = -1;
        ++dp.dropped_assignments;
      } else {
        ++kept[size_t(e)];
      }
    }
  // Counting sort of the kept assignments by expert, tokens ascending within a run.
  dp.offsets.assign(size_t(num_experts + 1), 0);
  for (int64_t e = 0; e < num_experts; ++e) dp.offsets[size_t(e + 1)] = dp.offsets[size_t(e)] + kept[size_t(e)];
  std::vector<int64_t> next(dp.offsets.begin(), dp.offsets.end() - 1);
  dp.row_token.assign(size_t(dp.offsets.back()), 0);
  for (int64_t t = 0; t < tokens; ++t) {
    bool any = false;
    for (int64_t j = 0; j < k; ++j) {
      int64_t& s = dp.slot[size_t(t * k + j)];
      if (s < 0) continue;
      s = next[size_t(expert[size_t(t * k + j)])]++;
      dp.row_token[size_t(s)] = int32_t(t);
      any = true;
    }
    dp.dropped_tokens += !any;
  }
  return dp;
}

void gather_rows(const float* src, const std::vector<int32_t>& row_token, int64_t d, float* dst) {
  for_token_chunks(int64_t(row_token.size()), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::memcpy(dst + r * d, src + int64_t(row_token[size_t(r)]) * d, size_t(d) * 4);
  });
}

void combine_rows(const float* rows, const std::vector<int64_t>& slot, const float* weight, int64_t tokens,
                  int64_t k, int64_t d, bool accumulate, float* out) {
  for_token_chunks(tokens, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * d;
      if (!accumulate) std::memset(o, 0, size_t(d) * 4);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t s = slot[size_t(t * k + j)];
        if (s < 0) continue;
        const float wgt = weight ? weight[t * k + j] : 1.0f;
        const float* r = rows + s * d;
        for (int64_t c = 0; c < d; ++c) o[c] += wgt * r[c];
      }
    }
  });
}

}  // namespace longctx::moe::detail
