#include "attention/engine/decode_kernel.hpp"

#include <algorithm>

#include "attention/engine/decode_kernel_avx512.hpp"
#include "core/simd.hpp"

namespace longctx::attn {

namespace {

// A K/V row element as fp32: bf16 widened in the loop, so the cache's bf16 rows are read once
// and never copied into an fp32 scratch.
inline float as_f32(float x) { return x; }
inline float as_f32(uint16_t b) { return bf16_to_f32(b); }

// Rows of keys or values of element type E with row stride ld (elements).
template <class E>
struct KvRows {
  const E* p;
  int64_t ld;
  const E* row(int64_t j) const { return p + j * ld; }
};

// s[i * n + j] = q_i . k_j and acc_i += sum_j p_ij v_j with the loops written out so each
// clone vectorises them (16 partial sums per dot; no per-key calls or horizontal reductions
// beyond one per score).
template <class E>
[[gnu::always_inline]] inline void scores_body(Rows q, int64_t rows, KvRows<E> k, int64_t n, int d, float* s) {
  constexpr int W = 16;
  const int dw = d / W * W;
  for (int64_t j = 0; j < n; ++j) {
    const E* kj = k.row(j);
    for (int64_t i = 0; i < rows; ++i) {
      const float* qi = q.row(i);
      float part[W] = {};
      for (int c0 = 0; c0 < dw; c0 += W)
#pragma omp simd
        for (int l = 0; l < W; ++l) part[l] += qi[c0 + l] * as_f32(kj[c0 + l]);
      float t = 0.0f;
      for (int c = dw; c < d; ++c) t += qi[c] * as_f32(kj[c]);
      for (int l = 0; l < W; ++l) t += part[l];
      s[i * n + j] = t;
    }
  }
}

template <class E>
[[gnu::always_inline]] inline void accumulate_body(const float* p, KvRows<E> v, int64_t n, int d, float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j];
    const E* vj = v.row(j);
#pragma omp simd
    for (int c = 0; c < d; ++c) acc[c] += pj * as_f32(vj[c]);
  }
}


// Non-template entry points, so that each gets its AVX-512 / AVX2 / baseline clone (GCC does not
// clone templates); the bodies are inlined into every clone.
LONGCTX_SIMD_CLONES void scores(Rows q, int64_t rows, KvRows<float> k, int64_t n, int d, float* s) {
  scores_body(q, rows, k, n, d, s);
}
LONGCTX_SIMD_CLONES void scores(Rows q, int64_t rows, KvRows<uint16_t> k, int64_t n, int d, float* s) {
  scores_body(q, rows, k, n, d, s);
}
LONGCTX_SIMD_CLONES void accumulate(const float* p, KvRows<float> v, int64_t n, int d, float* acc) {
  accumulate_body(p, v, n, d, acc);
}
LONGCTX_SIMD_CLONES void accumulate(const float* p, KvRows<uint16_t> v, int64_t n, int d, float* acc) {
  accumulate_body(p, v, n, d, acc);
}

template <class E>
void tile_forward_rows(Rows q, int64_t rows, KvRows<E> k, KvRows<E> v, int64_t n, int d, float scale, SoftmaxState st,
                       float* s) {
  if (avx512::tile_forward(q, rows, k.p, k.ld, v.p, v.ld, n, d, scale, st, s)) return;
  scores(q, rows, k, n, d, s);
  for (int64_t i = 0; i < rows; ++i) {
    fold_scores(st, i, s + i * n, n, scale, d);
    accumulate(s + i * n, v, n, d, st.acc + i * st.ld_acc);
  }
}

}  // namespace

void decode_tile_forward(Rows q, int64_t rows, Rows k, Rows v, int64_t n, int d, float scale, SoftmaxState st, float* s) {
  tile_forward_rows(q, rows, KvRows<float>{k.p, k.ld}, KvRows<float>{v.p, v.ld}, n, d, scale, st, s);
}

void decode_attend_range(const Tensor& k, const Tensor& v, int g, int64_t begin, int64_t end, Rows q, int64_t rows,
                         int d, float scale, SoftmaxState st, TileScratch& ws) {
  const int64_t ld = k.dim(1) * d, off = int64_t(g) * d;
  for (int64_t kp = begin; kp < end; kp += kKeyTile) {
    const int64_t n = std::min(kKeyTile, end - kp);
    if (k.dtype() == DType::bf16)
      tile_forward_rows(q, rows, KvRows<uint16_t>{k.bf16() + kp * ld + off, ld},
                        KvRows<uint16_t>{v.bf16() + kp * ld + off, ld}, n, d, scale, st, ws.s.data());
    else
      tile_forward_rows(q, rows, KvRows<float>{k.f32() + kp * ld + off, ld}, KvRows<float>{v.f32() + kp * ld + off, ld},
                        n, d, scale, st, ws.s.data());
  }
}

}  // namespace longctx::attn
