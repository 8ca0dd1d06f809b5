// The fp32 GEMM compiled for AVX2+FMA (CMakeLists.txt sets -mavx2 -mfma for this file):
// 6 rows x 16 columns = 12 ymm accumulators (of 16).
#include "core/gemm_blocked.hpp"

namespace longctx::gemm::detail {

void run_avx2(const Call& c, float* pack_a, float* pack_b) { run_stored<KernelF32<8, 6, 2>>(c, pack_a, pack_b); }

}  // namespace longctx::gemm::detail
