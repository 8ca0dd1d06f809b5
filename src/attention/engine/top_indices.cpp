#include "attention/engine/top_indices.hpp"

#include <algorithm>

namespace longctx::attn {

int64_t top_indices(const float* score, int64_t count, int64_t n, int32_t* out) {
  if (n <= 0) return 0;
  if (count <= n) {
    for (int64_t i = 0; i < count; ++i) out[i] = int32_t(i);
    return count;
  }
  // out[0..kept) holds the best so far, best first. Indices arrive ascending, so a newcomer with a
  // score equal to a kept one outranks it.
  int64_t kept = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float s = score[i];
    if (kept == n && s < score[out[n - 1]]) continue;
    int64_t pos = kept < n ? kept++ : n - 1;
    for (; pos > 0 && s >= score[out[pos - 1]]; --pos) out[pos] = out[pos - 1];
    out[pos] = int32_t(i);
  }
  std::sort(out, out + n);
  return n;
}

}  // namespace longctx::attn
