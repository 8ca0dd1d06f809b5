#include "attention/decode_kernel.hpp"

#include <algorithm>

#include "core/simd.hpp"

namespace longctx::attn {

namespace {

// s[i * n + j] = q_i . k_j and acc_i += sum_j p_ij v_j with the loops written out so each
// clone vectorises them (16 partial sums per dot; no per-key calls or horizontal reductions
// beyond one per score).
LONGCTX_SIMD_CLONES
void scores(Rows q, int64_t rows, Rows k, int64_t n, int d, float* s) {
  constexpr int W = 16;
  const int dw = d / W * W;
  for (int64_t j = 0; j < n; ++j) {
    const float* kj = k.row(j);
    for (int64_t i = 0; i < rows; ++i) {
      const float* qi = q.row(i);
      float part[W] = {};
      for (int c0 = 0; c0 < dw; c0 += W)
#pragma omp simd
        for (int l = 0; l < W; ++l) part[l] += qi[c0 + l] * kj[c0 + l];
      float t = 0.0f;
      for (int c = dw; c < d; ++c) t += qi[c] * kj[c];
      for (int l = 0; l < W; ++l) t += part[l];
      s[i * n + j] = t;
    }
  }
}

LONGCTX_SIMD_CLONES
void accumulate(const float* p, Rows v, int64_t n, int d, float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j];
    const float* vj = v.row(j);
#pragma omp simd
    for (int c = 0; c < d; ++c) acc[c] += pj * vj[c];
  }
}

}  // namespace

void decode_tile_forward(Rows q, int64_t rows, Rows k, Rows v, int64_t n, int d, float scale, SoftmaxState st, float* s) {
  scores(q, rows, k, n, d, s);
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * n;
    const float m_new = std::max(st.m[i], scale * simd::max_of(si, n));
    const float alpha = simd::exp_approx(st.m[i] - m_new);
    st.l[i] = st.l[i] * alpha + simd::exp_scaled_sum(si, n, scale, m_new);
    st.m[i] = m_new;
    float* acc = st.acc + i * st.ld_acc;
    if (alpha != 1.0f) simd::scale_inplace(acc, d, alpha);
    accumulate(si, v, n, d, acc);
  }
}

void decode_attend_range(const Tensor& k, const Tensor& v, int g, int64_t begin, int64_t end, Rows q, int64_t rows,
                         int d, float scale, SoftmaxState st, TileScratch& ws) {
  for (int64_t kp = begin; kp < end; kp += kKeyTile) {
    const int64_t n = std::min(kKeyTile, end - kp);
    const Rows kr = load_rows(k, kp, n, g, ws.k.data());
    const Rows vr = load_rows(v, kp, n, g, ws.v.data());
    decode_tile_forward(q, rows, kr, vr, n, d, scale, st, ws.s.data());
  }
}

}  // namespace longctx::attn
