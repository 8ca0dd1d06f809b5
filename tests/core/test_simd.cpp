// Vector math: the polynomial exp against libm, and the reductions against plain loops.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "core/simd.hpp"

namespace longctx {
namespace {

TEST(Simd, ExpApproxRelativeErrorBelow3e7) {
  double worst = 0;
  for (float x = -87.0f; x < 88.0f; x += 0.000731f) {
    const double want = std::exp(double(x));
    worst = std::max(worst, std::abs(simd::exp_approx(x) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);  // fp32 epsilon is 1.19e-7
  EXPECT_EQ(simd::exp_approx(0.0f), 1.0f);
  EXPECT_EQ(simd::exp_approx(-INFINITY), 0.0f);
  EXPECT_EQ(simd::exp_approx(-100.0f), 0.0f);
  EXPECT_TRUE(std::isnan(simd::exp_approx(NAN)));  // no float -> int conversion of NaN (UB; found by the fuzzer)
  std::vector<float> x{1.0f, NAN, -2.0f};
  EXPECT_TRUE(std::isnan(simd::exp_scaled_sum(x.data(), 3, 1.0f, 0.0f)));
  EXPECT_TRUE(std::isnan(x[1]));
  EXPECT_FLOAT_EQ(x[0], std::exp(1.0f));
}

// The seed's degree-3 exp over the softmax's range: x <= 0 (scores minus their running max) down
// to where exp underflows. Its error is the polynomial's (7.5e-5 minimax) plus fp32 rounding.
TEST(Simd, ExpPoly3RelativeErrorBelow8e5OverSoftmaxRange) {
  double worst = 0, sum = 0;
  int64_t count = 0;
  for (float x = -87.3f; x <= 0.0f; x += 0.000613f, ++count) {
    const double want = std::exp(double(x)), err = std::abs(simd::exp_poly3(x) - want) / want;
    worst = std::max(worst, err);
    sum += err;
  }
  EXPECT_LT(worst, 8e-5);
  EXPECT_GT(worst, 5e-5);  // it is the degree-3 polynomial that runs, not the degree-6 one
  EXPECT_LT(sum / double(count), 5e-5);
  // the special values of exp_approx
  EXPECT_NEAR(simd::exp_poly3(0.0f), 1.0f, 8e-5);
  EXPECT_EQ(simd::exp_poly3(-INFINITY), 0.0f);
  EXPECT_EQ(simd::exp_poly3(-87.4f), 0.0f);
  EXPECT_EQ(simd::exp_poly3(-100.0f), 0.0f);
  EXPECT_TRUE(std::isnan(simd::exp_poly3(NAN)));
  EXPECT_EQ(simd::exp_poly3(INFINITY), simd::exp_approx(INFINITY));  // overflows to inf as exp_approx
}

// The switch changes exp_scaled_sum (the attention kernels' loop) and nothing else; it starts at
// the degree-6 exp.
TEST(Simd, ExpImplSwitchSelectsTheLoopsExp) {
  ASSERT_EQ(simd::exp_impl(), simd::ExpImpl::poly6);
  std::vector<float> a(37);
  for (size_t i = 0; i < a.size(); ++i) a[i] = -0.37f * float(i) + 1.0f;
  a[5] = NAN;
  for (simd::ExpImpl impl : {simd::ExpImpl::poly3, simd::ExpImpl::poly6}) {
    simd::set_exp_impl(impl);
    std::vector<float> e = a;
    const float s = simd::exp_scaled_sum(e.data(), int64_t(e.size()), 0.5f, 1.0f);
    EXPECT_TRUE(std::isnan(s));
    double apart = 0;  // from the other exp
    for (size_t i = 0; i < a.size(); ++i) {
      const float x = a[i] * 0.5f - 1.0f;
      const bool poly3 = impl == simd::ExpImpl::poly3;
      const float want = poly3 ? simd::exp_poly3(x) : simd::exp_approx(x);
      const float other = poly3 ? simd::exp_approx(x) : simd::exp_poly3(x);
      if (i == 5) {
        EXPECT_TRUE(std::isnan(e[i]));
        continue;
      }
      EXPECT_NEAR(e[i], want, 5e-7f * want) << i;  // the loop fuses x * scale - shift: a few ulp
      apart = std::max(apart, std::abs(double(e[i]) - other) / other);
    }
    EXPECT_GT(apart, 1e-5);
  }
  EXPECT_EQ(simd::exp_impl(), simd::ExpImpl::poly6);
}

TEST(Simd, VectorFunctionsMatchScalarLoops) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  for (int n : {0, 1, 7, 16, 33, 1000}) {
    std::vector<float> a(n), b(n);
    for (int i = 0; i < n; ++i) a[i] = dist(rng), b[i] = dist(rng);
    double dot = 0, mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; ++i) dot += double(a[i]) * b[i], mx = std::max<double>(mx, a[i]);
    EXPECT_NEAR(simd::dot(a.data(), b.data(), n), dot, 1e-4 * (1 + std::abs(dot)));
    EXPECT_EQ(simd::max_of(a.data(), n), float(mx));
    std::vector<float> e = a;
    const float s = simd::exp_scaled_sum(e.data(), n, 0.5f, 1.0f);
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(e[i], std::exp(0.5 * a[i] - 1.0), 1e-6 * std::exp(0.5 * a[i] - 1.0));
      sum += e[i];
    }
    EXPECT_NEAR(s, sum, 1e-5 * (1 + sum));
    std::vector<float> y = b;
    simd::axpy(y.data(), a.data(), n, -1.5f);
    for (int i = 0; i < n; ++i) EXPECT_NEAR(y[i], b[i] - 1.5 * a[i], 1e-6 * (1 + std::abs(b[i] - 1.5 * a[i])));
  }
}

}  // namespace
}  // namespace longctx
