// attn::top_indices (the block-sparse gates' selection: AVX-512 filter-and-rank where the CPU has
// it, else the portable bitwise search) and top_indices_portable, against sorting every index by
// its rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "attention/engine/top_indices.hpp"

namespace longctx::attn {
namespace {

// Scores of one trial: normal (all distinct), few distinct values (many ties, -0 among them,
// equal to +0), infinities and zeros among normal ones, or NaNs of either sign.
std::vector<float> scores(std::mt19937& rng, int64_t count, int mode) {
  std::normal_distribution<float> normal;
  std::vector<float> score(static_cast<size_t>(count));
  for (float& s : score) switch (mode) {
      case 0: s = normal(rng); break;
      case 1: s = float(int(rng() % 7) - 3) * 0.5f * (rng() % 2 ? 1.0f : -1.0f); break;
      case 2: {
        const uint32_t r = rng() % 8;
        s = r == 0 ? INFINITY : r == 1 ? -INFINITY : r == 2 ? 0.0f : r == 3 ? -0.0f : normal(rng);
        break;
      }
      default: {  // half NaNs, of a few patterns: the lowest (all bits set) and quiet +NaN
        const uint32_t bits = (rng() % 2 ? 0xffffffffu : 0x7fc00000u) - rng() % 2;
        if (rng() % 2)
          s = normal(rng);
        else
          std::memcpy(&s, &bits, sizeof s);
      }
    }
  return score;
}

// The n best by (score, then the later index), ascending by index: float order, so no NaNs.
std::vector<int32_t> by_sorting(const std::vector<float>& score, int64_t n) {
  std::vector<int32_t> want(score.size());
  std::iota(want.begin(), want.end(), 0);
  std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) {
    return score[size_t(a)] != score[size_t(b)] ? score[size_t(a)] > score[size_t(b)] : a > b;
  });
  want.resize(size_t(std::min<int64_t>(n, int64_t(score.size()))));
  std::sort(want.begin(), want.end());
  return want;
}

using TopFn = int64_t (*)(const float*, int64_t, int64_t, int32_t*, std::vector<uint32_t>*);

std::vector<int32_t> run(TopFn top, const std::vector<float>& score, int64_t n, std::vector<uint32_t>* scratch) {
  std::vector<int32_t> got(size_t(std::max<int64_t>(n, 1)), -7);
  const int64_t written = top(score.data(), int64_t(score.size()), n, got.data(), scratch);
  EXPECT_EQ(written, std::min<int64_t>(n, int64_t(score.size())));
  got.resize(size_t(std::max<int64_t>(written, 0)));
  return got;
}

TEST(TopIndices, EqualsSortingByScoreThenLaterIndex) {
  std::mt19937 rng(3);
  std::vector<uint32_t> scratch;  // reused across sizes, as the gates do
  for (int trial = 0; trial < 4000; ++trial) {
    const int mode = trial % 3;
    // counts past a vector of 16 and its tails; n across the filter's limit (11) and past 16
    const int64_t count = 1 + int64_t(rng() % 300), n = int64_t(rng() % 20);
    const std::vector<float> score = scores(rng, count, mode);
    const std::vector<int32_t> want = by_sorting(score, n);
    ASSERT_EQ(run(top_indices, score, n, &scratch), want) << "count " << count << " n " << n << " mode " << mode;
    ASSERT_EQ(run(top_indices_portable, score, n, nullptr), want) << "count " << count << " n " << n << " mode " << mode;
  }
}

TEST(TopIndices, NansRankByTheirBitsTheSameOnEveryPath) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 20000; ++trial) {
    const int64_t count = 1 + int64_t(rng() % 64), n = int64_t(rng() % 12);
    const std::vector<float> score = scores(rng, count, 3);
    ASSERT_EQ(run(top_indices, score, n, nullptr), run(top_indices_portable, score, n, nullptr))
        << "count " << count << " n " << n;
  }
}

}  // namespace
}  // namespace longctx::attn
