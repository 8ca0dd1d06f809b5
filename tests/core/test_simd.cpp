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
