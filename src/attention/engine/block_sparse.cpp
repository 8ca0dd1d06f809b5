#include "attention/engine/block_sparse.hpp"

#include <omp.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <tuple>

#include "attention/engine/top_indices.hpp"
#include "core/gemm.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx::attn {

BlockGrid::BlockGrid(const Problem& p, int64_t block_size) : B(block_size) {
  for (const Seq& s : p.seqs) {
    first.push_back(full_blocks);
    full_blocks += full(s);
    max_blocks = std::max(max_blocks, (s.lk + B - 1) / B);
  }
}

std::vector<Tile> own_block_tiles(const Problem& p, int64_t B) {
  std::vector<Tile> tiles;
  for (size_t si = 0; si < p.seqs.size(); ++si) {
    const Seq& s = p.seqs[si];
    for (int h = 0; h < p.hq; ++h)
      for (int64_t t = std::max<int64_t>(0, -s.offset()); t < s.lq;) {
        const int64_t pos = t + s.offset(), block_end = (pos / B + 1) * B;
        const int64_t len = std::min({kQueryTile, s.lq - t, block_end - pos});
        tiles.push_back({int32_t(si), h, t, len});
        t += len;
      }
  }
  return tiles;
}

// ---- gate ----

BlockFeatures block_features(const Problem& p, const BlockGrid& grid, const Tensor& k, BlockGate gate) {
  BlockFeatures feat{gate, gate == BlockGate::quest ? 2 * p.d : p.d, {}};
  std::vector<std::pair<int, int64_t>> blocks;  // (sequence, block)
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int64_t j = 0; j < grid.full(p.seqs[si]); ++j) blocks.push_back({int(si), j});
  feat.f.resize(size_t(grid.full_blocks) * p.hkv * feat.width);
  const int64_t B = grid.B;
  parallel::run(
      int64_t(blocks.size()), parallel::Schedule::dynamic, [&](int) { return std::vector<float>(B * p.d); },
      [&](int64_t i, std::vector<float>& scratch) {
        const auto [si, j] = blocks[size_t(i)];
        const Seq& s = p.seqs[size_t(si)];
        for (int g = 0; g < p.hkv; ++g) {
          float* f = &feat.f[size_t(((grid.first[size_t(si)] + j) * p.hkv + g) * feat.width)];
          const Rows kr = load_rows(k, s.k0 + j * B, B, g, scratch.data());
          if (gate == BlockGate::mean) {
            for (int64_t r = 0; r < B; ++r) simd::add_inplace(f, kr.row(r), p.d);
            simd::scale_inplace(f, p.d, 1.0f / float(B));
            continue;
          }
          float *mx = f, *mn = f + p.d;
          std::copy_n(kr.row(0), p.d, mx);
          std::copy_n(kr.row(0), p.d, mn);
          for (int64_t r = 1; r < B; ++r)
            for (int c = 0; c < p.d; ++c) mx[c] = std::max(mx[c], kr.row(r)[c]), mn[c] = std::min(mn[c], kr.row(r)[c]);
        }
      });
  return feat;
}

void gate_scores(const Problem& p, const BlockGrid& grid, const Tensor& q, const BlockFeatures& feat, const Tile& t,
                 int heads, int64_t own, GateScratch& ws) {
  const Seq& s = p.seqs[size_t(t.seq)];
  const float* f0 = &feat.f[size_t((grid.first[size_t(t.seq)] * p.hkv + p.kv_head(t.head)) * feat.width)];
  ws.q.resize(size_t(t.len * p.d));
  ws.score.resize(size_t(t.len * own));
  for (int e = 0; e < heads; ++e) {
    const Rows qr = load_rows(q, s.q0 + t.start, t.len, t.head + e, ws.q.data());
    gemm::Operand a = qr.operand(false);
    if (feat.gate == BlockGate::quest) {  // [max(q, 0) | min(q, 0)]
      ws.mapped.resize(size_t(t.len * 2 * p.d));
      for (int64_t r = 0; r < t.len; ++r) {
        float* m = &ws.mapped[size_t(r * 2 * p.d)];
        for (int c = 0; c < p.d; ++c) m[c] = std::max(qr.row(r)[c], 0.0f), m[p.d + c] = std::min(qr.row(r)[c], 0.0f);
      }
      a = {ws.mapped.data(), nullptr, 2 * p.d, false};
    }
    gemm::gemm(gemm::Precision::f32, t.len, own, feat.width, 1.0f, a,
               {f0, nullptr, int64_t(p.hkv) * feat.width, true}, e == 0 ? 0.0f : 1.0f, ws.score.data(), own);
  }
}

std::vector<int32_t> select_top_blocks(const Problem& p, const BlockGrid& grid, const Tensor& q,
                                       const BlockFeatures& feat, const std::vector<Tile>& tiles, int64_t slots,
                                       bool group_select) {
  std::vector<int32_t> selected(size_t(p.hq) * p.tq * slots, -1);
  if (slots == 0) return selected;
  // Gate tiles: consecutive own-block tiles of one (sequence, head) joined up to kGatherTile rows,
  // scored against the blocks before the last row's (each row then ranks only its own past): fewer,
  // taller products, each packing the block features once.
  std::vector<Tile> gate;
  for (const Tile& t : tiles) {
    Tile* last = gate.empty() ? nullptr : &gate.back();
    if (last && last->seq == t.seq && last->head == t.head && last->start + last->len == t.start &&
        last->len + t.len <= kGatherTile)
      last->len += t.len;
    else
      gate.push_back(t);
  }
  parallel::run(
      int64_t(gate.size()), parallel::Schedule::dynamic, [&](int) { return GateScratch{}; },
      [&](int64_t i, GateScratch& ws) {
        const Tile& t = gate[size_t(i)];
        const Seq& s = p.seqs[size_t(t.seq)];
        // with group_select the group's first head selects for all of its heads
        if (group_select && t.head % p.group != 0) return;
        const int heads = group_select ? p.group : 1;
        const int64_t most = (t.start + t.len - 1 + s.offset()) / grid.B;  // eligible blocks of the last row
        if (most > slots) gate_scores(p, grid, q, feat, t, heads, most, ws);
        for (int64_t r = 0; r < t.len; ++r) {
          const int64_t own = (t.start + r + s.offset()) / grid.B;  // blocks 0..own-1 are eligible
          int32_t* out = &selected[(size_t(t.head) * p.tq + s.q0 + t.start + r) * slots];
          if (own > slots)
            top_indices(&ws.score[size_t(r * most)], own, slots, out, &ws.rank);
          else
            std::iota(out, out + own, 0);
          for (int e = 1; e < heads; ++e)
            std::copy_n(out, slots, &selected[(size_t(t.head + e) * p.tq + s.q0 + t.start + r) * slots]);
        }
      });
  return selected;
}

// ---- selection ----

Selectors invert_selection(const Problem& p, const BlockGrid& grid, const QuerySelection& sel) {
  // units are tokens, heads inner: a list's rows come out ascending
  std::vector<int32_t> seq_of(size_t(p.tq));
  for (size_t si = 0; si < p.seqs.size(); ++si)
    std::fill_n(seq_of.begin() + p.seqs[si].q0, p.seqs[si].lq, int32_t(si));
  Selectors s;
  build_selectors(s, grid.full_blocks * p.hkv, p.tq, [&](int64_t r, auto&& emit) {
    const int64_t first = grid.first[size_t(seq_of[size_t(r)])] * p.hkv;
    for (int h = 0; h < p.hq; ++h) {
      const int64_t stat = int64_t(h) * p.tq + r, base = first + p.kv_head(h);
      for (int64_t e = sel.begin(stat); e < sel.end(stat); ++e)
        if (sel.blocks[e] >= 0) emit(base + sel.blocks[e] * p.hkv, r * p.hq + h);
    }
  });
  return s;
}

void gather_tiles(const Problem& p, const BlockGrid& grid, const Selectors& sel, std::vector<GatherTile>& tiles,
                  int64_t row_lo, int64_t row_hi) {
  tiles.clear();
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int64_t j = 0; j < grid.full(p.seqs[si]); ++j)
      for (int g = 0; g < p.hkv; ++g) {
        // a list's rows ascend: those in [row_lo, row_hi) are one run of it
        const int64_t list = (grid.first[si] + j) * p.hkv + g;
        const auto first = sel.rows.begin() + sel.offset[size_t(list)];
        const auto last = sel.rows.begin() + sel.offset[size_t(list) + 1];
        const int64_t begin = std::lower_bound(first, last, row_lo) - sel.rows.begin();
        const int64_t end = std::lower_bound(first, last, row_hi) - sel.rows.begin();
        for (int64_t b = begin; b < end; b += kGatherTile)
          tiles.push_back({int32_t(si), g, j, b, std::min(kGatherTile, end - b)});
      }
}

// ---- forward ----

RunningStates::RunningStates(const Problem& p, Tensor& out)
    : m(size_t(p.hq) * p.tq, -std::numeric_limits<float>::infinity()),
      l(m.size(), 0.0f),
      acc(out.f32()),
      ld(int64_t(p.hq) * p.d) {}

void PackedBlock::hold(const Problem& p, const BlockGrid& grid, const StoredRows& k, const StoredRows& v, int32_t seq_,
                       int g_, int64_t j_, TileScratch& ws) {
  if (seq == seq_ && g == g_ && j == j_) return;
  const int64_t B = grid.B, k0 = p.seqs[size_t(seq_)].k0 + j_ * B;
  tiles.resize(size_t((B + kKeyTile - 1) / kKeyTile));
  for (size_t i = 0; i < tiles.size(); ++i) {
    const int64_t first = int64_t(i) * kKeyTile, n = std::min(kKeyTile, B - first);
    tiles[i].pack(tile_rows(p, k, k0 + first, n, g_, ws.k.data()), tile_rows(p, v, k0 + first, n, g_, ws.v.data()), n,
                  p.d, p.products);
  }
  seq = seq_, g = g_, j = j_;
}

void attend_gathered(const Problem& p, const BlockGrid& grid, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Selectors& sel, const GatherTile& t, SoftmaxState part, TileScratch& ws, PackedBlock& keys) {
  keys.hold(p, grid, k, v, t.seq, t.g, t.j, ws);
  part.reset_fresh(t.len);
  const int64_t* rows = &sel.rows[size_t(t.pos)];
  Rows qr{ws.q.data(), p.d};
  if (q.dtype() == DType::f32 && p.products == gemm::Precision::f32)  // the products read the rows in place
    qr = {q.f32(), p.d, nullptr, rows};
  else
    gather_rows(q, rows, t.len, ws.q.data());
  for (size_t i = 0; i < keys.tiles.size(); ++i) {  // every key of the strictly-past block is visible
    tile_forward(qr, t.len, {}, {}, keys.tiles[i].kt.n(), p.d, p.scale, p.products, TileMask{}, part, ws.s.data(),
                 &keys.tiles[i]);
    part.fresh = false;
  }
}

namespace {

// The own block (causal) of tile t into the running states: as their first block (`fresh`: the
// rows start unset), or after the selected blocks, with the block's keys packed in `keys` when it
// is a full block (null: packed here).
void attend_own_block(const Problem& p, const BlockGrid& grid, const Tensor& q, const Tensor& k, const Tensor& v,
                      const Tile& t, bool fresh, const PackedBlock* keys, RunningStates& st, TileScratch& ws) {
  const Seq& s = p.seqs[size_t(t.seq)];
  const int64_t pos0 = t.start + s.offset(), stat = int64_t(t.head) * p.tq + s.q0 + t.start;
  const Rows qr = load_rows(q, s.q0 + t.start, t.len, t.head, ws.q.data());
  const SoftmaxState state{&st.m[size_t(stat)], &st.l[size_t(stat)], st.acc + ((s.q0 + t.start) * p.hq + t.head) * p.d,
                           st.ld, fresh};
  if (!fresh)  // rows that no selected block reached hold no key yet, and acc is unset there
    for (int64_t r = 0; r < t.len; ++r)
      if (state.l[r] == 0.0f) std::fill_n(state.acc + r * state.ld_acc, p.d, 0.0f);
  attend_key_range(p, s, k, v, p.kv_head(t.head), qr, t.len, pos0, pos0 / grid.B * grid.B, pos0 + t.len, state, ws,
                   false, keys ? keys->tiles.data() : nullptr);
}

// Flat query rows cut at token boundaries into `ranges` consecutive ranges of about equal work
// (`work` per flat row): range r is [bound[r], bound[r + 1]).
std::vector<int64_t> owner_ranges(const Problem& p, const std::vector<int32_t>& work, int ranges) {
  std::vector<int64_t> upto(size_t(p.tq) + 1, 0);  // work of the tokens before t
  for (int64_t t = 0; t < p.tq; ++t)
    upto[size_t(t) + 1] = upto[size_t(t)] + std::accumulate(&work[size_t(t * p.hq)], &work[size_t((t + 1) * p.hq)], int64_t(0));
  std::vector<int64_t> bound(size_t(ranges) + 1, int64_t(p.tq) * p.hq);
  for (int r = 0; r < ranges; ++r) {
    const int64_t target = (upto.back() * r + ranges - 1) / ranges;
    bound[size_t(r)] = (std::lower_bound(upto.begin(), upto.end(), target) - upto.begin()) * p.hq;
  }
  return bound;
}

// out = acc / l and lse = m + log l for `rows` query rows of one head from flat row `flat` on
// (consecutive tokens), after their last block (while the rows are in this core's cache).
void finalize_rows(const Problem& p, RunningStates& st, int64_t flat, int64_t rows, Tensor& lse) {
  SoftmaxState s = st.of_row(p, flat);
  s.ld_acc = st.ld;  // the next rows: the same head's next tokens
  tile_finalize(s, rows, p.d, s.acc, st.ld, lse.f32() + (flat % p.hq) * p.tq + flat / p.hq);
}

// Every block of the queries of flat rows [lo, hi), block after block in ascending order: the
// gathered tiles of block j (into fresh partial states merged at once into the running states of
// the later queries that chose it), then the own tiles of block j (its queries, whose selected
// blocks all come before j, are then complete: finalized when lse is given). A full block's keys
// are packed once for both.
void attend_range(const Problem& p, const BlockGrid& grid, const Tensor& q, const Tensor& k, const Tensor& v,
                  const std::vector<Tile>& own, const Selectors& sel, int64_t lo, int64_t hi, RunningStates& st,
                  TileScratch& ws, std::vector<float>& part, Tensor* lse) {
  std::vector<GatherTile> tiles;
  gather_tiles(p, grid, sel, tiles, lo, hi);
  // the own tiles cut to the range's tokens, in the order of the lists: (sequence, block, KV head)
  std::vector<Tile> mine;
  for (const Tile& t : own) {
    const int64_t q0 = p.seqs[size_t(t.seq)].q0;
    const int64_t a = std::max(t.start, lo / p.hq - q0), b = std::min(t.start + t.len, hi / p.hq - q0);
    if (a < b) mine.push_back({t.seq, t.head, a, b - a});
  }
  const auto block_of = [&](const Tile& t) { return (t.start + p.seqs[size_t(t.seq)].offset()) / grid.B; };
  const auto key = [&](const Tile& t) { return std::tuple(t.seq, block_of(t), p.kv_head(t.head), t.head, t.start); };
  std::sort(mine.begin(), mine.end(), [&](const Tile& x, const Tile& y) { return key(x) < key(y); });

  const SoftmaxState partial{ws.m.data(), ws.l.data(), part.data(), p.d};
  PackedBlock keys;
  size_t next_own = 0;
  const auto own_up_to = [&](int32_t seq, int64_t j, int g) {  // the own tiles ordered before (seq, j, g)
    for (; next_own < mine.size(); ++next_own) {
      const Tile& t = mine[next_own];
      const int64_t b = block_of(t);
      if (std::tuple(t.seq, b, p.kv_head(t.head)) > std::tuple(seq, j, g)) return;
      const bool full = b < grid.full(p.seqs[size_t(t.seq)]);
      if (full) keys.hold(p, grid, k, v, t.seq, p.kv_head(t.head), b, ws);
      attend_own_block(p, grid, q, k, v, t, false, full ? &keys : nullptr, st, ws);
      if (lse) finalize_rows(p, st, (p.seqs[size_t(t.seq)].q0 + t.start) * p.hq + t.head, t.len, *lse);
    }
  };
  for (const GatherTile& t : tiles) {
    own_up_to(t.seq, t.j, t.g - 1);  // a block's own tiles right after its lists of their KV head (one pack)
    attend_gathered(p, grid, q, k, v, sel, t, partial, ws, keys);
    const int64_t* rows = &sel.rows[size_t(t.pos)];
    constexpr int64_t kAhead = 8;  // running rows are scattered: prefetch them
    for (int64_t i = 0; i < t.len; ++i) {
      if (i + kAhead < t.len) prefetch_row(st.acc + rows[i + kAhead] * p.d, p.d);
      merge_state(st.of_row(p, rows[i]), 0, partial, i, p.d);
    }
  }
  own_up_to(std::numeric_limits<int32_t>::max(), 0, 0);
}

}  // namespace

void attend_blocks(const Problem& p, const BlockGrid& grid, const Tensor& q, const Tensor& k, const Tensor& v,
                   const std::vector<Tile>& own, const Selectors* sel, RunningStates& st, Tensor* lse) {
  const int threads = parallel::max_threads();
  std::vector<TileScratch> scratch;
  for (int t = 0; t < threads; ++t) scratch.emplace_back(kGatherTile, kKeyTile, p.d, false);
  if (!sel) {  // own blocks only, each the first (and last) of its queries
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (own.size() > 1)
    for (size_t i = 0; i < own.size(); ++i) {
      const Tile& t = own[i];
      attend_own_block(p, grid, q, k, v, t, true, nullptr, st, scratch[size_t(omp_get_thread_num())]);
      if (lse) finalize_rows(p, st, (p.seqs[size_t(t.seq)].q0 + t.start) * p.hq + t.head, t.len, *lse);
    }
  } else {
    // Each range of queries is one thread's (as many ranges as threads), so no two threads ever
    // touch one query's state; how the ranges cut the lists does not change a row's bits. Work per
    // row: its selected blocks, plus one for the own block.
    std::vector<int32_t> work(size_t(p.tq) * size_t(p.hq), 1);
    for (const int64_t row : sel->rows) ++work[size_t(row)];
    const std::vector<int64_t> bound = owner_ranges(p, work, threads);
#pragma omp parallel num_threads(threads)
    {
      const int thread = omp_get_thread_num(), team = omp_get_num_threads();
      std::vector<float> part(size_t(kGatherTile * p.d));
      for (int r = thread; r < threads; r += team)  // a smaller team than asked takes several ranges
        attend_range(p, grid, q, k, v, own, *sel, bound[size_t(r)], bound[size_t(r) + 1], st, scratch[size_t(thread)],
                     part, lse);
    }
  }
  if (lse)  // queries before their sequence's first key have no own block (and nothing selected)
    for (const Seq& s : p.seqs)
      for (int64_t t = 0; t < std::min(s.lq, -s.offset()); ++t)
        for (int h = 0; h < p.hq; ++h) finalize_rows(p, st, (s.q0 + t) * p.hq + h, 1, *lse);
}

void finalize_states(const Problem& p, RunningStates& st, Tensor& lse) {
#pragma omp parallel for schedule(static) if (parallel::worth_threads(p.tq * p.hq * p.d))
  for (int64_t row = 0; row < p.tq; ++row)
    for (int h = 0; h < p.hq; ++h) {
      const SoftmaxState s = st.of_row(p, row * p.hq + h);
      tile_finalize(s, 1, p.d, s.acc, p.d, lse.f32() + int64_t(h) * p.tq + row);
    }
}

// ---- backward ----

AttentionGrads block_sparse_backward(const Problem& p, const BlockGrid& grid, const BackwardInputs& in,
                                     const Selectors& sel) {
  AttentionGrads g{Tensor({p.tq, p.hq, p.d}), Tensor({p.tk, p.hkv, p.d}), Tensor({p.tk, p.hkv, p.d})};
  const int64_t B = grid.B;
  // Items: key tiles inside blocks, per (sequence, KV head); heaviest first.
  struct KTile {
    int32_t seq, g;
    int64_t j, start, len;
  };
  std::vector<KTile> all;
  std::vector<double> cost;
  for (size_t si = 0; si < p.seqs.size(); ++si) {
    const Seq& s = p.seqs[si];
    for (int gi = 0; gi < p.hkv; ++gi)
      for (int64_t j = 0; j * B < s.lk; ++j)
        for (int64_t kp = j * B; kp < std::min((j + 1) * B, s.lk); kp += kKeyTile) {
          const int64_t n = std::min({kKeyTile, (j + 1) * B - kp, s.lk - kp});
          const int64_t chosen = j < grid.full(s) ? sel.size((grid.first[si] + j) * p.hkv + gi) : 0;
          all.push_back({int32_t(si), gi, j, kp, n});
          cost.push_back(double(n) * double(chosen + p.group * std::min(B, s.lk - kp)));
        }
  }
  const std::vector<KTile> items = parallel::heaviest_first(all, cost);

  DqAccumulators dq_acc(g.dq, parallel::max_threads());
  const int64_t ld_kv = int64_t(p.hkv) * p.d;
  parallel::run(
      int64_t(items.size()), parallel::Schedule::cyclic,
      [&](int t) {
        return std::tuple(TileScratch(kGatherTile, kKeyTile, p.d, true), dq_acc.for_thread(t),
                          std::vector<float>(kGatherTile * p.d));
      },
      [&](int64_t i, auto& state) {
        auto& [ws, dq, dq_rows] = state;
        const KTile& it = items[size_t(i)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t kv_off = ((s.k0 + it.start) * p.hkv + it.g) * p.d;
        float *dk = g.dk.f32() + kv_off, *dv = g.dv.f32() + kv_off;
        // Own-block queries: positions in block j that see the tile (causal mask inside).
        int64_t lo, hi;
        rows_seeing_keys(p, s, it.start, it.len, lo, hi);
        lo = std::max(lo, it.j * B - s.offset());
        hi = std::min(hi, (it.j + 1) * B - s.offset());
        if (lo < hi) backward_key_tile(p, s, in, it.g, it.start, it.len, lo, hi, dk, dv, dq, ws);
        if (it.j >= grid.full(s)) return;
        // Queries that selected block j: all keys visible.
        const int64_t list = (grid.first[size_t(it.seq)] + it.j) * p.hkv + it.g, count = sel.size(list);
        const int64_t* rows = sel.rows.data() + sel.offset[size_t(list)];
        const Rows kr = tile_rows(p, in.k, s.k0 + it.start, it.len, it.g, ws.k.data());
        const Rows vr = tile_rows(p, in.v, s.k0 + it.start, it.len, it.g, ws.v.data());
        for (int64_t b = 0; b < count; b += kGatherTile) {
          const int64_t n = std::min(kGatherTile, count - b);
          gather_rows(in.q, rows + b, n, ws.q.data());
          gather_rows(in.dout, rows + b, n, ws.dout.data());
          for (int64_t e = 0; e < n; ++e) {
            const int64_t stat = (rows[b + e] % p.hq) * p.tq + rows[b + e] / p.hq;
            ws.lse[size_t(e)] = in.lse[stat];
            ws.delta[size_t(e)] = in.delta[stat];
          }
          std::fill_n(dq_rows.data(), n * p.d, 0.0f);
          tile_backward(Rows{ws.q.data(), p.d}, Rows{ws.dout.data(), p.d}, ws.lse.data(), ws.delta.data(), n, kr, vr,
                        it.len, p.d, p.scale, p.products, TileMask{}, dq_rows.data(), p.d, dk, dv, ld_kv, ws.s.data(),
                        ws.dp.data());
          for (int64_t e = 0; e < n; ++e) {
            if (e + 4 < n) prefetch_row(dq + rows[b + e + 4] * p.d, p.d);  // scattered rows
            simd::add_inplace(dq + rows[b + e] * p.d, &dq_rows[size_t(e * p.d)], p.d);
          }
        }
      });
  dq_acc.reduce();
  return g;
}

}  // namespace longctx::attn
