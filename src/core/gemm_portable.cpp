// The fp32 GEMM in baseline code (SSE2 on x86-64, NEON on ARM): 4 rows x 8 columns of
// 4-lane vectors, 8 accumulators.
#include "core/gemm_blocked.hpp"

namespace longctx::gemm::detail {

void run_portable(const Call& c, float* pack_a, float* pack_b) { run_stored<KernelF32<4, 4, 2>>(c, pack_a, pack_b); }

}  // namespace longctx::gemm::detail
