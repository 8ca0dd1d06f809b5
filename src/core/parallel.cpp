#include "core/parallel.hpp"

#include <longctx/core/error.hpp>

#include <algorithm>
#include <numeric>

namespace longctx::parallel {

int max_threads() { return omp_get_max_threads(); }

void set_threads(int n) {
  LONGCTX_CHECK(n >= 1, "threads must be >= 1, got ", n);
  omp_set_num_threads(n);
}

std::vector<int64_t> heaviest_first(const std::vector<double>& cost) {
  std::vector<int64_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  return order;
}

}  // namespace longctx::parallel
