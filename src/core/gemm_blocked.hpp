// The GEMM behind every product in longctx: Goto/BLIS cache blocking (Goto and van de Geijn,
// "Anatomy of High-Performance Matrix Multiplication", ACM TOMS 2008) around an MR x NR
// register-blocked micro-kernel. The fp32 kernel is written with GCC vector extensions, so this
// one source compiles to AVX-512, AVX2+FMA and portable code; the bf16 kernel (vdpbf16ps) lives in
// gemm_avx512bf16.cpp and plugs into the same driver. Operands are fp32 or bf16 as stored (S =
// float or uint16_t below). Included only by the per-ISA .cpp files, each built with its own
// target flags; everything here has internal linkage so those copies never merge at link time.
#pragma once
#include <longctx/core/tensor.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/gemm_isa.hpp"

namespace longctx::gemm::detail {
namespace {

template <int W>
struct VecOf {
  typedef float type __attribute__((vector_size(W * sizeof(float))));
};

// A bf16 pair (k even in the low half, k odd in the high half), as vdpbf16ps reads it. A bf16 A is
// read in place as pairs of its uint16_t storage: these files build with -fno-strict-aliasing.
typedef uint32_t pair_t;

inline float widen(float x) { return x; }
inline float widen(uint16_t b) { return bf16_to_f32(b); }
inline uint32_t bf16_bits(float x) { return f32_to_bf16(x); }
inline uint32_t bf16_bits(uint16_t b) { return b; }
inline float round_to_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }
template <class S>
inline uint32_t bf16_pair(S lo, S hi) {
  return bf16_bits(lo) | bf16_bits(hi) << 16;
}

// Shuffle indices of transpose16's four rounds (s = 1, 2, 4, 8) into the lanes of (a, b), b's
// lanes being 16..31: row r keeps its own lanes where (c / s) is even and takes b's lanes c - s
// elsewhere (kTransposeLo); row r + s the mirror (kTransposeHi).
constexpr std::array<std::array<int, 16>, 4> transpose_indices(bool hi) {
  std::array<std::array<int, 16>, 4> idx{};
  for (int round = 0, s = 1; round < 4; ++round, s *= 2)
    for (int c = 0; c < 16; ++c) {
      const bool first = (c / s) % 2 == 0;
      idx[size_t(round)][size_t(c)] = hi ? (first ? c + s : 16 + c) : (first ? c : 16 + c - s);
    }
  return idx;
}
alignas(64) constexpr std::array<std::array<int, 16>, 4> kTransposeLo = transpose_indices(false),
                                                         kTransposeHi = transpose_indices(true);

// dst[c * ld_dst + r] = src[r * ld_src + c] for a 16 x 16 block of 32-bit values, in registers: in
// round s = 1, 2, 4, 8, rows r and r + s (r / s even) swap their off-diagonal s-wide blocks, the
// recursive block transpose; each round is one two-input shuffle per row (vpermt2ps on AVX-512).
template <bool Round>
inline void transpose16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  using V = VecOf<16>::type;
  using I = int __attribute__((vector_size(64)));
  V v[16];
  for (int r = 0; r < 16; ++r) std::memcpy(&v[r], src + r * ld_src, sizeof(V));
#pragma GCC unroll 4
  for (int round = 0; round < 4; ++round) {
    const int s = 1 << round;
    I lo, hi;
    std::memcpy(&lo, kTransposeLo[size_t(round)].data(), sizeof lo);
    std::memcpy(&hi, kTransposeHi[size_t(round)].data(), sizeof hi);
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
template <int R, bool Round, class S>
void pack_f32(float* out, const S* x, int64_t rs, int64_t cs, int64_t rows, int64_t kc) {
  const auto val = [](S v) { return Round ? round_to_bf16(widen(v)) : widen(v); };
  if (rows == R && rs == 1) {  // X(., kk) contiguous: a straight copy per kk
    for (int64_t kk = 0; kk < kc; ++kk)
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) out[kk * R + r] = val(x[kk * cs + r]);
    return;
  }
  if (rows == R) {  // X(r, .) contiguous: a transpose
    int64_t kk = 0;
    if constexpr (R % 16 == 0 && std::is_same_v<S, float>)
      for (; kk + 16 <= kc; kk += 16)
        for (int r = 0; r < R; r += 16) transpose16<Round>(x + r * rs + kk, rs, out + kk * R + r, R);
    for (; kk < kc; ++kk)
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) out[kk * R + r] = val(x[r * rs + kk]);
    return;
  }
  for (int64_t kk = 0; kk < kc; ++kk)
    for (int r = 0; r < R; ++r) out[kk * R + r] = r < rows ? val(x[r * rs + kk * cs]) : 0.0f;
}

// As pack_f32, for vdpbf16ps: k in pairs, out[kp * R + r] = bf16 X(r, 2kp) | bf16 X(r, 2kp+1) << 16
// (an odd kc is padded with a zero).
template <int R, class S>
void pack_bf16_pairs(pair_t* out, const S* x, int64_t rs, int64_t cs, int64_t rows, int64_t kc) {
  const int64_t pairs = kc / 2;
  int64_t kp = 0;
  if (rows == R && rs == 1) {  // X(., k) contiguous: two source rows interleave
    for (; kp < pairs; ++kp) {
      const S *lo = x + 2 * kp * cs, *hi = lo + cs;
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) out[kp * R + r] = bf16_pair(lo[r], hi[r]);
    }
  } else if (rows == R && R % 16 == 0) {  // X(r, .) contiguous: 16 x 16 pairs at a time, transposed
    alignas(64) pair_t t[16][16];
    for (; kp + 16 <= pairs; kp += 16)
      for (int r0 = 0; r0 < R; r0 += 16) {
        for (int r = 0; r < 16; ++r) {
          const S* src = x + (r0 + r) * rs + 2 * kp;
          for (int c = 0; c < 16; ++c) t[r][c] = bf16_pair(src[2 * c], src[2 * c + 1]);
        }
        transpose16<false>(reinterpret_cast<const float*>(&t[0][0]), 16, reinterpret_cast<float*>(out + kp * R + r0),
                           R);
      }
  }
  for (; kp < (kc + 1) / 2; ++kp) {
    const int64_t k0 = 2 * kp;
    const bool has_hi = k0 + 1 < kc;
    for (int r = 0; r < R; ++r) {
      const S zero{};
      const S lo = r < rows ? x[r * rs + k0 * cs] : zero;
      const S hi = r < rows && has_hi ? x[r * rs + (k0 + 1) * cs] : zero;
      out[kp * R + r] = bf16_pair(lo, hi);
    }
  }
}

// `rows` rows of A (X(r, k) = x[r * rs + k * cs], k < kc) as bf16 pairs the bf16 kernel
// broadcasts from, in the layout the source has, so the conversion reads and writes contiguously:
// row-major out[r * ld + kp] (cs == 1, returns ld = pairs) or pair-major out[kp * ld + r]
// (rs == 1, returns ld = padded rows). Rows up to `padded_rows` are zero.
template <class S>
int64_t convert_a_bf16(pair_t* out, const S* x, int64_t rs, int64_t cs, int64_t rows, int64_t padded_rows, int64_t kc) {
  const int64_t pairs = (kc + 1) / 2, even = kc / 2;
  const S zero{};
  if (cs == 1) {
    for (int64_t r = 0; r < padded_rows; ++r) {
      pair_t* o = out + r * pairs;
      const S* src = x + r * rs;
      if (r >= rows) {
        for (int64_t kp = 0; kp < pairs; ++kp) o[kp] = 0;
        continue;
      }
      for (int64_t kp = 0; kp < even; ++kp) o[kp] = bf16_pair(src[2 * kp], src[2 * kp + 1]);
      if (pairs > even) o[even] = bf16_pair(src[kc - 1], zero);
    }
    return pairs;
  }
  for (int64_t kp = 0; kp < pairs; ++kp) {
    pair_t* o = out + kp * padded_rows;
    const S *lo = x + 2 * kp * cs, *hi = lo + cs;
    if (2 * kp + 1 < kc)
      for (int64_t r = 0; r < rows; ++r) o[r] = bf16_pair(lo[r], hi[r]);
    else
      for (int64_t r = 0; r < rows; ++r) o[r] = bf16_pair(lo[r], zero);
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
// broadcasts of A feed MR * NV independent FMA chains (enough to hide the FMA latency).
template <int W, int MR_, int NV>
struct KernelF32 {
  static constexpr int MR = MR_, NR = NV * W, k_per_elem = 1;
  using Elem = float;
  template <int R, class S>
  static void pack(float* out, const S* x, int64_t rs, int64_t cs, int64_t rows, int64_t kc, bool bf16) {
    if (bf16)
      pack_f32<R, true>(out, x, rs, cs, rows, kc);
    else
      pack_f32<R, false>(out, x, rs, cs, rows, kc);
  }
  // A element (i, k) at a[i * a_rs + k * a_cs]: a packed panel (a_rs = 1, a_cs = MR) or, for full
  // panels of fp32 A, A itself in place (the kernel broadcasts straight from it: no packing).
  template <bool KContiguous>
  static void tile(int64_t kc, const float* __restrict ap, int64_t a_rs, int64_t a_cs, const float* __restrict bp,
                   float* c, int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta) {
    if constexpr (KContiguous)
      tile_at(kc, [&](int i, int64_t k) { return ap[i * a_rs + k]; }, bp, c, ldc, mr, nr, alpha, beta);
    else
      tile_at(kc, [&](int i, int64_t k) { return ap[k * a_cs + i]; }, bp, c, ldc, mr, nr, alpha, beta);
  }
  // A's MR rows in place, each at its own address (Operand::rows).
  static void tile_rows(int64_t kc, const float* const* rows, const float* __restrict bp, float* c, int64_t ldc,
                        int64_t mr, int64_t nr, float alpha, float beta) {
    const float* __restrict r[MR];
    for (int i = 0; i < MR; ++i) r[i] = rows[i];
    tile_at(kc, [&](int i, int64_t k) { return r[i][k]; }, bp, c, ldc, mr, nr, alpha, beta);
  }

 private:
  // The kernel, A(i, k) read through a_at. A short last panel (nr < NR) runs only the U vectors
  // of W columns it needs (its packed rows keep the stride NR).
  template <class AAt, int U = NV>
  [[gnu::always_inline]] static inline void tile_at(int64_t kc, AAt a_at, const float* __restrict bp, float* c,
                                                    int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta) {
    if constexpr (U > 1)
      if (nr <= (U - 1) * W) return tile_at<AAt, U - 1>(kc, a_at, bp, c, ldc, mr, nr, alpha, beta);
    using V = typename VecOf<W>::type;
    V acc[MR][U] = {};
    for (int64_t k = 0; k < kc; ++k) {
      V b[U];
#pragma GCC unroll 8
      for (int j = 0; j < U; ++j) std::memcpy(&b[j], bp + k * NR + j * W, sizeof(V));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const float a = a_at(i, k);
#pragma GCC unroll 8
        for (int j = 0; j < U; ++j) acc[i][j] += a * b[j];
      }
    }
    store_tile<W, MR, U>(acc, c, ldc, mr, nr, alpha, beta);
  }
};

// Packed elements: fp32 values, or bf16 pairs for vdpbf16ps.
template <class Kernel>
using PackedElem = std::conditional_t<Kernel::k_per_elem == 2, pair_t, float>;

// The driver's NC x KC blocks of op(B) in its loop order: body(jc, nc, pc, kc, at), `at` the
// block's offset (in packed elements) in B packed whole, each block being whole panels of NR
// columns (Call::packed_b). Returns the size of B packed whole.
template <class Kernel, class Body>
int64_t for_each_b_block(const Call& g, Body&& body) {
  constexpr int64_t NR = Kernel::NR, KS = Kernel::k_per_elem;
  int64_t at = 0;
  for (int64_t jc = 0; jc < g.n; jc += kNC) {
    const int64_t nc = g.n - jc < kNC ? g.n - jc : kNC;
    for (int64_t pc = 0; pc < g.k; pc += kKC) {
      const int64_t kc = g.k - pc < kKC ? g.k - pc : kKC;
      body(jc, nc, pc, kc, at);
      at += (nc + NR - 1) / NR * NR * ((kc + KS - 1) / KS);
    }
  }
  return at;
}

// Packs block (jc, pc) of op(B) panel by panel into bp: panel jr at bp + jr * ku.
template <class Kernel, class SB>
void pack_b_block(const Call& g, const SB* B, int64_t jc, int64_t nc, int64_t pc, int64_t kc, PackedElem<Kernel>* bp) {
  constexpr int NR = Kernel::NR, KS = Kernel::k_per_elem;
  // Panels of B are columns of op(B), i.e. X(j, p) = op(B)(p, j).
  const int64_t b_rs = g.b.trans ? g.b.ld : 1, b_cs = g.b.trans ? 1 : g.b.ld, ku = (kc + KS - 1) / KS;
  for (int64_t jr = 0; jr < nc; jr += NR)
    Kernel::template pack<NR>(bp + jr * ku, B + (jc + jr) * b_rs + pc * b_cs, b_rs, b_cs, nc - jr < NR ? nc - jr : NR,
                              kc, g.bf16);
}

// All of op(B) packed into `out` (Kernels::pack_b); returns its size in floats.
template <class Kernel, class SB>
int64_t pack_b_whole(const Call& g, const SB* B, float* out) {
  return for_each_b_block<Kernel>(g, [&](int64_t jc, int64_t nc, int64_t pc, int64_t kc, int64_t at) {
    if (out) pack_b_block<Kernel>(g, B, jc, nc, pc, kc, reinterpret_cast<PackedElem<Kernel>*>(out) + at);
  });
}

// The blocked driver for one thread, A and B stored as SA / SB: loops NC / KC around a packed
// KC x NC block of B (packed here, or read from Call::packed_b), then for each MR-row panel of A
// (read in place, packed or converted to bf16 pairs) runs the kernel along the block.
template <class Kernel, class SA, class SB>
void run_blocked(const Call& g, const SA* A, const SB* B, float* pack_a, float* pack_b) {
  constexpr int MR = Kernel::MR, NR = Kernel::NR, KS = Kernel::k_per_elem;
  using E = PackedElem<Kernel>;
  // Panels of A are rows of op(A).
  const int64_t a_rs = g.a.trans ? 1 : g.a.ld, a_cs = g.a.trans ? g.a.ld : 1;
  E* const ap = reinterpret_cast<E*>(pack_a);
  // A packed B may be larger than the call's: its blocks are laid out for packed_n x packed_k, and
  // the call takes the first n columns and k rows of each.
  Call layout = g;
  if (g.packed_b) layout.n = g.packed_n, layout.k = g.packed_k;
  for_each_b_block<Kernel>(layout, [&](int64_t jc, int64_t block_nc, int64_t pc, int64_t block_kc, int64_t at) {
    if (jc >= g.n || pc >= g.k) return;
    const int64_t nc = g.n - jc < block_nc ? g.n - jc : block_nc, kc = g.k - pc < block_kc ? g.k - pc : block_kc;
    // ku: packed elements the kernel runs over; panel: the stride between the block's panels
    const int64_t ku = (kc + KS - 1) / KS, panel = (block_kc + KS - 1) / KS;
    const E* bp = reinterpret_cast<const E*>(g.packed_b) + at;
    if (!g.packed_b) {
      pack_b_block<Kernel>(g, B, jc, nc, pc, kc, reinterpret_cast<E*>(pack_b));
      bp = reinterpret_cast<const E*>(pack_b);
    }
    const float beta = pc == 0 ? g.beta : 1.0f;
    // fp32 A read in place, k-contiguous: the rows of the panel after ir toward L1 while this one
    // runs (A may be cold, or scattered by row index, where the hardware prefetchers lag).
    const auto prefetch_next_panel = [&](int64_t ir) {
      if constexpr (std::is_same_v<SA, float>)
        for (int64_t i = ir + MR; i < ir + 2 * MR && i < g.m && a_cs == 1; ++i)
          for (int64_t kk = 0; kk < kc; kk += 16) __builtin_prefetch(A + (g.a.rows ? g.a.rows[i] : i) * a_rs + pc + kk);
    };
    const auto along_block = [&](const E* a, int64_t rs, int64_t cs, int64_t row0, int64_t mr, bool k_contiguous) {
      float* c = g.c + row0 * g.ldc + jc;
      for (int64_t jr = 0; jr < nc; jr += NR) {
        const int64_t nr = nc - jr < NR ? nc - jr : NR;
        if (k_contiguous)
          Kernel::template tile<true>(ku, a, rs, 1, bp + jr * panel, c + jr, g.ldc, mr, nr, g.alpha, beta);
        else
          Kernel::template tile<false>(ku, a, 1, cs, bp + jr * panel, c + jr, g.ldc, mr, nr, g.alpha, beta);
      }
    };
    if constexpr (KS == 2) {
      // bf16 A in row-major order with whole pairs is broadcast in place; other A is converted
      // kMC rows at a time.
      if constexpr (std::is_same_v<SA, uint16_t>)
        if (a_cs == 1 && a_rs % 2 == 0 && pc % 2 == 0 && kc % 2 == 0 && uintptr_t(A) % 4 == 0) {
          for (int64_t ir = 0; ir < g.m; ir += MR) {
            const int64_t mr = g.m - ir < MR ? g.m - ir : MR;
            const uint16_t* a = A + ir * a_rs + pc;
            if (mr == MR)
              along_block(reinterpret_cast<const pair_t*>(a), a_rs / 2, 1, ir, mr, true);
            else
              along_block(ap, convert_a_bf16(ap, a, a_rs, 1, mr, MR, kc), 1, ir, mr, true);
          }
          return;
        }
      for (int64_t ic = 0; ic < g.m; ic += kMC) {
        const int64_t mc = g.m - ic < kMC ? g.m - ic : kMC, padded = (mc + MR - 1) / MR * MR;
        const int64_t ld = convert_a_bf16(ap, A + ic * a_rs + pc * a_cs, a_rs, a_cs, mc, padded, kc);
        for (int64_t ir = 0; ir < mc; ir += MR) {
          const int64_t mr = mc - ir < MR ? mc - ir : MR;
          if (a_cs == 1)
            along_block(ap + ir * ld, ld, 1, ic + ir, mr, true);
          else
            along_block(ap + ir, 1, ld, ic + ir, mr, false);
        }
      }
    } else {
      if constexpr (std::is_same_v<SA, float>)
        if (g.a.rows) {  // fp32 A by row index (gemm() copies the rows for every other case)
          for (int64_t ir = 0; ir < g.m; ir += MR) {
            const int64_t mr = g.m - ir < MR ? g.m - ir : MR;
            const float* rows[MR];  // a short panel repeats its last row (computed, not stored)
            for (int i = 0; i < MR; ++i) rows[i] = A + g.a.rows[ir + (i < mr ? i : mr - 1)] * a_rs + pc;
            prefetch_next_panel(ir);
            for (int64_t jr = 0; jr < nc; jr += NR)
              Kernel::tile_rows(ku, rows, bp + jr * panel, g.c + ir * g.ldc + jc + jr, g.ldc, mr,
                                nc - jr < NR ? nc - jr : NR, g.alpha, beta);
          }
          return;
        }
      for (int64_t ir = 0; ir < g.m; ir += MR) {
        const int64_t mr = g.m - ir < MR ? g.m - ir : MR;
        const SA* a = A + ir * a_rs + pc * a_cs;
        if constexpr (std::is_same_v<SA, float>)
          if (mr == MR && !g.bf16) {
            prefetch_next_panel(ir);
            along_block(a, a_rs, a_cs, ir, mr, a_cs == 1);
            continue;
          }
        Kernel::template pack<MR>(ap, a, a_rs, a_cs, mr, kc, g.bf16);
        along_block(ap, 1, MR, ir, mr, false);
      }
    }
  });
}

// Runs the driver for the storage types of the call's operands (a packed B counts as fp32: the
// driver reads Call::packed_b).
template <class Kernel>
void run_stored(const Call& g, float* pack_a, float* pack_b) {
  if (g.a.f32 && !g.b.bf16) return run_blocked<Kernel>(g, g.a.f32, g.b.f32, pack_a, pack_b);
  if (g.a.f32) return run_blocked<Kernel>(g, g.a.f32, g.b.bf16, pack_a, pack_b);
  if (!g.b.bf16) return run_blocked<Kernel>(g, g.a.bf16, g.b.f32, pack_a, pack_b);
  run_blocked<Kernel>(g, g.a.bf16, g.b.bf16, pack_a, pack_b);
}
template <class Kernel>
int64_t pack_b_stored(const Call& g, float* out) {
  return g.b.f32 ? pack_b_whole<Kernel>(g, g.b.f32, out) : pack_b_whole<Kernel>(g, g.b.bf16, out);
}

// The kernels of one ISA as gemm.cpp calls them.
template <class Kernel>
constexpr Kernels kernels_of() {
  return {run_stored<Kernel>, pack_b_stored<Kernel>, Kernel::k_per_elem};
}

}  // namespace
}  // namespace longctx::gemm::detail
