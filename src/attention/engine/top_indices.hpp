// Top-n selection for the block-sparse gates (MoBA, top-k): the blocks or keys a query attends.
#pragma once
#include <cstdint>

namespace longctx::attn {

// The n highest of score[0..count), ranked by higher score first and, between equal scores, the
// higher index first; written to out[0..min(n, count)) ascending by index. One pass with insertion
// into a ranked buffer of n (the n of block selection is small), no index array or sort of count.
// Returns how many were written.
int64_t top_indices(const float* score, int64_t count, int64_t n, int32_t* out);

}  // namespace longctx::attn
