#include <longctx/core/error.hpp>
#include <longctx/attention/sparse/sparsity_schedule.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>

namespace longctx {

SparsitySchedule::SparsitySchedule(double target, int64_t steps, ScheduleShape shape)
    : target_(target), steps_(steps), shape_(shape) {
  LONGCTX_CHECK(target > 0.0 && target <= 1.0, "SparsitySchedule: target kept ratio must be in (0, 1], got ", target);
  LONGCTX_CHECK(steps >= 1, "SparsitySchedule: steps must be >= 1, got ", steps);
}

double SparsitySchedule::kept_ratio(int64_t step) const {
  const double f = std::clamp(double(step) / double(steps_), 0.0, 1.0);
  const double w = shape_ == ScheduleShape::linear ? f : 0.5 * (1.0 - std::cos(std::numbers::pi * f));
  return 1.0 - (1.0 - target_) * w;
}

int64_t SparsitySchedule::kept(int64_t step, int64_t available) const {
  LONGCTX_CHECK(available >= 0, "SparsitySchedule::kept: available must be >= 0, got ", available);
  if (available == 0) return 0;
  return std::clamp<int64_t>(int64_t(std::ceil(kept_ratio(step) * double(available) - 1e-9)), 1, available);
}

}  // namespace longctx
