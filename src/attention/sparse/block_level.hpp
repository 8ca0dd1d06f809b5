// What block-level top-k and the mass threshold share on the block-sparse engine
// (attention/engine/block_sparse.hpp): their result's frame and its keys-visited counts.
#pragma once
#include <longctx/attention/sparse/topk.hpp>

#include "attention/engine/varlen.hpp"

namespace longctx::attn {

// An empty block-level result of problem p: out [Tq, Hq, d], lse [Hq, Tq], block size, scale.
SparseResult block_level_result(const Problem& p, int64_t block_size);

// mean_keys and max_keys of a block-level result from its visited CSR: each (head, query) attends
// its own block up to itself plus block_size keys per visited block.
void count_block_keys(const Problem& p, SparseResult& r);

}  // namespace longctx::attn
