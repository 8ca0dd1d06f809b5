// KV cache: stored rows, incremental block statistics against a naive recomputation, memory,
// overflow and shape errors.
#include <longctx/attention/cache/kv_cache.hpp>

#include "sparse_helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rows_of;

class KVCacheTest : public ::testing::TestWithParam<DType> {};

TEST_P(KVCacheTest, StoresRowsAndKeepsBlockStatistics) {
  const int hkv = 2, d = 8;
  const int64_t n = 45, B = 7;
  const Tensor k = random_tensor({n, hkv, d}, 1), v = random_tensor({n, hkv, d}, 2);
  KVCache cache({64, hkv, d, B, GetParam()});
  for (int64_t t = 0, step = 1; t < n; t += step, step = step % 5 + 1) {  // ragged appends
    const int64_t len = std::min(step, n - t);
    cache.append(rows_of(k, t, len), rows_of(v, t, len));
  }
  ASSERT_EQ(cache.size(), n);
  const Tensor ks = k.to(GetParam()), vs = v.to(GetParam());  // what the cache should hold
  for (int64_t i = 0; i < n * hkv * d; ++i) {
    ASSERT_EQ(cache.keys().at(i), ks.at(i));
    ASSERT_EQ(cache.values().at(i), vs.at(i));
  }
  ASSERT_EQ(cache.stats().blocks(), (n + B - 1) / B);
  for (int64_t j = 0; j < cache.stats().blocks(); ++j)
    for (int g = 0; g < hkv; ++g)
      for (int c = 0; c < d; ++c) {
        float sum = 0, mn = INFINITY, mx = -INFINITY;
        for (int64_t t = j * B; t < std::min((j + 1) * B, n); ++t) {
          const float x = ks.at((t * hkv + g) * d + c);
          sum += x, mn = std::min(mn, x), mx = std::max(mx, x);
        }
        EXPECT_NEAR(cache.stats().sum(j, g)[c], sum, 1e-5f);
        EXPECT_EQ(cache.stats().key_min(j, g)[c], mn);
        EXPECT_EQ(cache.stats().key_max(j, g)[c], mx);
      }
  EXPECT_GE(cache.memory_bytes(), size_t(2 * 64 * hkv * d) * dtype_size(GetParam()));
  cache.clear();
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(cache.stats().blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(DTypes, KVCacheTest, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no throw";
}

TEST(KVCache, OverflowAndBadShapesThrowClearly) {
  KVCache cache({10, 2, 4, 4, DType::bf16});
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
  EXPECT_NE(message_of([] { KVCache({0, 2, 4, 4, DType::f32}); }).find("capacity must be > 0, got 0"), std::string::npos);
  EXPECT_NE(message_of([] { KVCache({4, 2, 4, 0, DType::f32}); }).find("block_size must be > 0, got 0"),
            std::string::npos);
}

}  // namespace
}  // namespace longctx
