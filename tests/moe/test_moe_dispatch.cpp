// Token permutation of the MoE layer: round trip, capacity rule, counts.
#include "helpers.hpp"
#include "moe/dispatch.hpp"

namespace longctx {
namespace {

using moe::detail::make_dispatch;

TEST(MoeDispatch, PermutationRoundTrip) {
  const int64_t n = 13, k = 3, E = 5, d = 7;
  std::vector<int32_t> expert;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) expert.push_back(int32_t((t * 7 + j * 2) % E));  // distinct per token
  const auto dp = make_dispatch(expert, n, k, E, -1);
  ASSERT_EQ(dp.offsets.back(), n * k);
  // every row of a run belongs to its expert, tokens ascending
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = dp.offsets[size_t(e)]; r < dp.offsets[size_t(e + 1)]; ++r) {
      const int32_t t = dp.row_token[size_t(r)];
      bool owns = false;
      for (int64_t j = 0; j < k; ++j) owns |= dp.slot[size_t(t * k + j)] == r && expert[size_t(t * k + j)] == e;
      EXPECT_TRUE(owns) << "row " << r;
      if (r > dp.offsets[size_t(e)]) {
        EXPECT_LT(dp.row_token[size_t(r - 1)], t);
      }
    }
  const Tensor x = testing::random_tensor({n, d}, 1);
  Tensor perm({n * k, d}), back({n, d});
  moe::detail::gather_rows(x.f32(), dp.row_token, d, perm.f32());
  std::vector<float> third(size_t(n * k), 1.0f / 3.0f);
  moe::detail::combine_rows(perm.f32(), dp.slot, third.data(), n, k, d, false, back.f32());
  EXPECT_LT(testing::rel_error(back, testing::to_vec<float>(x)), 1e-6);
}

TEST(MoeDispatch, CapacityDropsExactlyTheRulesAssignments) {
  // capacity 2; rank 0 first: t0->0 t1->0 keep, t2->0 drop, t3->1, t4->2 keep;
  // rank 1: t0->1, t1->2 keep, t2->1 drop (1 is full: t3, t0), t3->0 and t4->0 drop (0 is full).
  const std::vector<int32_t> expert{0, 1, 0, 2, 0, 1, 1, 0, 2, 0};
  const auto dp = make_dispatch(expert, 5, 2, 3, 2);
  EXPECT_EQ(dp.dropped_assignments, 4);
  EXPECT_EQ(dp.dropped_tokens, 1);  // token 2 lost both
  const std::vector<int64_t> dropped_slots{4, 5, 7, 9};
  for (int64_t a = 0; a < 10; ++a)
    EXPECT_EQ(dp.slot[size_t(a)] < 0, std::count(dropped_slots.begin(), dropped_slots.end(), a) == 1) << a;
  EXPECT_EQ(dp.offsets, (std::vector<int64_t>{0, 2, 4, 6}));
  EXPECT_EQ(dp.routed, (std::vector<int64_t>{5, 3, 2}));
  EXPECT_EQ(dp.row_token, (std::vector<int32_t>{0, 1, 0, 3, 1, 4}));
  EXPECT_EQ(moe::detail::capacity_of(1.0, 5, 2, 3), 4);  // ceil(10 / 3)
  EXPECT_EQ(moe::detail::capacity_of(1.25, 16, 2, 8), 5);
}

}  // namespace
}  // namespace longctx
