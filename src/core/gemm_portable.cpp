// The fp32 GEMM in baseline code (SSE2 on x86-64, NEON on ARM): 4 rows x 8 columns of
// 4-lane vectors, 8 accumulators.
#include "core/gemm_blocked.hpp"

namespace longctx::gemm::detail {

const Kernels kPortable = kernels_of<KernelF32<4, 4, 2>>();

}  // namespace longctx::gemm::detail
