// The fp32 GEMM compiled for AVX-512F (CMakeLists.txt sets -mavx512f -mfma for this file):
// 6 rows x 64 columns = 24 zmm accumulators (of 32), 4 B loads and 6 broadcasts per k.
#include "core/gemm_blocked.hpp"

namespace longctx::gemm::detail {

const Kernels kAvx512 = kernels_of<KernelF32<16, 6, 4>>();

}  // namespace longctx::gemm::detail
