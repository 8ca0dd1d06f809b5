// Vector math for the attention inner loops. Each function is compiled for AVX-512, AVX2+FMA and
// baseline x86-64 and picked at run time (GCC function multi-versioning), so the binary runs on
// any x86-64 and uses the widest vectors the machine has. Elsewhere (ARM) it is plain code.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LONGCTX_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LONGCTX_SIMD_CLONES
#endif

namespace longctx::simd {

// exp(x) with < 2 ulp-ish relative error (degree-6 polynomial after range reduction to
// |r| <= ln2/2, measured in tests/core/test_simd.cpp); exp(x) = 0 for x < -87.3 (incl. -inf);
// NaN stays NaN (diverged weights must show as a NaN loss, not as a number).
inline float exp_approx(float x) {
  const float lo = -87.3f, hi = 88.7f;
  float xc = x > lo ? (x < hi ? x : hi) : lo;  // NaN -> lo, so the int conversion below stays defined
  // round(xc / ln2) via the 1.5*2^23 trick (vectorises, no libm call)
  const float magic = 12582912.0f;
  float n = (xc * 1.44269504088896341f + magic) - magic;
  float r = xc - n * 0.693145751953125f;  // ln2 split in two for an exact reduction
  r = r - n * 1.428606765330187e-06f;
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t e = (int32_t(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &e, 4);
  float y = p * scale;
  return x < lo ? 0.0f : (x == x ? y : x);
}

// The logistic function 1 / (1 + e^-x) (gates, SiLU): float through exp_approx (vectorises in
// the SwiGLU loop), double through std::exp for the float64 references.
inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// x[i] = exp(x[i] * scale - shift); returns the sum of the results.
float exp_scaled_sum(float* x, int64_t n, float scale, float shift);
// max_i x[i] (-inf for n == 0).
float max_of(const float* x, int64_t n);
// x[i] *= a
void scale_inplace(float* x, int64_t n, float a);
// sum_i a[i] * b[i]
float dot(const float* a, const float* b, int64_t n);
// dp[i] = p[i] * (dp[i] - d): softmax backward, dS = P o (dP - rowsum(dO o O)).
void softmax_grad_inplace(float* dp, const float* p, int64_t n, float d);
// dst[i] = bf16 src[i] as fp32
void bf16_to_f32(const uint16_t* src, float* dst, int64_t n);
// y[i] += x[i]
void add_inplace(float* y, const float* x, int64_t n);
// y[i] += a * x[i]
void axpy(float* y, const float* x, int64_t n, float a);

}  // namespace longctx::simd
