// The block-sparse engine of MoBA, block top-k and mass-threshold attention (docs/DESIGN.md
// "Block-sparse engine"). Keys are cut into blocks of B from each sequence's start (the last may
// be partial). A query attends its own block causally plus a selection of strictly past full
// blocks, with one softmax over the union:
//   gate: per own-block query tile, one GEMM of the tile's (mapped) queries against per-block
//     features (mean keys, or the Quest [max | min] bounds), then a one-pass top-n per row;
//   forward: block after block, each thread over the queries of its own range of tokens: the
//     queries that chose block j (per KV head) are gathered into tiles that attend it into a fresh
//     partial state, merged at once into the running states; then block j's own queries attend it
//     causally (their last block: they are finalized). Each query folds its blocks in ascending
//     order, own block last, on one thread (deterministic whatever the thread count), and block
//     j's keys are packed once for both;
//   backward: one item per (sequence, KV head, key tile) owns its dK/dV rows and takes the
//     own-block queries and the gathered selecting queries; dQ goes to per-thread accumulators.
// Clients choose the blocks: MoBA (moba.cpp), block top-k (sparse/topk.cpp) and the mass threshold
// (sparse/threshold.cpp, which runs the gathered tiles in rounds and merges in its own order).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention/engine/tile_kernels.hpp"
#include "attention/engine/varlen.hpp"
#include "core/parallel.hpp"

namespace longctx::attn {

// Full blocks of every sequence, numbered across sequences: block j of sequence s has id
// first[s] + j. Only full blocks can be selected; a partial last block is only ever an own block.
struct BlockGrid {
  int64_t B = 1;
  std::vector<int64_t> first;
  int64_t full_blocks = 0;  // ids in all
  int64_t max_blocks = 0;   // most blocks, full or partial, of one sequence
  BlockGrid(const Problem& p, int64_t block_size);
  int64_t full(const Seq& s) const { return s.lk / B; }
};

// Query tiles (sequence, query head, rows) that stay inside one key block, so that all their rows
// share an own block (and its past blocks): at most kQueryTile rows.
std::vector<Tile> own_block_tiles(const Problem& p, int64_t B);

// ---- gate ----

// What a block's gate score measures. mean: q . mean key (MoBA). quest: the Quest upper bound of
// q . k over the block (Tang et al., arXiv 2406.10774, sec. 3), sum_i max(q_i min_i, q_i max_i)
// = [max(q, 0) | min(q, 0)] . [max | min]: one product of width 2d.
enum class BlockGate { mean, quest };

// Per full block and KV head, the gate's feature row: f[(id * Hkv + g) * width ..], fp32.
struct BlockFeatures {
  BlockGate gate = BlockGate::mean;
  int width = 0;
  std::vector<float> f;
};
BlockFeatures block_features(const Problem& p, const BlockGrid& grid, const Tensor& k, BlockGate gate);

// Gate scores of tile t's rows against the full blocks 0 .. own - 1 of its sequence (KV head of
// t.head), summed in head order over the `heads` query heads t.head, t.head + 1, ...:
// score[r * own + j], unscaled. One GEMM per head. (A row whose own block comes earlier ignores the
// blocks it may not select.)
struct GateScratch {
  std::vector<float> q, mapped, score;
  std::vector<uint32_t> rank;  // top_indices' scratch
};
void gate_scores(const Problem& p, const BlockGrid& grid, const Tensor& q, const BlockFeatures& feat, const Tile& t,
                 int heads, int64_t own, GateScratch& ws);

// The top-`slots` past blocks of every (query head, query row) by gate score (ties toward the
// later block; all of them when fewer): selected[(h * Tq + row) * slots ..], ascending, -1 padded.
// group_select: one choice per KV head from the scores summed over its query heads.
std::vector<int32_t> select_top_blocks(const Problem& p, const BlockGrid& grid, const Tensor& q,
                                       const BlockFeatures& feat, const std::vector<Tile>& tiles, int64_t slots,
                                       bool group_select);

// ---- selection ----

// The past blocks each (query head h, query row) attends besides its own, sequence-local,
// ascending: entry range [begin(i), end(i)) of `blocks` for i = h * Tq + row; CSR (`offset`,
// Hq * Tq + 1 entries) or, with offset null, `slots` entries per row padded with -1.
struct QuerySelection {
  const int32_t* blocks = nullptr;
  const int64_t* offset = nullptr;
  int64_t slots = 0;
  int64_t begin(int64_t i) const { return offset ? offset[i] : i * slots; }
  int64_t end(int64_t i) const { return offset ? offset[i + 1] : (i + 1) * slots; }
};

// The selection block-major: list id * Hkv + g holds the flat query rows (token * Hq + head) that
// attend block id through KV head g, rows[offset[list] .. offset[list + 1]). Lists are ordered by
// id, so a query's blocks sit at increasing positions.
struct Selectors {
  std::vector<int64_t> offset, rows;
  int64_t size(int64_t list) const { return offset[size_t(list) + 1] - offset[size_t(list)]; }
};
Selectors invert_selection(const Problem& p, const BlockGrid& grid, const QuerySelection& sel);
// The same from any entries, grouped in `units` (queries, tokens): for_unit(u, emit) calls
// emit(list, flat_row) for each entry of unit u, the same entries in the same order each time (it
// is called twice). A list's rows come in unit order, whatever the thread count. With `at`,
// at[first_entry[u] + i] receives the position of unit u's i-th entry. Counting sort, the units
// split between the threads.
// `s` is overwritten (its buffers reused).
template <class ForUnit>
void build_selectors(Selectors& s, int64_t lists, int64_t units, ForUnit&& for_unit,
                     const int64_t* first_entry = nullptr, int64_t* at = nullptr) {
  s.offset.assign(size_t(lists) + 1, 0);
  const int threads = units >= 4096 ? parallel::max_threads() : 1;
  std::vector<int64_t> next(size_t(threads) * size_t(lists), 0);  // per thread and list: count, then position
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
    int64_t* mine = next.data() + size_t(t) * size_t(lists);
    for (int64_t u = u0; u < u1; ++u) for_unit(u, [&](int64_t list, int64_t) { ++mine[list]; });
#pragma omp barrier
#pragma omp single
    {
      int64_t pos = 0;
      for (int64_t list = 0; list < lists; ++list) {
        s.offset[size_t(list)] = pos;
        for (int th = 0; th < nt; ++th) {
          int64_t& n = next[size_t(th) * size_t(lists) + size_t(list)];
          const int64_t count = n;
          n = pos, pos += count;
        }
      }
      s.offset[size_t(lists)] = pos;
      s.rows.resize(size_t(pos));
    }
    for (int64_t u = u0; u < u1; ++u) {
      int64_t i = 0;
      for_unit(u, [&](int64_t list, int64_t row) {
        const int64_t pos = mine[list]++;
        s.rows[size_t(pos)] = row;
        if (at) at[first_entry[u] + i++] = pos;
      });
    }
  }
}

// A tile of gathered rows: rows[pos .. pos + len) of list id * Hkv + g, attending block j (id's
// index in sequence seq).
struct GatherTile {
  int32_t seq, g;
  int64_t j, pos, len;
};
// Rows of a gathered tile: one block's K/V is packed per tile, so taller tiles pack less often.
constexpr int64_t kGatherTile = 512;
// The tiles of every list, in list order (so positions increase), at most kGatherTile rows each,
// into `tiles` (overwritten); only the list rows in [row_lo, row_hi) (flat rows) when given.
void gather_tiles(const Problem& p, const BlockGrid& grid, const Selectors& sel, std::vector<GatherTile>& tiles,
                  int64_t row_lo = 0, int64_t row_hi = std::numeric_limits<int64_t>::max());

// ---- forward ----

// Softmax state of every (query head, query row) while its blocks are folded in: m, l [Hq, Tq];
// the accumulator rows live in the output tensor [Tq, Hq, d].
struct RunningStates {
  std::vector<float> m, l;
  float* acc;
  int64_t ld;
  RunningStates(const Problem& p, Tensor& out);
  // The state of flat query row (token * Hq + head).
  SoftmaxState of_row(const Problem& p, int64_t flat) {
    const size_t stat = size_t(flat % p.hq) * size_t(p.tq) + size_t(flat / p.hq);
    return {&m[stat], &l[stat], acc + flat * p.d, p.d};
  }
};

// One full block's keys packed for the products, kKeyTile keys per PackedKeys: a thread packs a
// block once for its gathered tiles of it and the own tiles of its queries.
struct PackedBlock {
  int32_t seq = -1, g = -1;
  int64_t j = -1;
  std::vector<PackedKeys> tiles;
  // Packs block j of sequence seq, KV head g, unless this already holds it.
  void hold(const Problem& p, const BlockGrid& grid, const StoredRows& k, const StoredRows& v, int32_t seq, int g,
            int64_t j, TileScratch& ws);
};

// Tile t's gathered queries attend block t.j from a fresh state into partial rows `part` (row i of
// part is gathered row i), with the block's keys packed in `keys` (packed here unless they already
// are). Runs on the calling thread.
void attend_gathered(const Problem& p, const BlockGrid& grid, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Selectors& sel, const GatherTile& t, SoftmaxState part, TileScratch& ws, PackedBlock& keys);

// Folds the own block (causal) of every query of `own` (own_block_tiles) and, if sel is given, the
// selected blocks into the states (see the top of this file). Without sel, the own blocks on all
// threads (dynamic schedule). With sel, each thread takes the queries of its own range of tokens,
// block after block: block j's gathered tiles, then the own tiles of block j (so a query folds
// its selected blocks in ascending order, then its own block, on one thread: deterministic), a
// full block's keys packed once for both. With `lse`, each query is finalized as finalize_states
// does right after its own block (while its rows are in cache): sel must then hold all of its blocks.
void attend_blocks(const Problem& p, const BlockGrid& grid, const Tensor& q, const Tensor& k, const Tensor& v,
                   const std::vector<Tile>& own, const Selectors* sel, RunningStates& st, Tensor* lse = nullptr);

// out = acc / l (in place) and lse = m + log l for every query.
void finalize_states(const Problem& p, RunningStates& st, Tensor& lse);

// ---- backward ----

// dQ, dK, dV over exactly the keys the forward attended (own block causally, plus sel).
AttentionGrads block_sparse_backward(const Problem& p, const BlockGrid& grid, const BackwardInputs& in,
                                     const Selectors& sel);

}  // namespace longctx::attn
