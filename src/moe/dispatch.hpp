// Token permutation of the MoE layer: capacity decisions, a counting sort of the kept (token,
// expert) assignments into per-expert contiguous runs, and the gather / weighted combine that
// move rows between token order and expert order.
#pragma once
#include <cstdint>
#include <vector>

namespace longctx::moe::detail {

struct Dispatch {
  std::vector<int64_t> slot;       // [tokens * k] permuted row of assignment (t, j), -1 when dropped
  std::vector<int64_t> offsets;    // [E + 1] start of expert e's run
  std::vector<int32_t> row_token;  // [rows] token of each permuted row (ascending within a run)
  std::vector<int64_t> routed;     // [E] assignments the router chose, before dropping
  int64_t dropped_assignments = 0, dropped_tokens = 0;
};

// capacity < 0: dropless. Otherwise each expert keeps at most `capacity` assignments: choice
// rank 0 of every token first, then rank 1, ..., tokens in index order within a rank.
Dispatch make_dispatch(const std::vector<int32_t>& expert, int64_t tokens, int64_t k, int64_t num_experts,
                       int64_t capacity);

// Capacity of the rule in longctx::moe::Config: ceil(factor * tokens * k / E); -1 when factor == 0.
int64_t capacity_of(double factor, int64_t tokens, int64_t k, int64_t num_experts);

// dst[r] = src[row_token[r]] for every permuted row (rows of width d).
void gather_rows(const float* src, const std::vector<int32_t>& row_token, int64_t d, float* dst);

// out[t] (+)= sum_j weight[t*k + j] * rows[slot[t*k + j]] over kept assignments, j in order;
// weight == nullptr means 1. With accumulate == false out[t] is overwritten.
void combine_rows(const float* rows, const std::vector<int64_t>& slot, const float* weight, int64_t tokens,
                  int64_t k, int64_t d, bool accumulate, float* out);

}  // namespace longctx::moe::detail
