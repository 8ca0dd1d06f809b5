#include "core/parallel.hpp"

#include <longctx/core/error.hpp>

#include <algorithm>
#include <numeric>

namespace longctx::parallel {

int max_threads() { return omp_get_max_threads(); }

void set_threads(int n) {
  const int most = 4 * std::max(1, omp_get_num_procs());  // beyond: oversubscription, never faster
  LONGCTX_CHECK(n >= 1 && n <= most, "threads must be in [1, ", most, "] (4x the ", omp_get_num_procs(),
                " cores), got ", n);
  omp_set_num_threads(n);
}

std::vector<int64_t> heaviest_first(const std::vector<double>& cost) {
  std::vector<int64_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  return order;
}

}  // namespace longctx::parallel
