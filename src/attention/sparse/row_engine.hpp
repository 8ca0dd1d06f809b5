// The engine of the per-query sparse methods over a KV cache (MoBA, top-k and threshold decode and
// chunked prefill) and of token-level top-k: every (head, query) row picks its keys with a row
// function and folds them into one exact online softmax with the decode tile kernel (rows = 1, K/V
// read in place); then the result is assembled (out, lse, visited CSR, keys-visited counts).
// Block-level prefill and training run on the block-sparse engine instead
// (attention/engine/block_sparse.hpp), which tiles many queries per block.
#pragma once
#include <longctx/attention/sparse/block_stats.hpp>
#include <longctx/attention/sparse/topk.hpp>

#include <functional>
#include <vector>

#include "attention/engine/tile_kernels.hpp"
#include "attention/engine/varlen.hpp"
#include "core/parallel.hpp"

namespace longctx::attn {

// One sequence's keys: rows [s.k0, s.k0 + s.lk) of k/v, with their block statistics.
struct SparseSource {
  const Problem& p;
  const Seq& s;
  StoredRows k;
  StoredRows v;
  const BlockStats& stats;
  int64_t B() const { return stats.block_size(); }
};

struct RowScratch {
  TileScratch tile{1, kKeyTile, 0, false};
  std::vector<float> score, mean;
  std::vector<int32_t> order;
  std::vector<int64_t> flat;
  explicit RowScratch(int d) : tile(1, kKeyTile, d, false), mean(size_t(d)) {}
};

// Picks and attends the keys of query `q` (head h, sequence position pos) into `st`; appends
// the visited blocks/tokens to `visited`; returns the number of keys attended.
using RowFn = std::function<int64_t(const SparseSource&, const float* q, int h, int64_t pos, SoftmaxState st,
                                    std::vector<int32_t>& visited, RowScratch& ws)>;

// parallel::run, or a plain loop on the calling thread when the whole call is below
// parallel::worth_threads(work) (a decode step over a short cache is not worth a fork/join).
template <class MakeState, class Body>
void run_items(int64_t n, int64_t work, MakeState&& make_state, Body&& body) {
  if (parallel::worth_threads(work)) return parallel::run(n, parallel::Schedule::dynamic, make_state, body);
  if (n == 0) return;
  auto state = make_state(0);
  for (int64_t i = 0; i < n; ++i) body(i, state);
}

// Runs row_fn over every (sequence, head, query) of the problem; stats[i] belongs to sequence i.
SparseResult sparse_forward(const Problem& p, const Tensor& q, const StoredRows& k, const StoredRows& v,
                            const std::vector<BlockStats>& stats, const RowFn& row_fn, bool token_level,
                            int64_t block_size);
// Same, for q against one cached sequence whose statistics are `stats` (single sequence problem).
SparseResult sparse_forward(const Problem& p, const Tensor& q, const StoredRows& k, const StoredRows& v,
                            const BlockStats& stats, const RowFn& row_fn, bool token_level, int64_t block_size);

// Helpers the row functions share.
// Attends the own block causally: keys [pos / B * B, pos].
int64_t attend_own_block(const SparseSource& src, Rows q, int g, int64_t pos, SoftmaxState st, RowScratch& ws);
// Attends full block j (all keys visible).
void attend_block(const SparseSource& src, Rows q, int g, int64_t j, SoftmaxState st, RowScratch& ws);
// attn::top_indices of score[0..count) appended to out.
void append_top_indices(const std::vector<float>& score, int64_t count, int64_t n, std::vector<int32_t>& out);
// Block selectors: the top_k - 1 of the full past blocks 0 .. own - 1 of KV head g for query q,
// appended ascending to `out`. Quest: by upper bound from the block min/max; MoBA: by q . mean.
using BlockSelector = void (*)(const SparseSource&, const float* q, int g, int64_t own, int64_t top_k, RowScratch& ws,
                               std::vector<int32_t>& out);
void select_quest_blocks(const SparseSource& src, const float* q, int g, int64_t own, int64_t top_k, RowScratch& ws,
                         std::vector<int32_t>& out);
void select_moba_blocks(const SparseSource& src, const float* q, int g, int64_t own, int64_t top_k, RowScratch& ws,
                        std::vector<int32_t>& out);
// The scores behind the selectors, for `rows` query rows of KV head g at once (a block's
// statistics read once for all of them): score[e * own + j] for the full blocks j < own.
using BlockScorer = void (*)(const SparseSource&, Rows q, int rows, int g, int64_t own, RowScratch& ws, float* score);
void quest_block_scores(const SparseSource& src, Rows q, int rows, int g, int64_t own, RowScratch& ws, float* score);
void moba_block_scores(const SparseSource& src, Rows q, int rows, int g, int64_t own, RowScratch& ws, float* score);
// Row function of the selecting methods: own block causally, then the selected blocks ascending.
int64_t selected_blocks_row(const SparseSource& src, const float* q, int h, int64_t pos, int64_t top_k,
                            BlockSelector select, SoftmaxState st, std::vector<int32_t>& visited, RowScratch& ws);
// Row function of token top-k.
int64_t topk_tokens_row(const SparseSource& src, const float* q, int h, int64_t pos, int64_t top_k, SoftmaxState st,
                        std::vector<int32_t>& visited, RowScratch& ws);
// Backward of a token-level result over exactly its visited keys: one item per (sequence, KV head)
// owns its dK/dV rows and its query heads' dQ rows.
AttentionGrads token_rows_backward(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const SparseResult& fwd, const Tensor& dout);

}  // namespace longctx::attn

namespace longctx {
enum class StopRule;
}

namespace longctx::attn {

// Per-row function of the mass threshold (threshold.cpp).
int64_t threshold_row(const SparseSource& src, const float* q, int h, int64_t pos, float tau, StopRule rule,
                      SoftmaxState st, std::vector<int32_t>& visited, RowScratch& ws);
// mean = sum / B of block j, KV head g, exactly as MoBA's prefill computes it.
void block_mean(const BlockStats& stats, int64_t j, int g, int d, float* mean);

}  // namespace longctx::attn
