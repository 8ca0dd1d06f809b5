// The fp32 GEMM compiled for AVX2+FMA (CMakeLists.txt sets -mavx2 -mfma for this file):
// 6 rows x 16 columns = 12 ymm accumulators (of 16).
#include "core/gemm_blocked.hpp"

namespace longctx::gemm::detail {

const Kernels kAvx2 = kernels_of<KernelF32<8, 6, 2>>();

}  // namespace longctx::gemm::detail
