// NSA block selection (paper eqs. 8-11): importance of selection blocks from the compression
// branch's attention probabilities (summed over a GQA group's heads by the caller), then top-n.
#include "attention/nsa/internal.hpp"

namespace longctx::attn::nsa {

void block_importance(const float* imp_c, int64_t vis, int64_t own, const Geometry& geo, float* imp_b) {
  std::fill_n(imp_b, own + 1, 0.0f);
  // Compressed block b covers [b*stride, b*stride + l); selection block j gets the fraction of
  // its l tokens that fall inside [j*l', (j+1)*l').
  const float inv_l = 1.0f / float(geo.l);
  for (int64_t b = 0; b < vis; ++b) {
    const int64_t lo = b * geo.stride, hi = lo + geo.l;
    for (int64_t j = lo / geo.ls; j * geo.ls < hi; ++j) {
      const int64_t ov = std::min(hi, (j + 1) * geo.ls) - std::max(lo, j * geo.ls);
      imp_b[j] += imp_c[b] * float(ov) * inv_l;
    }
  }
}

void top_n(const float* imp, int64_t own, const Geometry& geo, std::vector<int64_t>& rest, int32_t* out) {
  std::fill_n(out, geo.n, -1);
  if (own + 1 <= geo.n) {
    for (int64_t j = 0; j <= own; ++j) out[j] = int32_t(j);
    return;
  }
  int64_t count = 0;
  rest.clear();
  for (int64_t j = 0; j <= own; ++j)
    if (j == 0 || own - j < geo.local)
      out[count++] = int32_t(j);
    else
      rest.push_back(j);
  const int64_t take = geo.n - count;
  auto before = [&](int64_t a, int64_t b) { return imp[a] != imp[b] ? imp[a] > imp[b] : a > b; };
  std::nth_element(rest.begin(), rest.begin() + (take - 1), rest.end(), before);
  for (int64_t c = 0; c < take; ++c) out[count++] = int32_t(rest[size_t(c)]);
  std::sort(out, out + count);
}

}  // namespace longctx::attn::nsa
