// The bf16 GEMM for AVX512_BF16 (CMakeLists.txt sets -mavx512f -mavx512bf16 for this file):
// vdpbf16ps multiplies 16 pairs of bf16 and adds both products to 16 fp32 lanes, so each packed
// element is a pair of consecutive k; the register blocking is the fp32 kernel's (6 x 64).
#include <immintrin.h>

#include "core/gemm_blocked.hpp"

namespace longctx::gemm::detail {
namespace {

struct KernelBf16 {
  static constexpr int MR = 6, NV = 4, NR = NV * 16, k_per_elem = 2;
  template <int R, class S>
  static void pack(pair_t* out, const S* x, int64_t rs, int64_t cs, int64_t rows, int64_t kc, bool) {
    pack_bf16_pairs<R>(out, x, rs, cs, rows, kc);
  }
  // A element pair (i, kp) at ap[i * a_rs + kp * a_cs] (convert_a_bf16's layouts).
  template <bool KContiguous>
  static void tile(int64_t kpairs, const pair_t* __restrict ap, int64_t a_rs, int64_t a_cs, const pair_t* __restrict bp,
                   float* c, int64_t ldc, int64_t mr, int64_t nr, float alpha, float beta) {
    using V = VecOf<16>::type;
    V acc[MR][NV] = {};
    for (int64_t kp = 0; kp < kpairs; ++kp) {
      __m512bh b[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) b[j] = (__m512bh)_mm512_loadu_si512(bp + kp * NR + j * 16);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const uint32_t pair = KContiguous ? ap[i * a_rs + kp] : ap[kp * a_cs + i];
        const __m512bh a = (__m512bh)_mm512_set1_epi32(int(pair));
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i][j] = (V)_mm512_dpbf16_ps((__m512)acc[i][j], a, b[j]);
      }
    }
    store_tile<16, MR, NV>(acc, c, ldc, mr, nr, alpha, beta);
  }
};

}  // namespace

const Kernels kAvx512Bf16 = kernels_of<KernelBf16>();

}  // namespace longctx::gemm::detail
