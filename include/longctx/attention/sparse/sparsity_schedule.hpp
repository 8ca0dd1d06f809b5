// Training-time progressive sparsity (docs/DESIGN.md "Top-k and mass-threshold sparse attention"):
// the kept ratio of keys/blocks decays from 1.0 at step 0 to `target` at step `steps`, linearly
// or along a half cosine, and stays at `target` afterwards. The Trainer applies it to top-k and
// threshold layers when the train config sets sparsity_steps (scheduled_spec, train/trainer.hpp).
#pragma once
#include <longctx/core/fields.hpp>

#include <cstdint>
#include <string>

namespace longctx {

enum class ScheduleShape { linear, cosine };
template <>
struct EnumNames<ScheduleShape> {
  static constexpr std::array<const char*, 2> names{"linear", "cosine"};
};

class SparsitySchedule {
 public:
  // target in (0, 1], steps >= 1; throws std::invalid_argument otherwise.
  SparsitySchedule(double target, int64_t steps, ScheduleShape shape = ScheduleShape::cosine);
  double kept_ratio(int64_t step) const;
  // Blocks (or keys) to keep out of `available` at `step`: ceil(ratio * available), at least 1.
  int64_t kept(int64_t step, int64_t available) const;

 private:
  double target_;
  int64_t steps_;
  ScheduleShape shape_;
};

}  // namespace longctx
