#include "attention/engine/decode_kernel.hpp"

#include <algorithm>
#include <type_traits>

#include "attention/engine/decode_kernel_avx512.hpp"
#include "core/simd.hpp"

namespace longctx::attn {

namespace {

// A K/V row element as fp32: bf16 widened and int8 converted in the loop, so the cache's rows are
// read once and never copied into an fp32 scratch.
inline float as_f32(float x) { return x; }
inline float as_f32(uint16_t b) { return bf16_to_f32(b); }
inline float as_f32(int8_t x) { return float(x); }

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
      s[i * n + j] = t * k.row_scale(j);
    }
  }
}

template <class E>
[[gnu::always_inline]] inline void accumulate_body(const float* p, KvRows<E> v, int64_t n, int d, float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j] * v.row_scale(j);
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
LONGCTX_SIMD_CLONES void scores(Rows q, int64_t rows, KvRows<int8_t> k, int64_t n, int d, float* s) {
  scores_body(q, rows, k, n, d, s);
}
LONGCTX_SIMD_CLONES void accumulate(const float* p, KvRows<float> v, int64_t n, int d, float* acc) {
  accumulate_body(p, v, n, d, acc);
}
LONGCTX_SIMD_CLONES void accumulate(const float* p, KvRows<uint16_t> v, int64_t n, int d, float* acc) {
  accumulate_body(p, v, n, d, acc);
}
LONGCTX_SIMD_CLONES void accumulate(const float* p, KvRows<int8_t> v, int64_t n, int d, float* acc) {
  accumulate_body(p, v, n, d, acc);
}

template <class E>
void tile_forward_rows(Rows q, int64_t rows, KvRows<E> k, KvRows<E> v, int64_t n, int d, float scale, SoftmaxState st,
                       float* s) {
  if (avx512::tile_forward(q, rows, k, v, n, d, scale, st, s)) return;
  scores(q, rows, k, n, d, s);
  for (int64_t i = 0; i < rows; ++i) {
    fold_scores(st, i, s + i * n, n, scale, d);
    accumulate(s + i * n, v, n, d, st.acc + i * st.ld_acc);
  }
}

template <class E>
void attend_tiles(KvRows<E> k, KvRows<E> v, int64_t n_keys, Rows q, int64_t rows, int d, float scale, SoftmaxState st,
                  float* s) {
  for (int64_t j = 0; j < n_keys; j += kKeyTile) {
    const int64_t n = std::min(kKeyTile, n_keys - j);
    tile_forward_rows(q, rows, KvRows<E>{k.row(j), k.ld, k.scale ? k.scale + j : nullptr},
                      KvRows<E>{v.row(j), v.ld, v.scale ? v.scale + j : nullptr}, n, d, scale, st, s);
  }
}

template <class E>
void score_range(KvRows<E> k, int64_t n, Rows q, int64_t rows, int d, float* s) {
  if (!avx512::scores(q, rows, k, n, d, s)) scores(q, rows, k, n, d, s);
}

// fn(E{}) with E the element type x is stored in.
template <class Fn>
void by_dtype(const StoredRows& x, Fn&& fn) {
  if (x.i8) fn(int8_t{});
  else if (x.bf16) fn(uint16_t{});
  else fn(float{});
}

// The rows of KV head g from token `begin` on, as stored in E.
template <class E>
KvRows<E> head_rows(const StoredRows& x, int g, int64_t begin) {
  const int64_t off = begin * x.ld() + int64_t(g) * x.d;
  if constexpr (std::is_same_v<E, int8_t>) return {x.i8 + off, x.ld(), x.scales_of(g) + begin};
  else if constexpr (std::is_same_v<E, uint16_t>) return {x.bf16 + off, x.ld()};
  else return {x.f32 + off, x.ld()};
}

}  // namespace

void decode_scores(const StoredRows& k, int g, int64_t begin, int64_t end, Rows q, int64_t rows, int d, float* s) {
  by_dtype(k, [&](auto e) { score_range(head_rows<decltype(e)>(k, g, begin), end - begin, q, rows, d, s); });
}

void decode_attend_range(const StoredRows& k, const StoredRows& v, int g, int64_t begin, int64_t end, Rows q,
                         int64_t rows, int d, float scale, SoftmaxState st, TileScratch& ws) {
  by_dtype(k, [&](auto e) {
    using E = decltype(e);
    attend_tiles(head_rows<E>(k, g, begin), head_rows<E>(v, g, begin), end - begin, q, rows, d, scale, st, ws.s.data());
  });
}

}  // namespace longctx::attn
