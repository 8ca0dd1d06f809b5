// The machine's peaks; times library internals (core/gemm.hpp): register-only FMA and vdpbf16ps loops,
// the sgemm of both GEMM backends.
#include "peaks.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "common.hpp"
#include "core/gemm.hpp"

namespace longctx::bench {
namespace {

constexpr int64_t kIters = 1 << 24;  // ~0.1 s per run: long enough that waking the threads does not count

#if defined(__x86_64__)

// kAcc independent chains: enough to cover the FMA latency times the number of FMA pipes.
constexpr int kAcc = 24;

__attribute__((target("avx512f"))) float fma_loop_avx512() {
  __m512 acc[kAcc];
  for (int j = 0; j < kAcc; ++j) acc[j] = _mm512_set1_ps(float(j));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  for (int64_t i = 0; i < kIters; ++i)
#pragma GCC unroll 24
    for (int j = 0; j < kAcc; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  float s = 0;
  for (int j = 0; j < kAcc; ++j) s += _mm512_reduce_add_ps(acc[j]);
  return s;
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2() {
  __m256 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(float(j));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  for (int64_t i = 0; i < kIters; ++i)
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  alignas(32) float out[8];
  __m256 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
  _mm256_store_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f,avx512bf16"))) float bf16_loop() {
  __m512 acc[kAcc];
  for (int j = 0; j < kAcc; ++j) acc[j] = _mm512_setzero_ps();
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x3a803a80);
  for (int64_t i = 0; i < kIters; ++i)
#pragma GCC unroll 24
    for (int j = 0; j < kAcc; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
  float s = 0;
  for (int j = 0; j < kAcc; ++j) s += _mm512_reduce_add_ps(acc[j]);
  return s;
}

// Best of 3 runs of `loop` on every thread at once; flops_per_iter per thread.
template <class Loop>
double all_threads_gflops(Loop loop, double flops_per_iter) {
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    int threads = 1;
#pragma omp parallel
    {
      const float s = loop();
#pragma omp critical
      sink = sink + s;
#pragma omp single
      threads = omp_get_num_threads();
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, threads * flops_per_iter * double(kIters) / dt / 1e9);
  }
  return best;
}
#endif

}  // namespace

double fma_peak_gflops() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return all_threads_gflops(fma_loop_avx512, kAcc * 16 * 2);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return all_threads_gflops(fma_loop_avx2, 12 * 8 * 2);
#endif
  return 0;
}

double bf16_peak_gflops() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"))
    return all_threads_gflops(bf16_loop, kAcc * 16 * 4);  // 16 lanes x 2 pairs x (mul + add)
#endif
  return 0;
}

Peaks measure_peaks(bool with_stream) {
  Peaks p;
  p.fma_gflops = fma_peak_gflops();
  p.bf16_gflops = bf16_peak_gflops();
  p.sgemm_gflops = sgemm_gflops();
  const gemm::Backend in_use = gemm::current_backend();
  gemm::set_backend(gemm::Backend::openblas);
  p.openblas_sgemm_gflops = sgemm_gflops();
  gemm::set_backend(in_use);
  if (with_stream) p.stream_gbps = stream_read_gbps(size_t(1) << 30);
  return p;
}

Peaks Peaks::max(const Peaks& o) const {
  return {std::max(fma_gflops, o.fma_gflops), std::max(bf16_gflops, o.bf16_gflops),
          std::max(sgemm_gflops, o.sgemm_gflops), std::max(openblas_sgemm_gflops, o.openblas_sgemm_gflops),
          std::max(stream_gbps, o.stream_gbps)};
}

nlohmann::json Peaks::to_json() const {
  return {{"fma_gflops", fma_gflops},        {"bf16_dot_gflops", bf16_gflops},
          {"sgemm_gflops", sgemm_gflops},    {"openblas_sgemm_gflops", openblas_sgemm_gflops},
          {"openblas", gemm::describe(gemm::Backend::openblas)}, {"stream_read_gbps", stream_gbps},
          {"gemm", gemm::describe()}};
}

}  // namespace longctx::bench
