// The machine's limits, measured in the same run as the kernels they judge: the fp32 FMA peak and
// the bf16 dot peak (register-only loops, no memory traffic), the GEMM backend's sgemm and the
// streaming read bandwidth. Every kernel's `of_peak` is its rate over the relevant one.
#pragma once
#include <nlohmann/json.hpp>

namespace longctx::bench {

struct Peaks {
  double fma_gflops = 0;             // fp32 FMAs on all threads (AVX-512 if the CPU has it, else AVX2)
  double bf16_gflops = 0;            // vdpbf16ps on all threads; 0 without AVX512_BF16
  double sgemm_gflops = 0;           // 2048^3 sgemm of the GEMM backend in use
  double openblas_sgemm_gflops = 0;  // the same on OpenBLAS (with the kernels its environment picks)
  double stream_gbps = 0;            // streaming read of 1 GiB; 0 when not measured
  nlohmann::json to_json() const;
  // Elementwise max of two measurements (the less disturbed one on a shared machine).
  Peaks max(const Peaks& o) const;
};

// Measures every peak (the stream read only if `with_stream`: it needs 1 GiB and ~1 s).
Peaks measure_peaks(bool with_stream);

// GFLOP/s of the register-only loops alone.
double fma_peak_gflops();
double bf16_peak_gflops();

}  // namespace longctx::bench
