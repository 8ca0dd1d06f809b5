// attn::top_indices (the block-sparse gates' selection) against sorting every index by its rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "attention/engine/top_indices.hpp"

namespace longctx::attn {
namespace {

TEST(TopIndices, EqualsSortingByScoreThenLaterIndex) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t count = 1 + int64_t(rng() % 300), n = int64_t(rng() % 20);
    std::vector<float> score(static_cast<size_t>(count));
    // few distinct values (many ties), -0 among them (equal to +0, as float comparison has it)
    for (float& s : score) s = float(int(rng() % 7) - 3) * 0.5f * (rng() % 2 ? 1.0f : -1.0f);
    std::vector<int32_t> want(static_cast<size_t>(count));
    std::iota(want.begin(), want.end(), 0);
    std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) {
      return score[size_t(a)] != score[size_t(b)] ? score[size_t(a)] > score[size_t(b)] : a > b;
    });
    want.resize(size_t(std::min(n, count)));
    std::sort(want.begin(), want.end());
    std::vector<int32_t> got(size_t(std::max<int64_t>(n, 1)), -7);
    const int64_t written = top_indices(score.data(), count, n, got.data());
    ASSERT_EQ(written, int64_t(want.size())) << "count " << count << " n " << n;
    got.resize(size_t(written));
    ASSERT_EQ(got, want) << "count " << count << " n " << n;
  }
}

}  // namespace
}  // namespace longctx::attn
