#include "attention/engine/decode_kernel_avx512.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

// Only the code below is compiled for AVX-512 (after every include, so no inline library code is
// built for it), and it runs only when the CPU reports AVX-512 F+BW.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
// GCC 12 flags the intrinsics' own _mm512_undefined_epi32() pass-through operand (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace longctx::attn::avx512 {

namespace {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
// bf16 -> fp32 is a 16-bit left shift of the widened word.
inline __m512 load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Lane j of the result = sum of the 16 lanes of v[j]: a transpose-and-add tree (15 vertical adds
// of shuffled pairs) instead of 16 horizontal reductions.
inline __m512 reduce16(const float* part) {
  __m512 w[8], x[4], y[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = _mm512_load_ps(part + 32 * i), b = _mm512_load_ps(part + 32 * i + 16);
    w[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // per 128-bit lane: a b a b
  }
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: v0 v1 v2 v3 of the four
    x[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44), _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)  // 128-bit lanes: first four (two halves), next four (two halves)
    y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x88), _mm512_shuffle_f32x4(y[0], y[1], 0xDD));
}

// Software prefetch of one d-long row (DV vectors); DRAM latency is hidden by keeping many lines
// in flight, which the hardware stride prefetcher alone does not do for strided head rows.
constexpr int64_t kPrefetchRows = 16;
template <int DV, class E>
inline void prefetch_row(const E* row, int hint) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int b = 0; b < int(DV * 16 * sizeof(E)); b += 64)
    if (hint == _MM_HINT_T0) _mm_prefetch(p + b, _MM_HINT_T0);
    else _mm_prefetch(p + b, _MM_HINT_T1);
}

// s[e * n + j] = q_e . k_j for up to 8 rows; DV = d / 16 vectors per key row, held in registers.
template <int DV, class E>
void scores(Rows q, int rows, const E* k, int64_t ld, const E* v, int64_t ldv, int64_t n, float* s) {
  alignas(64) float part[8 * 16 * 16];
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int cnt = n - j0 < 16 ? int(n - j0) : 16;
    for (int jj = 0; jj < 16; ++jj) {
      if (jj >= cnt) {
        for (int e = 0; e < rows; ++e) _mm512_store_ps(part + (e * 16 + jj) * 16, _mm512_setzero_ps());
        continue;
      }
      const E* kj = k + (j0 + jj) * ld;
      prefetch_row<DV>(kj + kPrefetchRows * ld, _MM_HINT_T0);  // keys ahead, and this key's value row for
      prefetch_row<DV>(v + (j0 + jj) * ldv, _MM_HINT_T1);       // the V pass: many misses in flight
      __m512 kr[DV];
      for (int c = 0; c < DV; ++c) kr[c] = load16(kj + 16 * c);
      for (int e = 0; e < rows; ++e) {
        const float* qe = q.row(e);
        __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(qe), kr[0]), a1 = _mm512_setzero_ps();
        for (int c = 1; c < DV; ++c)
          if (c % 2) a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qe + 16 * c), kr[c], a1);
          else a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qe + 16 * c), kr[c], a0);
        _mm512_store_ps(part + (e * 16 + jj) * 16, _mm512_add_ps(a0, a1));
      }
    }
    const __mmask16 m = __mmask16((1u << cnt) - 1u);
    for (int e = 0; e < rows; ++e) _mm512_mask_storeu_ps(s + e * n + j0, m, reduce16(part + e * 256));
  }
}

// acc_e[c0, c0 + 16 CV) += sum_j p[e * n + j] v_j[c0, c0 + 16 CV): R x CV accumulators in registers.
template <int R, int CV, class E>
void accumulate(const float* p, const E* v, int64_t ld, int64_t n, int c0, float* acc, int64_t ld_acc) {
  __m512 a[R][CV];
  for (int e = 0; e < R; ++e)
    for (int c = 0; c < CV; ++c) a[e][c] = _mm512_loadu_ps(acc + e * ld_acc + c0 + 16 * c);
  for (int64_t j = 0; j < n; ++j) {
    __m512 x[CV];
    for (int c = 0; c < CV; ++c) x[c] = load16(v + j * ld + c0 + 16 * c);
    for (int e = 0; e < R; ++e) {
      const __m512 pe = _mm512_set1_ps(p[e * n + j]);
      for (int c = 0; c < CV; ++c) a[e][c] = _mm512_fmadd_ps(pe, x[c], a[e][c]);
    }
  }
  for (int e = 0; e < R; ++e)
    for (int c = 0; c < CV; ++c) _mm512_storeu_ps(acc + e * ld_acc + c0 + 16 * c, a[e][c]);
}

// All of d for R rows: slices of 16 * CV columns (R * CV <= 16 accumulators), then 16 at a time.
template <int R, class E>
void accumulate_rows(const float* p, const E* v, int64_t ld, int64_t n, int d, float* acc, int64_t ld_acc) {
  constexpr int CV = R <= 2 ? 8 : (R <= 4 ? 4 : 2);
  int c0 = 0;
  for (; c0 + 16 * CV <= d; c0 += 16 * CV) accumulate<R, CV>(p, v, ld, n, c0, acc, ld_acc);
  for (; c0 < d; c0 += 16) accumulate<R, 1>(p, v, ld, n, c0, acc, ld_acc);
}

template <class E>
void accumulate_any(int rows, const float* p, const E* v, int64_t ld, int64_t n, int d, float* acc, int64_t ld_acc) {
  switch (rows) {
    case 1: return accumulate_rows<1>(p, v, ld, n, d, acc, ld_acc);
    case 2: return accumulate_rows<2>(p, v, ld, n, d, acc, ld_acc);
    case 3: return accumulate_rows<3>(p, v, ld, n, d, acc, ld_acc);
    case 4: return accumulate_rows<4>(p, v, ld, n, d, acc, ld_acc);
    case 5: return accumulate_rows<5>(p, v, ld, n, d, acc, ld_acc);
    case 6: return accumulate_rows<6>(p, v, ld, n, d, acc, ld_acc);
    case 7: return accumulate_rows<7>(p, v, ld, n, d, acc, ld_acc);
    default: return accumulate_rows<8>(p, v, ld, n, d, acc, ld_acc);
  }
}

template <class E>
bool scores_any(int dv, Rows q, int rows, const E* k, int64_t ld, const E* v, int64_t ldv, int64_t n, float* s) {
  switch (dv) {
    case 1: scores<1>(q, rows, k, ld, v, ldv, n, s); return true;
    case 2: scores<2>(q, rows, k, ld, v, ldv, n, s); return true;
    case 4: scores<4>(q, rows, k, ld, v, ldv, n, s); return true;
    case 6: scores<6>(q, rows, k, ld, v, ldv, n, s); return true;
    case 8: scores<8>(q, rows, k, ld, v, ldv, n, s); return true;
    case 12: scores<12>(q, rows, k, ld, v, ldv, n, s); return true;
    case 16: scores<16>(q, rows, k, ld, v, ldv, n, s); return true;
    default: return false;
  }
}

bool cpu_ok() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return ok;
}

bool d_ok(int d) {
  const int dv = d / 16;
  return d % 16 == 0 && (dv == 1 || dv == 2 || dv == 4 || dv == 6 || dv == 8 || dv == 12 || dv == 16);
}

// Rows in groups of 8: scores of the group, the shared online-softmax step per row, then V.
template <class E>
bool forward(Rows q, int64_t rows, const E* k, int64_t ldk, const E* v, int64_t ldv, int64_t n, int d, float scale,
             SoftmaxState st, float* s) {
  if (!cpu_ok() || !d_ok(d)) return false;
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int r = rows - r0 < 8 ? int(rows - r0) : 8;
    scores_any(d / 16, Rows{q.row(r0), q.ld}, r, k, ldk, v, ldv, n, s);
    const SoftmaxState sub{st.m + r0, st.l + r0, st.acc + r0 * st.ld_acc, st.ld_acc};
    for (int e = 0; e < r; ++e) fold_scores(sub, e, s + e * n, n, scale, d);
    accumulate_any(r, s, v, ldv, n, d, sub.acc, sub.ld_acc);
  }
  return true;
}

}  // namespace

bool tile_forward(Rows q, int64_t rows, const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t n, int d,
                  float scale, SoftmaxState st, float* s) {
  return forward(q, rows, k, ldk, v, ldv, n, d, scale, st, s);
}
bool tile_forward(Rows q, int64_t rows, const uint16_t* k, int64_t ldk, const uint16_t* v, int64_t ldv, int64_t n,
                  int d, float scale, SoftmaxState st, float* s) {
  return forward(q, rows, k, ldk, v, ldv, n, d, scale, st, s);
}

}  // namespace longctx::attn::avx512

#pragma GCC pop_options

#else  // not GCC on x86-64: always the portable loops

namespace longctx::attn::avx512 {
bool tile_forward(Rows, int64_t, const float*, int64_t, const float*, int64_t, int64_t, int, float, SoftmaxState, float*) {
  return false;
}
bool tile_forward(Rows, int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, int, float, SoftmaxState,
                  float*) {
  return false;
}
}  // namespace longctx::attn::avx512

#endif
