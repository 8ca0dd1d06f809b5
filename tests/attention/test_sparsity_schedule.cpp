#include <gtest/gtest.h>
#include <longctx/attention/sparse/sparsity_schedule.hpp>

#include <stdexcept>

namespace longctx {
namespace {

TEST(SparsitySchedule, LinearAndCosineGoFromOneToTarget) {
  const SparsitySchedule lin(0.25, 100, ScheduleShape::linear), cosine(0.25, 100, ScheduleShape::cosine);
  for (const auto* s : {&lin, &cosine}) {
    EXPECT_DOUBLE_EQ(s->kept_ratio(-5), 1.0);
    EXPECT_DOUBLE_EQ(s->kept_ratio(0), 1.0);
    EXPECT_DOUBLE_EQ(s->kept_ratio(100), 0.25);
    EXPECT_DOUBLE_EQ(s->kept_ratio(1000), 0.25);
    for (int64_t t = 1; t <= 100; ++t) EXPECT_LE(s->kept_ratio(t), s->kept_ratio(t - 1));
  }
  EXPECT_DOUBLE_EQ(lin.kept_ratio(50), 0.625);
  EXPECT_NEAR(cosine.kept_ratio(50), 0.625, 1e-12);  // the half cosine passes the midpoint at half time
  EXPECT_GT(cosine.kept_ratio(10), lin.kept_ratio(10));  // and starts slower
  EXPECT_EQ(lin.kept(0, 64), 64);
  EXPECT_EQ(lin.kept(100, 64), 16);
  EXPECT_EQ(lin.kept(100, 3), 1);
  EXPECT_EQ(SparsitySchedule(0.01, 1).kept(1, 10), 1);
}

TEST(SparsitySchedule, BadArgumentsThrow) {
  EXPECT_THROW(SparsitySchedule(0.0, 10), std::invalid_argument);
  EXPECT_THROW(SparsitySchedule(1.5, 10), std::invalid_argument);
  EXPECT_THROW(SparsitySchedule(0.5, 0), std::invalid_argument);
  try {
    SparsitySchedule(0.5, 0);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("steps must be >= 1, got 0"), std::string::npos);
  }
}

}  // namespace
}  // namespace longctx
