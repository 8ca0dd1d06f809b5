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

namespace detail {
// Range of the exps below: exp(x) = 0 for x < kExpLo (incl. -inf), x > kExpHi is clamped.
constexpr float kExpLo = -87.3f, kExpHi = 88.7f;
// x clamped to [kExpLo, kExpHi]; NaN -> kExpLo, so the int conversion in pow2_times stays defined.
inline float exp_clamp(float x) { return x > kExpLo ? (x < kExpHi ? x : kExpHi) : kExpLo; }
// round(v) via the 1.5*2^23 trick (vectorises, no libm call).
inline float round_to_int(float v) {
  const float magic = 12582912.0f;
  return (v + magic) - magic;
}
// p * 2^n for the exp of x, with exp's special cases: 0 below kExpLo, NaN stays NaN.
inline float pow2_times(float p, float n, float x) {
  int32_t e = (int32_t(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &e, 4);
  const float y = p * scale;
  return x < kExpLo ? 0.0f : (x == x ? y : x);
}
}  // namespace detail

// exp(x) with < 2 ulp-ish relative error (degree-6 polynomial after range reduction to
// |r| <= ln2/2, measured in tests/core/test_simd.cpp); exp(x) = 0 for x < -87.3 (incl. -inf);
// NaN stays NaN (diverged weights must show as a NaN loss, not as a number).
inline float exp_approx(float x) {
  const float xc = detail::exp_clamp(x);
  const float n = detail::round_to_int(xc * 1.44269504088896341f);
  float r = xc - n * 0.693145751953125f;  // ln2 split in two for an exact reduction
  r = r - n * 1.428606765330187e-06f;
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return detail::pow2_times(p, n, x);
}

// The cheaper exp of the long-context seed (docs/DESIGN.md "Polynomial exp"): x log2(e) = n + f
// with n = round(x log2(e)) and f in [-1/2, 1/2], 2^f by a degree-3 polynomial (minimax in
// relative error on [-1/2, 1/2], fitted by a Remez exchange: max relative error 7.5e-5), times
// 2^n. Same range, -inf, and NaN behaviour as exp_approx; exp(0) is 0.99993, not 1.
inline float exp_poly3(float x) {
  const float t = detail::exp_clamp(x) * 1.44269504088896341f;
  const float n = detail::round_to_int(t);
  const float f = t - n;
  float p = 5.51716685e-2f;
  p = p * f + 2.42611125e-1f;
  p = p * f + 6.93260968e-1f;
  p = p * f + 9.99928057e-1f;
  return detail::pow2_times(p, n, x);
}

// Which exp exp_scaled_sum (the attention kernels' probability loop, nearly all of their exps)
// runs: exp_approx (degree 6, the default) or exp_poly3. Process-wide, for measuring the cheaper
// one (`longctx bench exp`); the per-row rescale factors and other exps stay exp_approx.
enum class ExpImpl : uint8_t { poly6, poly3 };
void set_exp_impl(ExpImpl impl);
ExpImpl exp_impl();

// The logistic function 1 / (1 + e^-x) (gates, SiLU): float through exp_approx (vectorises in
// the SwiGLU loop), double through std::exp for the float64 references.
inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// x[i] = exp(x[i] * scale - shift) with the exp of exp_impl(); returns the sum of the results.
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
// y[i] += a[i] * b[i]
void mul_add(float* y, const float* a, const float* b, int64_t n);

}  // namespace longctx::simd
