// The GEMM behind every product in longctx: Goto/BLIS cache blocking (Goto and van de Geijn,
// "Anatomy of High-Performance Matrix Multiplication", ACM TOMS 2008) around an MR x NR
// register-blocked micro-kernel. The fp32 kernel is written with GCC vector extensions, so this
// one source compiles to AVX-512, AVX2+FMA and portable code; the bf16 kernel (vdpbf16ps) lives in
// gemm_avx512bf16.cpp and plugs into the same driver. Included only by the per-ISA .cpp files,
// each built with its own target flags; everything here has internal linkage so those copies
// never merge at link time.
#pragma once
#include <longctx/core/tensor.hpp>

#include <cstdint>
#include <cstring>

#include "core/gemm_isa.hpp"

namespace longctx::gemm::detail {
namespace {

template <int W>
struct VecOf {
  typedef float type __attribute__((vector_size(W * sizeof(float))));
};

inline float round_to_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// dst[c * ld_dst + r] = src[r * ld_src + c] for a 16 x 16 block, in registers: in round s = 1, 2,
// 4, 8, rows r and r + s (r / s even) swap their off-diagonal s-wide blocks, the recursive block
// transpose; each round is one two-input shuffle per row (vpermt2ps on AVX-512).
template <bool Round>
inline void transpose16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  using V = VecOf<16>::type;
  using I = int __attribute__((vector_size(64)));
  V v[16];
  for (int r = 0; r < 16; ++r) std::memcpy(&v[r], src + r * ld_src, sizeof(V));
#pragma GCC unroll 4
  for (int s = 1; s < 16; s *= 2) {
    I lo, hi;  // indices into (a, b): b's lanes are 16..31
    for (int c = 0; c < 16; ++c) {
      const bool first = (c / s) % 2 == 0;
      lo[c] = first ? c : 16 + c - s;
      hi[c] = first ? c + s : 16 + c;
    }
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r)
      if ((r / s) % 2 == 0) {
        const V a = v[r], b = v[r + s];
        v[r] = __builtin_shuffle(a, b, lo);
        v[r + s] = __builtin_shuffle(a, b, hi);
      }
  }
  for (int c = 0; c < 16; ++c) {
    if constexpr (Round)
      for (int r = 0; r < 16; ++r) v[c][r] = round_to_bf16(v[c][r]);
    std::memcpy(dst + c * ld_dst, &v[c], sizeof(V));
  }
}

// Packs rows [0, R) of a panel k-major: out[kk * R + r] = X(r, kk) for kk < kc, where
// X(r, kk) = x[r * rs + kk * cs] for r < rows and 0 past them (zero padding keeps the micro-kernel
// branch-free). One of rs, cs is 1. Round: the values are rounded to bf16 (the bf16 precision on
// machines without vdpbf16ps).
template <int R, bool Round>
void pack_f32(float* out, const float* x, int64_t rs, int64_t cs, int64_t rows, int64_t kc) {
  const auto val = [](float v) { return Round ? round_to_bf16(v) : v; };
  if (rows == R && rs == 1) {  // X(., kk) contiguous: a straight copy per kk
    for (int64_t kk = 0; kk < kc; ++kk)
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) out[kk * R + r] = val(x[kk * cs + r]);
  } else if (rows == R) {  // X(r, .) contiguous: a transpose
    int64_t kk = 0;
    if constexpr (R % 16 == 0)
      for (; kk + 16 <= kc; kk += 16)
        for (int r = 0; r < R; r += 16) transpose16<Round>(x + r * rs + kk, rs, out + kk * R + r, R);
    for (; kk < kc; ++kk)
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) out[kk * R + r] = val(x[r * rs + kk]);
  } else {
    for (int64_t kk = 0; kk < kc; ++kk)
      for (int r = 0; r < R; ++r) out[kk * R + r] = r < rows ? val(x[r * rs + kk * cs]) : 0.0f;
  }
}

inline uint32_t bf16_pair(float lo, float hi) { return uint32_t(f32_to_bf16(lo)) | uint32_t(f32_to_bf16(hi)) << 16; }

// As pack_f32, for vdpbf16ps: k in pairs, out[kp * R + r] = bf16 X(r, 2kp) | bf16 X(r, 2kp+1) << 16
// (an odd kc is padded with a zero).
template <int R>
void pack_bf16_pairs(uint32_t* out, const float* x, int64_t rs, int64_t cs, int64_t rows, int64_t kc) {
  const int64_t pairs = kc / 2;
  int64_t kp = 0;
  if (rows == R && rs == 1) {  // X(., k) contiguous: two source rows interleave
    for (; kp < pairs; ++kp) {
      const float *lo = x + 2 * kp * cs, *hi = lo + cs;
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) out[kp * R + r] = bf16_pair(lo[r], hi[r]);
    }
  } else if (rows == R && R % 16 == 0) {  // X(r, .) contiguous: convert 16 x 16 pairs, then transpose
    alignas(64) uint32_t t[16][16];
    for (; kp + 16 <= pairs; kp += 16)
      for (int r0 = 0; r0 < R; r0 += 16) {
        for (int r = 0; r < 16; ++r) {
          const float* src = x + (r0 + r) * rs + 2 * kp;
          for (int c = 0; c < 16; ++c) t[r][c] = bf16_pair(src[2 * c], src[2 * c + 1]);
        }
        transpose16<false>(reinterpret_cast<const float*>(&t[0][0]), 16, reinterpret_cast<float*>(out + kp * R + r0), R);
      }
  }
  for (; kp < (kc + 1) / 2; ++kp) {
    const int64_t k0 = 2 * kp;
    const bool has_hi = k0 + 1 < kc;
    for (int r = 0; r < R; ++r) {
      const float lo = r < rows ? x[r * rs + k0 * cs] : 0.0f;
      const float hi = r < rows && has_hi ? x[r * rs + (k0 + 1) * cs] : 0.0f;
      out[kp * R + r] = bf16_pair(lo, hi);
    }
  }
}

// A block of `rows` rows of A (X(r, k) = x[r * rs + k * cs], k < kc) as bf16 pairs the bf16 kernel
// broadcasts from, in the layout the source has, so the conversion reads and writes contiguously:
// row-major out[r * ld + kp] (cs == 1, returns ld = pairs) or pair-major out[kp * ld + r]
// (rs == 1, returns ld = padded rows). Rows up to `padded_rows` are zero.
inline int64_t convert_a_bf16(uint32_t* out, const float* x, int64_t rs, int64_t cs, int64_t rows,
                              int64_t padded_rows, int64_t kc) {
  const int64_t pairs = (kc + 1) / 2, even = kc / 2;
  if (cs == 1) {
    for (int64_t r = 0; r < padded_rows; ++r) {
      uint32_t* o = out + r * pairs;
      const float* src = x + r * rs;
      if (r >= rows) {
        for (int64_t kp = 0; kp < pairs; ++kp) o[kp] = 0;
        continue;
      }
      for (int64_t kp = 0; kp < even; ++kp) o[kp] = bf16_pair(src[2 * kp], src[2 * kp + 1]);
      if (pairs > even) o[even] = bf16_pair(src[kc - 1], 0.0f);
    }
    return pairs;
  }
  for (int64_t kp = 0; kp < pairs; ++kp) {
    uint32_t* o = out + kp * padded_rows;
    const float *lo = x + 2 * kp * cs, *hi = lo + cs;
    const bool has_hi = 2 * kp + 1 < kc;
    for (int64_t r = 0; r < rows; ++r) o[r] = bf16_pair(lo[r], has_hi ? hi[r] : 0.0f);
    for (int64_t r = rows; r < padded_rows; ++r) o[r] = 0;
  }
  return padded_rows;
}

// C[mr x nr] = alpha * acc + beta * C (C not read when beta == 0, as in BLAS).
template <int W, int MR, int NV>
inline void store_tile(typename VecOf<W>::type (&acc)[MR][NV], float* c, int64_t ldc, int64_t mr, int64_t nr,
                       float alpha, float beta) {
  using V = typename VecOf<W>::type;
  if (mr == MR && nr == NV * W) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        float* p = c + i * ldc + j * W;
        V r = acc[i][j] * alpha;
        if (beta != 0.0f) {
          V old;
          std::memcpy(&old, p, sizeof old);
          r += old * beta;
        }
        std::memcpy(p, &r, sizeof r);
      }
    return;
  }
  float t[MR][NV * W];
  std::memcpy(t, acc, sizeof t);
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      float& o = c[i * ldc + j];
      o = beta != 0.0f ? alpha * t[i][j] + beta * o : alpha * t[i][j];
    }
}

// fp32 micro-kernel: MR rows x NV vectors of W lanes; per k, NV vector loads of packed B and MR
// broadcasts of packed A feed MR * NV independent FMA chains (enough to hide the FMA latency).
template <int W, int MR_, int NV>
struct KernelF32 {
  static constexpr int MR = MR_, NR = NV * W, k_per_elem = 1;
  using Elem = float;
  template <int R>
  static void pack(float* out, const float* x, int64_t rs, int64_t cs, int64_t rows, int64_t kc, bool bf16) {
    if (bf16)
      pack_f32<R, true>(out, x, rs, cs, rows, kc);
    else
      pack_f32<R, false>(out, x, rs, cs, rows, kc);
  }
  // A element (i, k) at a[i * a_rs + k * a_cs]: a packed panel (a_rs = 1, a_cs = MR) or, for full
  // panels, A itself in place (the kernel broadcasts straight from it: no packing).
  template <bool KContiguous>
  static void tile(int64_t kc, const float* __restrict ap, int64_t a_rs, int64_t a_cs, const float* __restrict bp,
                   float* c, int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta) {
    using V = typename VecOf<W>::type;
    V acc[MR][NV] = {};
    for (int64_t k = 0; k < kc; ++k) {
      V b[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) std::memcpy(&b[j], bp + k * NR + j * W, sizeof(V));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const float a = KContiguous ? ap[i * a_rs + k] : ap[k * a_cs + i];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i][j] += a * b[j];
      }
    }
    store_tile<W, MR, NV>(acc, c, ldc, mr, nr, alpha, beta);
  }
};

// The blocked driver for one thread: loops NC / KC around a packed KC x NC block of B, then for each
// MR-row panel of A (read in place or packed) runs the kernel along the block.
template <class Kernel>
void run_blocked(const Call& g, float* pack_a, float* pack_b) {
  constexpr int MR = Kernel::MR, NR = Kernel::NR, KS = Kernel::k_per_elem;
  using E = typename Kernel::Elem;
  // Panels of A are rows of op(A); panels of B are columns of op(B), i.e. X(j, p) = op(B)(p, j).
  const int64_t a_rs = g.trans_a ? 1 : g.lda, a_cs = g.trans_a ? g.lda : 1;
  const int64_t b_rs = g.trans_b ? g.ldb : 1, b_cs = g.trans_b ? 1 : g.ldb;
  E* const ap = reinterpret_cast<E*>(pack_a);
  E* const bp = reinterpret_cast<E*>(pack_b);
  for (int64_t jc = 0; jc < g.n; jc += kNC) {
    const int64_t nc = g.n - jc < kNC ? g.n - jc : kNC;
    for (int64_t pc = 0; pc < g.k; pc += kKC) {
      const int64_t kc = g.k - pc < kKC ? g.k - pc : kKC, ku = (kc + KS - 1) / KS;
      for (int64_t jr = 0; jr < nc; jr += NR)
        Kernel::template pack<NR>(bp + jr * ku, g.b + (jc + jr) * b_rs + pc * b_cs, b_rs, b_cs,
                                  nc - jr < NR ? nc - jr : NR, kc, g.bf16);
      const float beta = pc == 0 ? g.beta : 1.0f;
      if constexpr (KS == 2) {  // bf16 pairs: convert kMC rows of A at a time, then broadcast from them
        for (int64_t ic = 0; ic < g.m; ic += kMC) {
          const int64_t mc = g.m - ic < kMC ? g.m - ic : kMC, padded = (mc + MR - 1) / MR * MR;
          const int64_t ld = convert_a_bf16(ap, g.a + ic * a_rs + pc * a_cs, a_rs, a_cs, mc, padded, kc);
          for (int64_t ir = 0; ir < mc; ir += MR)
            for (int64_t jr = 0; jr < nc; jr += NR) {
              float* c = g.c + (ic + ir) * g.ldc + jc + jr;
              const int64_t mr = mc - ir < MR ? mc - ir : MR, nr = nc - jr < NR ? nc - jr : NR;
              if (a_cs == 1)
                Kernel::template tile<true>(ku, ap + ir * ld, ld, 1, bp + jr * ku, c, g.ldc, mr, nr, g.alpha, beta);
              else
                Kernel::template tile<false>(ku, ap + ir, 1, ld, bp + jr * ku, c, g.ldc, mr, nr, g.alpha, beta);
            }
        }
        continue;
      }
      for (int64_t ir = 0; ir < g.m; ir += MR) {
        const int64_t mr = g.m - ir < MR ? g.m - ir : MR;
        const float* a = g.a + ir * a_rs + pc * a_cs;
        float* c = g.c + ir * g.ldc + jc;
        if (mr == MR && !g.bf16) {
          for (int64_t jr = 0; jr < nc; jr += NR)
            if (a_cs == 1)
              Kernel::template tile<true>(kc, reinterpret_cast<const E*>(a), a_rs, 1, bp + jr * ku, c + jr, g.ldc,
                                          mr, nc - jr < NR ? nc - jr : NR, g.alpha, beta);
            else
              Kernel::template tile<false>(kc, reinterpret_cast<const E*>(a), 1, a_cs, bp + jr * ku, c + jr, g.ldc,
                                           mr, nc - jr < NR ? nc - jr : NR, g.alpha, beta);
          continue;
        }
        Kernel::template pack<MR>(ap, a, a_rs, a_cs, mr, kc, g.bf16);
        for (int64_t jr = 0; jr < nc; jr += NR)
          Kernel::template tile<false>(ku, ap, 1, MR, bp + jr * ku, c + jr, g.ldc, mr, nc - jr < NR ? nc - jr : NR,
                                       g.alpha, beta);
      }
    }
  }
}

}  // namespace
}  // namespace longctx::gemm::detail
