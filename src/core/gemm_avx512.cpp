// The fp32 GEMM compiled for AVX-512F (CMakeLists.txt sets -mavx512f -mfma for this file):
// 6 rows x 64 columns = 24 zmm accumulators (of 32), 4 B loads and 6 broadcasts per k.
#include "core/gemm_blocked.hpp"

namespace longctx::gemm::detail {

void run_avx512(const Call& c, float* pack_a, float* pack_b) { run_stored<KernelF32<16, 6, 4>>(c, pack_a, pack_b); }

}  // namespace longctx::gemm::detail
