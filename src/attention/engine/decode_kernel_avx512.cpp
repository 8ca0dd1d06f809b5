#include "attention/engine/decode_kernel_avx512.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

// Only the code below is compiled for AVX-512 (after every include, so no inline library code is
// built for it), and it runs only when the CPU reports AVX-512 F+BW (int8 rows: and VNNI).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma")
// GCC 12 flags the intrinsics' own _mm512_undefined_epi32() / _ps() pass-through operands (false
// positives).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace longctx::attn::avx512 {

namespace {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
// bf16 -> fp32 is a 16-bit left shift of the widened word.
inline __m512 load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// a + b of fp32 lanes, or of int32 lanes held in the same registers.
template <bool kInt>
inline __m512 add(__m512 a, __m512 b) {
  if constexpr (kInt) return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  return _mm512_add_ps(a, b);
}

// Lane j of the result = sum of the 16 lanes of v[j]: a transpose-and-add tree (15 vertical adds
// of shuffled pairs) instead of 16 horizontal reductions. kInt: the lanes are int32 (exact sums).
template <bool kInt>
inline __m512 reduce16(const float* part) {
  __m512 w[8], x[4], y[2];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = _mm512_load_ps(part + 32 * i), b = _mm512_load_ps(part + 32 * i + 16);
    w[i] = add<kInt>(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // per 128-bit lane: a b a b
  }
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: v0 v1 v2 v3 of the four
    x[i] = add<kInt>(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44), _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)  // 128-bit lanes: first four (two halves), next four (two halves)
    y[i] = add<kInt>(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x88),
                     _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xDD));
  return add<kInt>(_mm512_shuffle_f32x4(y[0], y[1], 0x88), _mm512_shuffle_f32x4(y[0], y[1], 0xDD));
}

// The query rows as the score loop reads them: fp32, and for int8 keys also as int16 with one
// scale per row (q ~ q16 * qs: int8 keys then take integer dot products, vpdpwssd).
struct Queries {
  Rows q;
  const int16_t* q16 = nullptr;  // [rows, d]
  const float* qs = nullptr;     // [rows]
};

// Symmetric int16 of x[0, n) (times mul[0, n) if given): returns the scale max |x| / 32767 and
// writes out[i] = x[i] / scale rounded to nearest; 0 for a zero row, NaN for a non-finite one.
inline float quantize_int16(const float* x, int64_t n, int16_t* out, const float* mul = nullptr) {
  auto load = [&](int64_t i) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    const __m512 a = _mm512_maskz_loadu_ps(m, x + i);
    return mul ? _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, mul + i)) : a;
  };
  __m512 amax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 a = load(i);
    bad |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(_mm512_abs_ps(a), _mm512_set1_ps(INFINITY), _CMP_EQ_OQ);
    amax = _mm512_max_ps(amax, _mm512_abs_ps(a));
  }
  const float m = _mm512_reduce_max_ps(amax);
  if (bad || m == 0.0f) {
    std::fill_n(out, n, int16_t(0));
    return bad ? std::nanf("") : 0.0f;
  }
  const __m512 inv = _mm512_set1_ps(32767.0f / m);
  for (int64_t i = 0; i < n; i += 16) {  // round to nearest, saturate to int16
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    _mm512_mask_cvtsepi32_storeu_epi16(out + i, k, _mm512_cvtps_epi32(_mm512_mul_ps(load(i), inv)));
  }
  return m / 32767.0f;
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
// int8 keys: the DV / 2 vectors of 32 int16 of a key times the int16 query, summed in int32
// (vpdpwssd: exact), then scaled once per 16 keys by the keys' scales times the row's query scale.
template <int DV, class E>
void scores(const Queries& qr, int rows, KvRows<E> k, KvRows<E> v, int64_t n, float* s) {
  constexpr bool kInt8 = std::is_same_v<E, int8_t>;
  alignas(64) float part[8 * 16 * 16];
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int cnt = n - j0 < 16 ? int(n - j0) : 16;
    for (int jj = 0; jj < 16; ++jj) {
      if (jj >= cnt) {
        for (int e = 0; e < rows; ++e) _mm512_store_ps(part + (e * 16 + jj) * 16, _mm512_setzero_ps());
        continue;
      }
      const E* kj = k.row(j0 + jj);
      prefetch_row<DV>(kj + kPrefetchRows * k.ld, _MM_HINT_T0);  // keys ahead, and this key's value row for
      prefetch_row<DV>(v.row(j0 + jj), _MM_HINT_T1);             // the V pass: many misses in flight
      if constexpr (kInt8) {
        __m512i kr[DV / 2];
        for (int c = 0; c < DV / 2; ++c)
          kr[c] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kj + 32 * c)));
        for (int e = 0; e < rows; ++e) {
          const int16_t* qe = qr.q16 + e * DV * 16;
          __m512i a = _mm512_setzero_si512();
          for (int c = 0; c < DV / 2; ++c) a = _mm512_dpwssd_epi32(a, _mm512_loadu_si512(qe + 32 * c), kr[c]);
          _mm512_store_ps(part + (e * 16 + jj) * 16, _mm512_castsi512_ps(a));
        }
      } else {
        __m512 kr[DV];
        for (int c = 0; c < DV; ++c) kr[c] = load16(kj + 16 * c);
        for (int e = 0; e < rows; ++e) {
          const float* qe = qr.q.row(e);
          __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(qe), kr[0]), a1 = _mm512_setzero_ps();
          for (int c = 1; c < DV; ++c)
            if (c % 2) a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qe + 16 * c), kr[c], a1);
            else a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qe + 16 * c), kr[c], a0);
          _mm512_store_ps(part + (e * 16 + jj) * 16, _mm512_add_ps(a0, a1));
        }
      }
    }
    const __mmask16 m = __mmask16((1u << cnt) - 1u);
    for (int e = 0; e < rows; ++e) {
      __m512 r = reduce16<kInt8>(part + e * 256);
      if constexpr (kInt8)
        r = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_castps_si512(r)),
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(m, k.scale + j0), _mm512_set1_ps(qr.qs[e])));
      _mm512_mask_storeu_ps(s + e * n + j0, m, r);
    }
  }
}

// acc_e[c0, c0 + 16 CV) += sum_j p[e * n + j] v_j[c0, c0 + 16 CV): R x CV accumulators in registers.
template <int R, int CV, class E>
void accumulate(const float* p, KvRows<E> v, int64_t n, int c0, float* acc, int64_t ld_acc) {
  __m512 a[R][CV];
  for (int e = 0; e < R; ++e)
    for (int c = 0; c < CV; ++c) a[e][c] = _mm512_loadu_ps(acc + e * ld_acc + c0 + 16 * c);
  for (int64_t j = 0; j < n; ++j) {
    __m512 x[CV];
    for (int c = 0; c < CV; ++c) x[c] = load16(v.row(j) + c0 + 16 * c);
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
void accumulate_rows(const float* p, KvRows<E> v, int64_t n, int d, float* acc, int64_t ld_acc) {
  constexpr int CV = R <= 2 ? 8 : (R <= 4 ? 4 : 2);
  int c0 = 0;
  for (; c0 + 16 * CV <= d; c0 += 16 * CV) accumulate<R, CV>(p, v, n, c0, acc, ld_acc);
  for (; c0 < d; c0 += 16) accumulate<R, 1>(p, v, n, c0, acc, ld_acc);
}

// acc_e[c0, c0 + 32 CV) += sum_j w_ej v_j for int8 value rows, in integers: row e's weights
// w_ej (int16, scale ws[e]: accumulate_rows_int8), two value rows j, j + 1 interleaved byte by byte
// and widened to int16 pairs, vpdpwssd adds w_j v_j + w_j+1 v_j+1 into int32 lanes (exact: 256 keys
// of 32767 * 127 fit); the int32 sums, times ws[e], go into acc once per call. Bytes interleaved
// within 128-bit lanes leave lanes 0-7 / 8-15 of the two halves holding channels 0-7, 16-23 /
// 8-15, 24-31 of each 32, put back in order at the end.
template <int R, int CV>
void accumulate_int8(const int16_t* w, int64_t ldw, const float* ws, KvRows<int8_t> v, int64_t n, int c0, float* acc,
                     int64_t ld_acc) {
  __m512i a[R][2 * CV];
  for (int e = 0; e < R; ++e)
    for (int c = 0; c < 2 * CV; ++c) a[e][c] = _mm512_setzero_si512();
  for (int64_t j = 0; j < n; j += 2) {
    const int8_t *v0 = v.row(j) + c0, *v1 = j + 1 < n ? v.row(j + 1) + c0 : v0;  // an odd last key pairs with weight 0
    __m512i x[2 * CV];
    for (int c = 0; c < CV; ++c) {
      const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v0 + 32 * c));
      const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v1 + 32 * c));
      x[2 * c] = _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(r0, r1));
      x[2 * c + 1] = _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(r0, r1));
    }
    for (int e = 0; e < R; ++e) {
      int32_t pair;
      std::memcpy(&pair, w + e * ldw + j, sizeof pair);
      const __m512i wp = _mm512_set1_epi32(pair);
      for (int c = 0; c < 2 * CV; ++c) a[e][c] = _mm512_dpwssd_epi32(a[e][c], wp, x[c]);
    }
  }
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int e = 0; e < R; ++e) {
    const __m512 scale = _mm512_set1_ps(ws[e]);
    for (int c = 0; c < CV; ++c) {
      float* out = acc + e * ld_acc + c0 + 32 * c;
      const __m512i lo = a[e][2 * c], hi = a[e][2 * c + 1];
      _mm512_storeu_ps(out, _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(_mm512_permutex2var_epi32(lo, first, hi)),
                                            _mm512_loadu_ps(out)));
      _mm512_storeu_ps(out + 16, _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(_mm512_permutex2var_epi32(lo, second, hi)),
                                                 _mm512_loadu_ps(out + 16)));
    }
  }
}

// acc_e[0, d) += sum_j p[e * n + j] v_j for int8 value rows: per tile of kKeyTile keys, the
// weights p * (value scale) are rounded to int16 per row (quantize_int16), then accumulate_int8.
template <int R>
void accumulate_rows_int8(const float* p, KvRows<int8_t> v, int64_t n, int d, float* acc, int64_t ld_acc) {
  constexpr int CV = R <= 2 ? 4 : (R <= 4 ? 2 : 1);
  alignas(64) int16_t w[R][kKeyTile + 32];
  float ws[R];
  for (int64_t j0 = 0; j0 < n; j0 += kKeyTile) {  // int32 sums of at most kKeyTile keys
    const int64_t m = std::min(kKeyTile, n - j0);
    for (int e = 0; e < R; ++e) {
      ws[e] = quantize_int16(p + e * n + j0, m, w[e], v.scale + j0);
      w[e][m] = 0;
    }
    const KvRows<int8_t> vt{v.row(j0), v.ld, v.scale + j0};
    int c0 = 0;
    for (; c0 + 32 * CV <= d; c0 += 32 * CV) accumulate_int8<R, CV>(w[0], kKeyTile + 32, ws, vt, m, c0, acc, ld_acc);
    for (; c0 < d; c0 += 32) accumulate_int8<R, 1>(w[0], kKeyTile + 32, ws, vt, m, c0, acc, ld_acc);
  }
}

template <int R, class E>
void accumulate_r(const float* p, KvRows<E> v, int64_t n, int d, float* acc, int64_t ld_acc) {
  if constexpr (std::is_same_v<E, int8_t>) accumulate_rows_int8<R>(p, v, n, d, acc, ld_acc);
  else accumulate_rows<R>(p, v, n, d, acc, ld_acc);
}

template <class E>
void accumulate_any(int rows, const float* p, KvRows<E> v, int64_t n, int d, float* acc, int64_t ld_acc) {
  switch (rows) {
    case 1: return accumulate_r<1>(p, v, n, d, acc, ld_acc);
    case 2: return accumulate_r<2>(p, v, n, d, acc, ld_acc);
    case 3: return accumulate_r<3>(p, v, n, d, acc, ld_acc);
    case 4: return accumulate_r<4>(p, v, n, d, acc, ld_acc);
    case 5: return accumulate_r<5>(p, v, n, d, acc, ld_acc);
    case 6: return accumulate_r<6>(p, v, n, d, acc, ld_acc);
    case 7: return accumulate_r<7>(p, v, n, d, acc, ld_acc);
    default: return accumulate_r<8>(p, v, n, d, acc, ld_acc);
  }
}

template <class E>
void scores_any(int dv, const Queries& q, int rows, KvRows<E> k, KvRows<E> v, int64_t n, float* s) {
  switch (dv) {
    case 2: return scores<2>(q, rows, k, v, n, s);
    case 4: return scores<4>(q, rows, k, v, n, s);
    case 6: return scores<6>(q, rows, k, v, n, s);
    case 8: return scores<8>(q, rows, k, v, n, s);
    case 12: return scores<12>(q, rows, k, v, n, s);
    case 16: return scores<16>(q, rows, k, v, n, s);
    default:
      if constexpr (!std::is_same_v<E, int8_t>) return scores<1>(q, rows, k, v, n, s);  // d = 16
  }
}

bool cpu_ok() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return ok;
}

// int8 keys also need AVX-512 VNNI (vpdpwssd) and whole 32-element int16 vectors (d % 32 == 0).
template <class E>
bool d_ok(int d) {
  const int dv = d / 16;
  if (std::is_same_v<E, int8_t>) {
    static const bool vnni = __builtin_cpu_supports("avx512vnni");
    if (!vnni || dv % 2) return false;
  }
  return d % 16 == 0 && (dv == 1 || dv == 2 || dv == 4 || dv == 6 || dv == 8 || dv == 12 || dv == 16);
}

// Query rows [r0, r0 + r) as the score loop takes them; for int8 keys quantised into q16 / qs
// (room for 8 rows of d <= 256).
template <class E>
Queries queries_of(Rows q, int64_t r0, int r, int d, int16_t* q16, float* qs) {
  if constexpr (std::is_same_v<E, int8_t>)
    for (int e = 0; e < r; ++e) qs[e] = quantize_int16(q.row(r0 + e), d, q16 + e * d);
  return Queries{Rows{q.row(r0), q.ld}, q16, qs};
}

// Rows in groups of 8: scores of the group, the shared online-softmax step per row, then V.
template <class E>
bool forward(Rows q, int64_t rows, KvRows<E> k, KvRows<E> v, int64_t n, int d, float scale, SoftmaxState st,
             float* s) {
  if (!cpu_ok() || !d_ok<E>(d)) return false;
  alignas(64) int16_t q16[8 * 256];
  float qs[8];
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int r = rows - r0 < 8 ? int(rows - r0) : 8;
    scores_any(d / 16, queries_of<E>(q, r0, r, d, q16, qs), r, k, v, n, s);
    const SoftmaxState sub{st.m + r0, st.l + r0, st.acc + r0 * st.ld_acc, st.ld_acc};
    for (int e = 0; e < r; ++e) fold_scores(sub, e, s + e * n, n, scale, d);
    accumulate_any(r, s, v, n, d, sub.acc, sub.ld_acc);
  }
  return true;
}

template <class E>
bool score_rows(Rows q, int64_t rows, KvRows<E> k, int64_t n, int d, float* s) {
  if (!cpu_ok() || !d_ok<E>(d)) return false;
  alignas(64) int16_t q16[8 * 256];
  float qs[8];
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const int r = rows - r0 < 8 ? int(rows - r0) : 8;
    scores_any(d / 16, queries_of<E>(q, r0, r, d, q16, qs), r, k, k, n, s + r0 * n);
  }
  return true;
}

}  // namespace

bool tile_forward(Rows q, int64_t rows, KvRows<float> k, KvRows<float> v, int64_t n, int d, float scale,
                  SoftmaxState st, float* s) {
  return forward(q, rows, k, v, n, d, scale, st, s);
}
bool tile_forward(Rows q, int64_t rows, KvRows<uint16_t> k, KvRows<uint16_t> v, int64_t n, int d, float scale,
                  SoftmaxState st, float* s) {
  return forward(q, rows, k, v, n, d, scale, st, s);
}
bool tile_forward(Rows q, int64_t rows, KvRows<int8_t> k, KvRows<int8_t> v, int64_t n, int d, float scale,
                  SoftmaxState st, float* s) {
  return forward(q, rows, k, v, n, d, scale, st, s);
}
bool scores(Rows q, int64_t rows, KvRows<float> k, int64_t n, int d, float* s) { return score_rows(q, rows, k, n, d, s); }
bool scores(Rows q, int64_t rows, KvRows<uint16_t> k, int64_t n, int d, float* s) {
  return score_rows(q, rows, k, n, d, s);
}
bool scores(Rows q, int64_t rows, KvRows<int8_t> k, int64_t n, int d, float* s) { return score_rows(q, rows, k, n, d, s); }

}  // namespace longctx::attn::avx512

#pragma GCC pop_options

#else  // not GCC on x86-64: always the portable loops

namespace longctx::attn::avx512 {
bool tile_forward(Rows, int64_t, KvRows<float>, KvRows<float>, int64_t, int, float, SoftmaxState, float*) { return false; }
bool tile_forward(Rows, int64_t, KvRows<uint16_t>, KvRows<uint16_t>, int64_t, int, float, SoftmaxState, float*) {
  return false;
}
bool tile_forward(Rows, int64_t, KvRows<int8_t>, KvRows<int8_t>, int64_t, int, float, SoftmaxState, float*) {
  return false;
}
bool scores(Rows, int64_t, KvRows<float>, int64_t, int, float*) { return false; }
bool scores(Rows, int64_t, KvRows<uint16_t>, int64_t, int, float*) { return false; }
bool scores(Rows, int64_t, KvRows<int8_t>, int64_t, int, float*) { return false; }
}  // namespace longctx::attn::avx512

#endif
