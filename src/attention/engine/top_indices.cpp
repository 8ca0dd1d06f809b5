#include "attention/engine/top_indices.hpp"

#include "core/simd.hpp"

namespace longctx::attn {

namespace {

// Up to this many picks the AVX-512 filter usually leaves at most 16 candidates (below); beyond it
// the candidates overflow more often than not and the bitwise search is faster. Measured on
// normal scores, 8-255 of them: 90 ns against 554 ns for n = 7, 382 against 576 for n = 11.
constexpr int64_t kMaxFiltered = 11;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
bool avx512_ok() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}
int64_t top_indices_avx512(const float* score, int64_t count, int64_t n, int32_t* out, std::vector<uint32_t>& u);
#else
bool avx512_ok() { return false; }
int64_t top_indices_avx512(const float*, int64_t, int64_t, int32_t*, std::vector<uint32_t>&) { return 0; }
#endif

}  // namespace

int64_t top_indices(const float* score, int64_t count, int64_t n, int32_t* out, std::vector<uint32_t>* scratch) {
  if (n <= 0 || count <= n || n > kMaxFiltered || !avx512_ok()) return top_indices_portable(score, count, n, out, scratch);
  std::vector<uint32_t> local;
  const int64_t written = top_indices_avx512(score, count, n, out, scratch ? *scratch : local);
  return written >= 0 ? written : top_indices_portable(score, count, n, out, scratch);
}

LONGCTX_SIMD_CLONES  // the counts vectorise
int64_t top_indices_portable(const float* score, int64_t count, int64_t n, int32_t* out,
                             std::vector<uint32_t>* scratch) {
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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#include <algorithm>

// Only the code below is compiled for AVX-512 (after every include), and it runs only when the CPU
// reports AVX-512 F.
#pragma GCC push_options
#pragma GCC target("avx512f")
// GCC 12 flags the intrinsics' own _mm512_undefined_epi32() pass-through operands (false positives).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace longctx::attn {
namespace {

// Rank of each lane: how many of the first `lanes` lanes beat it (a higher key, or an equal key in
// a later lane), over the 15 rotations of the vector. Lanes past `lanes` must hold key 0.
__m512i ranks(__m512i key, int lanes) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                fifteen = _mm512_set1_epi32(15), one = _mm512_set1_epi32(1);
  __m512i rank = _mm512_setzero_si512();
#pragma GCC unroll 15
  for (int r = 1; r < 16; ++r) {
    // lane i meets lane (i + r) mod 16: a later one, and one of the first `lanes`, for i < lanes - r
    const __m512i k = _mm512_permutexvar_epi32(_mm512_and_si512(_mm512_add_epi32(iota, _mm512_set1_epi32(r)), fifteen), key);
    const __mmask16 beats = _mm512_cmpgt_epu32_mask(k, key) | (_mm512_cmpeq_epi32_mask(k, key) & __mmask16((1u << std::max(lanes - r, 0)) - 1u));
    rank = _mm512_mask_add_epi32(rank, beats, rank, one);
  }
  return rank;
}

// Filter, then rank: t, the n-th highest of the 16 lane maxima, is at most the n-th highest key
// (those n maxima are n distinct keys), so the n best are among the keys >= t, usually few more
// than n. Those candidates, packed in index order, are ranked in one vector. The keys are
// ordered_bits of the scores. Returns -1 (nothing written) when more than 16 are candidates.
int64_t top_indices_avx512(const float* score, int64_t count, int64_t n, int32_t* out, std::vector<uint32_t>& u) {
  const int64_t nv = (count + 15) / 16;
  u.resize(size_t(nv * 16 * 3 + 32));
  uint32_t *key = u.data(), *cand_key = key + nv * 16, *cand_index = cand_key + nv * 16 + 16;
  const auto lanes = [&](int64_t v) { return __mmask16(v + 1 < nv ? 0xffffu : (1u << (count - v * 16)) - 1u); };
  const __m512i sign = _mm512_set1_epi32(int(0x80000000u)), magnitude = _mm512_set1_epi32(0x7fffffff),
                iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i lane_max = _mm512_setzero_si512();
  for (int64_t v = 0; v < nv; ++v) {  // ordered_bits, 16 at a time (lanes past count: 0)
    __m512i b = _mm512_maskz_loadu_epi32(lanes(v), score + v * 16);
    b = _mm512_maskz_mov_epi32(_mm512_test_epi32_mask(b, magnitude), b);  // -0 is +0
    b = _mm512_maskz_xor_epi32(lanes(v), b, _mm512_or_si512(_mm512_srai_epi32(b, 31), sign));
    _mm512_storeu_si512(key + v * 16, b);
    lane_max = _mm512_max_epu32(lane_max, b);
  }
  // t: the key of the lane maximum ranked n-th
  const __mmask16 nth = _mm512_cmpeq_epi32_mask(ranks(lane_max, 16), _mm512_set1_epi32(int(n - 1)));
  const __m512i t = _mm512_set1_epi32(int(_mm512_mask_reduce_max_epu32(nth, lane_max)));
  int64_t c = 0;
  for (int64_t v = 0; v < nv; ++v) {
    const __m512i k = _mm512_loadu_si512(key + v * 16);
    const __mmask16 in = _mm512_mask_cmpge_epu32_mask(lanes(v), k, t);
    if (!in) continue;
    if (c + _mm_popcnt_u32(in) > 16) return -1;
    _mm512_storeu_si512(cand_key + c, _mm512_maskz_compress_epi32(in, k));
    _mm512_storeu_si512(cand_index + c, _mm512_maskz_compress_epi32(in, _mm512_add_epi32(iota, _mm512_set1_epi32(int(v * 16)))));
    c += _mm_popcnt_u32(in);
  }
  if (c == n) {  // exactly the n best (often: the n-th lane maximum's column holds nothing else above it)
    std::copy_n(cand_index, n, reinterpret_cast<uint32_t*>(out));
    return n;
  }
  const __mmask16 valid = __mmask16((1u << c) - 1u);
  const __m512i k = _mm512_maskz_loadu_epi32(valid, cand_key), i = _mm512_maskz_loadu_epi32(valid, cand_index);
  const __mmask16 best = _mm512_mask_cmplt_epi32_mask(valid, ranks(k, int(c)), _mm512_set1_epi32(int(n)));
  _mm512_mask_storeu_epi32(out, __mmask16((1u << n) - 1u), _mm512_maskz_compress_epi32(best, i));
  return n;
}

}  // namespace
}  // namespace longctx::attn

#pragma GCC pop_options
#endif
