#include "core/simd.hpp"

#include <longctx/core/tensor.hpp>

#include <atomic>
#include <limits>

namespace longctx::simd {

namespace {

std::atomic<ExpImpl> g_exp_impl{ExpImpl::poly6};

// The sum in 16 partial sums (lane j takes x[j], x[j + 16], ...) added pairwise at the end: one
// vector on AVX-512, and 4 dependent adds per call instead of 16 where the lanes are summed in order.
template <float (*Exp)(float)>
[[gnu::always_inline]] inline float exp_scaled_sum_with(float* x, int64_t n, float scale, float shift) {
  constexpr int kLanes = 16;
  float part[kLanes] = {};
  const auto block = [&](float* xb, int len) {
#pragma omp simd
    for (int j = 0; j < len; ++j) {
      const float e = Exp(xb[j] * scale - shift);
      xb[j] = e;
      part[j] += e;
    }
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) block(x + i, kLanes);
  if (i < n) block(x + i, int(n - i));
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) part[j] += part[j + w];
  return part[0];
}

LONGCTX_SIMD_CLONES
float exp_scaled_sum_poly6(float* x, int64_t n, float scale, float shift) {
  return exp_scaled_sum_with<exp_approx>(x, n, scale, shift);
}

LONGCTX_SIMD_CLONES
float exp_scaled_sum_poly3(float* x, int64_t n, float scale, float shift) {
  return exp_scaled_sum_with<exp_poly3>(x, n, scale, shift);
}

}  // namespace

void set_exp_impl(ExpImpl impl) { g_exp_impl.store(impl, std::memory_order_relaxed); }

ExpImpl exp_impl() { return g_exp_impl.load(std::memory_order_relaxed); }

float exp_scaled_sum(float* x, int64_t n, float scale, float shift) {
  return exp_impl() == ExpImpl::poly3 ? exp_scaled_sum_poly3(x, n, scale, shift)
                                      : exp_scaled_sum_poly6(x, n, scale, shift);
}

LONGCTX_SIMD_CLONES
float max_of(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

LONGCTX_SIMD_CLONES
void scale_inplace(float* x, int64_t n, float a) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

LONGCTX_SIMD_CLONES
float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

LONGCTX_SIMD_CLONES
void softmax_grad_inplace(float* dp, const float* p, int64_t n, float d) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dp[i] = p[i] * (dp[i] - d);
}

LONGCTX_SIMD_CLONES
void bf16_to_f32(const uint16_t* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = longctx::bf16_to_f32(src[i]);
}

LONGCTX_SIMD_CLONES
void add_inplace(float* y, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

LONGCTX_SIMD_CLONES
void axpy(float* y, const float* x, int64_t n, float a) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

LONGCTX_SIMD_CLONES
void mul_add(float* y, const float* a, const float* b, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a[i] * b[i];
}

}  // namespace longctx::simd
