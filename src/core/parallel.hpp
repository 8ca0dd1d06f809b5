// The OpenMP work split used by every kernel: a list of work items, ordered heaviest first (so the
// causal triangle's long rows start early), run either dynamically (items that own their outputs)
// or dealt cyclically to threads (item i -> thread i % T), which fixes each thread's items and
// their order, so per-thread accumulators sum in the same order on every run.
#pragma once
#include <longctx/core/threads.hpp>
#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace longctx::parallel {

// Indices 0..n-1 sorted by descending cost; ties keep index order.
std::vector<int64_t> heaviest_first(const std::vector<double>& cost);
// The items reordered by descending cost (cost[i] belongs to items[i]); ties keep their order.
template <class Item>
std::vector<Item> heaviest_first(const std::vector<Item>& items, const std::vector<double>& cost) {
  std::vector<Item> ordered;
  ordered.reserve(items.size());
  for (int64_t i : heaviest_first(cost)) ordered.push_back(items[std::size_t(i)]);
  return ordered;
}

// Whether a loop over `work` elementwise operations is worth a parallel region: below this, the
// fork/join (and, on a busy machine, waiting for a descheduled thread at the barrier) costs more
// than the loop.
inline bool worth_threads(int64_t work) { return work >= (int64_t(1) << 16); }

enum class Schedule { dynamic, cyclic };

// make_state(thread) builds one thread's scratch inside the parallel region; body(item, state).
template <class MakeState, class Body>
void run(int64_t n, Schedule schedule, MakeState&& make_state, Body&& body) {
  if (n == 0) return;
#pragma omp parallel if (n > 1)  // one item: no team to wake
  {
    auto state = make_state(omp_get_thread_num());
    if (schedule == Schedule::dynamic) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < n; ++i) body(i, state);
    } else {
#pragma omp for schedule(static, 1)
      for (int64_t i = 0; i < n; ++i) body(i, state);
    }
  }
}

}  // namespace longctx::parallel
