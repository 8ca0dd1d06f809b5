// KV cache: stored rows (fp32, bf16, int8), the int8 quantiser, incremental block statistics
// against a naive recomputation, memory, overflow and shape errors.
#include <longctx/attention/cache/kv_cache.hpp>

#include <cmath>
#include <random>

#include "sparse_helpers.hpp"

namespace longctx {
namespace {

using testing::message_of;
using testing::random_tensor;
using testing::rows_of;

class KVCacheTest : public ::testing::TestWithParam<KVDType> {};

TEST_P(KVCacheTest, StoresRowsAndKeepsBlockStatistics) {
  const int hkv = 2, d = 8;
  const int64_t n = 45, B = 7;
  const Tensor k = random_tensor({n, hkv, d}, 1), v = random_tensor({n, hkv, d}, 2);
  KVCache cache({64, hkv, d, B, GetParam()});
  for (int64_t t = 0, step = 1; t < n; t += step, step = step % 5 + 1) {  // ragged appends, fp32 and bf16
    const int64_t len = std::min(step, n - t);
    if (GetParam() == KVDType::bf16 && t % 2)
      cache.append(rows_of(k, t, len).to(DType::bf16), rows_of(v, t, len).to(DType::bf16));
    else
      cache.append(rows_of(k, t, len), rows_of(v, t, len));
  }
  ASSERT_EQ(cache.size(), n);
  const Tensor ks = testing::stored(k, GetParam()), vs = testing::stored(v, GetParam());  // what the cache should hold
  const Tensor kc = cache.keys_f32(), vc = cache.values_f32();
  ASSERT_EQ(kc.shape(), (std::vector<int64_t>{n, hkv, d}));
  for (int64_t i = 0; i < n * hkv * d; ++i) {
    ASSERT_EQ(kc.f32()[i], ks.f32()[i]);
    ASSERT_EQ(vc.f32()[i], vs.f32()[i]);
    if (GetParam() != KVDType::int8) ASSERT_EQ(cache.keys().at(i), ks.f32()[i]);
  }
  // Statistics of the stored (rounded or dequantised) keys, exactly.
  ASSERT_EQ(cache.stats().blocks(), (n + B - 1) / B);
  for (int64_t j = 0; j < cache.stats().blocks(); ++j)
    for (int g = 0; g < hkv; ++g)
      for (int c = 0; c < d; ++c) {
        float sum = 0, mn = INFINITY, mx = -INFINITY;
        for (int64_t t = j * B; t < std::min((j + 1) * B, n); ++t) {
          const float x = ks.f32()[(t * hkv + g) * d + c];
          sum += x, mn = std::min(mn, x), mx = std::max(mx, x);
        }
        EXPECT_EQ(cache.stats().sum(j, g)[c], sum);
        EXPECT_EQ(cache.stats().key_min(j, g)[c], mn);
        EXPECT_EQ(cache.stats().key_max(j, g)[c], mx);
      }
  EXPECT_GE(cache.memory_bytes(), size_t(2.0 * 64 * hkv * kv_row_bytes(GetParam(), d)));
  cache.clear();
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(cache.stats().blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(DTypes, KVCacheTest, ::testing::Values(KVDType::f32, KVDType::bf16, KVDType::int8),
                         [](const auto& info) { return std::string(enum_name(info.param)); });

// The quantiser: scale = max |x| / 127, codes in [-127, 127] with the largest magnitude at 127,
// every value within half a step; zero rows, one value, huge and tiny rows; NaN and inf rows
// read back as NaN.
TEST(KVCache, Int8QuantiserRoundTrip) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (const int64_t n : {1, 7, 64, 128, 129})
    for (const float mag : {1e-30f, 1e-3f, 1.0f, 3e4f, 1e38f}) {
      std::vector<float> x(static_cast<size_t>(n));
      for (float& e : x) e = mag * nd(rng);
      std::vector<int8_t> code(static_cast<size_t>(n));
      const float s = quantize_int8(x.data(), n, code.data());
      float amax = 0;
      int peak = 0;
      for (int64_t i = 0; i < n; ++i) {
        amax = std::max(amax, std::fabs(x[size_t(i)]));
        peak = std::max(peak, std::abs(int(code[size_t(i)])));
        ASSERT_GE(code[size_t(i)], -127);
        ASSERT_LE(std::fabs(x[size_t(i)] - float(code[size_t(i)]) * s), 0.5f * s * (1 + 1e-5f)) << n << " " << mag;
      }
      EXPECT_EQ(s, amax / 127.0f);
      EXPECT_EQ(peak, 127);
    }
  std::vector<int8_t> code(4, 5);
  const std::vector<float> zeros(4, 0.0f), bad{1.0f, NAN, 2.0f, 0.0f}, inf{1.0f, -INFINITY, 2.0f, 0.0f};
  EXPECT_EQ(quantize_int8(zeros.data(), 4, code.data()), 0.0f);
  EXPECT_EQ(code, std::vector<int8_t>(4, 0));
  EXPECT_TRUE(std::isnan(quantize_int8(bad.data(), 4, code.data())));
  EXPECT_TRUE(std::isnan(quantize_int8(inf.data(), 4, code.data())));
  // A NaN row in a cache reads back as NaN, not as a finite value.
  KVCache cache({4, 1, 4, 4, KVDType::int8});
  Tensor k({1, 1, 4});
  std::copy(bad.begin(), bad.end(), k.f32());
  cache.append(k, k);
  EXPECT_TRUE(std::isnan(cache.keys_f32().f32()[0]));
  EXPECT_NE(message_of([&] { (void)cache.keys(); }).find("an int8 cache holds int8 rows and scales"), std::string::npos);
}

TEST(KVCache, OverflowAndBadShapesThrowClearly) {
  KVCache cache({10, 2, 4, 4, KVDType::bf16});
  cache.append(random_tensor({8, 2, 4}, 1), random_tensor({8, 2, 4}, 2));
  EXPECT_NE(message_of([&] { cache.append(random_tensor({3, 2, 4}, 1), random_tensor({3, 2, 4}, 2)); })
                .find("overflow: 8 cached + 3 new tokens exceeds the capacity 10"),
            std::string::npos);
  EXPECT_EQ(cache.size(), 8);  // unchanged after the failed append
  EXPECT_NE(message_of([&] { cache.append(random_tensor({1, 3, 4}, 1), random_tensor({1, 3, 4}, 2)); })
                .find("k must be [n, 2, 4], got [1, 3, 4]"),
            std::string::npos);
  EXPECT_NE(message_of([&] { cache.append(random_tensor({1, 2, 4}, 1), random_tensor({2, 2, 4}, 2)); }).find("v shape"),
            std::string::npos);
  EXPECT_NE(message_of([] { KVCache({0, 2, 4, 4, KVDType::f32}); }).find("capacity must be > 0, got 0"), std::string::npos);
  EXPECT_NE(message_of([] { KVCache({4, 2, 4, 0, KVDType::f32}); }).find("block_size must be > 0, got 0"),
            std::string::npos);
}

}  // namespace
}  // namespace longctx
