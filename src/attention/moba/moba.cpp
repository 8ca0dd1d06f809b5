// MoBA prefill (docs/DESIGN.md "MoBA"). Three passes over a problem:
//   1. gate: block mean keys per KV head, then per query tile the scores against the eligible
//      (strictly past, full) blocks (one GEMM) and a top-(k-1) per query (attn::top_indices,
//      one pass); only one tile's scores exist at a time, never a [blocks x heads x tokens] tensor.
//   2. own block: each query tile attends its own block causally (the dense tile loop).
//   3. selected blocks, KV block outer and its selecting queries inner: for each block index j,
//      the queries that chose j are gathered in tiles and attend block j into partial softmax
//      states, many blocks' tiles in parallel (waves); the partials merge into each query's
//      running state in block order (LSE merge), a fixed order.
// Backward: one item per (sequence, KV head, key tile) owns its dK/dV rows and takes both the
// own-block queries and the gathered selecting queries; dQ goes to per-thread accumulators.
#include <longctx/attention/moba/key_conv.hpp>
#include <longctx/attention/moba/moba.hpp>
#include <longctx/core/error.hpp>
#include <longctx/core/fields.hpp>

#include <algorithm>
#include <limits>
#include <numeric>

#include "attention/engine/tile_kernels.hpp"
#include "attention/engine/top_indices.hpp"
#include "attention/engine/varlen.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx {

using namespace attn;

namespace {

struct Moba {
  Problem p;
  int64_t B, slots;
  bool group_select;  // one selection per KV head from the scores summed over its query heads
  std::vector<int64_t> first_block;  // per sequence: index of its block 0 in the block arrays
  int64_t full_blocks(const Seq& s) const { return s.lk / B; }
  int64_t max_blocks = 0;            // most blocks (full or partial) of any sequence
};

Moba make_moba(const char* who, const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen,
               const MobaOptions& opts) {
  opts.validate(std::string(who) + ": ");
  AttentionOptions ao;
  ao.softmax_scale = opts.softmax_scale;
  Moba m{make_problem(who, q, k, v, varlen, ao), opts.block_size, opts.top_k - 1, opts.group_select, {}};
  int64_t blocks = 0;
  for (const Seq& s : m.p.seqs) {
    m.first_block.push_back(blocks);
    blocks += m.full_blocks(s);
    m.max_blocks = std::max(m.max_blocks, (s.lk + m.B - 1) / m.B);
  }
  // no query has more past blocks than the longest sequence: a huge top_k costs no memory
  m.slots = std::min(m.slots, std::max<int64_t>(m.max_blocks - 1, 0));
  return m;
}

// Mean key of every full block: [(first_block[s] + j) * Hkv + g][d], fp32.
std::vector<float> block_means(const Moba& m, const Tensor& k) {
  const Problem& p = m.p;
  std::vector<std::pair<int, int64_t>> blocks;  // (sequence, block)
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int64_t j = 0; j < m.full_blocks(p.seqs[si]); ++j) blocks.push_back({int(si), j});
  std::vector<float> means(blocks.size() * p.hkv * p.d);
  parallel::run(
      int64_t(blocks.size()), parallel::Schedule::dynamic, [&](int) { return std::vector<float>(m.B * p.d); },
      [&](int64_t i, std::vector<float>& scratch) {
        const auto [si, j] = blocks[size_t(i)];
        const Seq& s = p.seqs[size_t(si)];
        for (int g = 0; g < p.hkv; ++g) {
          float* mean = &means[((m.first_block[size_t(si)] + j) * p.hkv + g) * p.d];
          const Rows kr = load_rows(k, s.k0 + j * m.B, m.B, g, scratch.data());
          for (int64_t r = 0; r < m.B; ++r) simd::add_inplace(mean, kr.row(r), p.d);
          simd::scale_inplace(mean, p.d, 1.0f / float(m.B));
        }
      });
  return means;
}

// Query tiles (sequence, head, rows) that stay inside one block, so all rows share an own block.
std::vector<Tile> own_block_tiles(const Moba& m) {
  std::vector<Tile> tiles;
  for (size_t si = 0; si < m.p.seqs.size(); ++si) {
    const Seq& s = m.p.seqs[si];
    for (int h = 0; h < m.p.hq; ++h)
      for (int64_t t = std::max<int64_t>(0, -s.offset()); t < s.lq;) {
        const int64_t pos = t + s.offset(), block_end = (pos / m.B + 1) * m.B;
        const int64_t len = std::min({kQueryTile, s.lq - t, block_end - pos});
        tiles.push_back({int32_t(si), h, t, len});
        t += len;
      }
  }
  return tiles;
}

// Per query row: the top-(k-1) eligible blocks by q . mean, ascending, -1 padded. With
// group_select the scores of a KV head's query heads are summed in head order (as decode does)
// and the group's first head's tile selects for all of them.
struct GateScratch {
  std::vector<float> q, score;
};
std::vector<int32_t> select_blocks(const Moba& m, const Tensor& q, const std::vector<float>& means,
                                   const std::vector<Tile>& tiles) {
  const Problem& p = m.p;
  std::vector<int32_t> selected(size_t(p.hq) * p.tq * m.slots, -1);
  if (m.slots == 0) return selected;
  parallel::run(
      int64_t(tiles.size()), parallel::Schedule::dynamic,
      [&](int) { return GateScratch{std::vector<float>(kQueryTile * p.d), {}}; },
      [&](int64_t i, GateScratch& ws) {
        auto& [qbuf, score] = ws;
        const Tile& t = tiles[size_t(i)];
        const Seq& s = p.seqs[size_t(t.seq)];
        const int64_t own = (t.start + s.offset()) / m.B;  // blocks 0..own-1 are eligible
        if (own == 0 || (m.group_select && t.head % p.group != 0)) return;
        const int heads = m.group_select ? p.group : 1;  // query heads this tile selects for
        const float* mean0 = &means[(m.first_block[size_t(t.seq)] * p.hkv + p.kv_head(t.head)) * p.d];
        // the tile's gate scores q . mean for every eligible block, one fp32 product per head
        if (own > m.slots) {
          score.resize(size_t(t.len * own));
          for (int e = 0; e < heads; ++e) {
            const Rows qr = load_rows(q, s.q0 + t.start, t.len, t.head + e, qbuf.data());
            gemm::gemm(gemm::Precision::f32, t.len, own, p.d, 1.0f, qr.operand(false),
                       {mean0, nullptr, int64_t(p.hkv) * p.d, true}, e == 0 ? 0.0f : 1.0f, score.data(), own);
          }
        }
        for (int64_t r = 0; r < t.len; ++r) {
          int32_t* out = &selected[(size_t(t.head) * p.tq + s.q0 + t.start + r) * m.slots];
          if (own > m.slots)
            top_indices(&score[size_t(r * own)], own, m.slots, out);
          else
            std::iota(out, out + own, 0);
          for (int e = 1; e < heads; ++e)
            std::copy_n(out, m.slots, &selected[(size_t(t.head + e) * p.tq + s.q0 + t.start + r) * m.slots]);
        }
      });
  return selected;
}

// The queries that chose each block: for block id (first_block[s] + j) and KV head g, the flat
// query rows (token * Hq + head) in list[offset[(id * Hkv + g)] ..).
struct Selectors {
  std::vector<int64_t> offset, rows;
  std::pair<const int64_t*, int64_t> of(int64_t id) const {
    return {rows.data() + offset[size_t(id)], offset[size_t(id) + 1] - offset[size_t(id)]};
  }
};
Selectors invert_selection(const Moba& m, const std::vector<int32_t>& selected) {
  const Problem& p = m.p;
  const int64_t ids = (p.seqs.empty() ? 0 : m.first_block.back() + m.full_blocks(p.seqs.back())) * p.hkv;
  Selectors sel{std::vector<int64_t>(size_t(ids) + 1, 0), {}};
  auto for_each = [&](auto&& fn) {
    for (size_t si = 0; si < p.seqs.size(); ++si) {
      const Seq& s = p.seqs[si];
      for (int h = 0; h < p.hq; ++h)
        for (int64_t r = s.q0; r < s.q0 + s.lq; ++r)
          for (int64_t c = 0; c < m.slots; ++c) {
            const int32_t j = selected[(size_t(h) * p.tq + r) * m.slots + c];
            if (j >= 0) fn((m.first_block[si] + j) * p.hkv + p.kv_head(h), r * p.hq + h);
          }
    }
  };
  for_each([&](int64_t id, int64_t) { ++sel.offset[size_t(id) + 1]; });
  std::partial_sum(sel.offset.begin(), sel.offset.end(), sel.offset.begin());
  sel.rows.resize(size_t(sel.offset.back()));
  std::vector<int64_t> fill(sel.offset.begin(), sel.offset.end() - 1);
  for_each([&](int64_t id, int64_t row) { sel.rows[size_t(fill[size_t(id)]++)] = row; });
  return sel;
}

// Gathered rows per wave of the selected-block pass (at d = 128, 8.5 MB of partial states).
constexpr int64_t kWaveRows = 16384;

// A tile of gathered selecting queries of one block: (sequence, block j, KV head, list range).
struct GatherTile {
  int32_t seq, g;
  int64_t j, begin, len;
};
std::vector<GatherTile> gather_tiles(const Moba& m, const Selectors& sel, int64_t j) {
  std::vector<GatherTile> tiles;
  for (size_t si = 0; si < m.p.seqs.size(); ++si) {
    if (j >= m.full_blocks(m.p.seqs[si])) continue;
    for (int g = 0; g < m.p.hkv; ++g) {
      const int64_t n = sel.of((m.first_block[si] + j) * m.p.hkv + g).second;
      for (int64_t b = 0; b < n; b += kQueryTile) tiles.push_back({int32_t(si), g, j, b, std::min(kQueryTile, n - b)});
    }
  }
  return tiles;
}

}  // namespace

void MobaOptions::validate(const std::string& prefix) const {
  require(block_size > 0, prefix, "block_size", block_size, "> 0");
  require(top_k > 0, prefix, "top_k", top_k, "> 0");
  require(key_conv >= 0 && key_conv <= kMaxKeyConv, prefix, "key_conv", key_conv,
          "in [0, " + std::to_string(kMaxKeyConv) + "] (0: none)");
}

MobaResult moba_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& varlen,
                                  const MobaOptions& opts) {
  const Moba m = make_moba("moba_attention_forward", q, k, v, varlen, opts);
  const Problem& p = m.p;
  MobaResult r{{Tensor({p.tq, p.hq, p.d}), Tensor({p.hq, p.tq}), {}}, opts, {}, m.slots};
  const std::vector<Tile> tiles = own_block_tiles(m);
  r.selected = select_blocks(m, q, block_means(m, k), tiles);
  const Selectors sel = invert_selection(m, r.selected);

  // Running softmax state of every (head, query): max and sum [Hq, Tq], accumulator = r.out.
  std::vector<float> m_all(size_t(p.hq) * p.tq, -std::numeric_limits<float>::infinity()), l_all(m_all.size(), 0.0f);
  const int64_t ld_out = int64_t(p.hq) * p.d;
  auto scratch = [&](int) { return TileScratch(kQueryTile, kKeyTile, p.d, false); };

  // Own block, causal.
  parallel::run(int64_t(tiles.size()), parallel::Schedule::dynamic, scratch, [&](int64_t i, TileScratch& ws) {
    const Tile& t = tiles[size_t(i)];
    const Seq& s = p.seqs[size_t(t.seq)];
    const int64_t pos0 = t.start + s.offset(), stat = int64_t(t.head) * p.tq + s.q0 + t.start;
    const Rows qr = load_rows(q, s.q0 + t.start, t.len, t.head, ws.q.data());
    SoftmaxState st{&m_all[size_t(stat)], &l_all[size_t(stat)], r.out.f32() + ((s.q0 + t.start) * p.hq + t.head) * p.d,
                    ld_out};
    attend_key_range(p, s, k, v, p.kv_head(t.head), qr, t.len, pos0, pos0 / m.B * m.B, pos0 + t.len, st, ws);
  });

  // Selected blocks in waves: the (block, gathered tile) items, in block order, are cut into
  // waves of at most kWaveRows gathered rows. A wave's items run in parallel, each from a fresh
  // softmax state into its own partial rows; the partials then merge into each query's running
  // state in block order (a query selects a block at most once). One parallel region per wave
  // instead of per block keeps small blocks busy; the merge order is fixed, so results are
  // deterministic.
  struct Item {
    GatherTile t;
    int64_t partial;  // first partial row
  };
  std::vector<Item> items;
  for (int64_t j = 0; j < m.max_blocks; ++j)
    for (const GatherTile& t : gather_tiles(m, sel, j)) items.push_back({t, 0});
  std::vector<float> pm, pl, pacc;
  for (size_t w0 = 0; w0 < items.size();) {
    size_t w1 = w0;
    int64_t rows_in_wave = 0;
    while (w1 < items.size() && (w1 == w0 || rows_in_wave + items[w1].t.len <= kWaveRows)) {
      items[w1].partial = rows_in_wave;
      rows_in_wave += items[w1++].t.len;
    }
    pm.resize(size_t(rows_in_wave)), pl.resize(size_t(rows_in_wave)), pacc.resize(size_t(rows_in_wave * p.d));
    const SoftmaxState partials{pm.data(), pl.data(), pacc.data(), p.d};
    const auto rows_of = [&](const GatherTile& t) {
      return sel.of((m.first_block[size_t(t.seq)] + t.j) * p.hkv + t.g).first + t.begin;
    };
    parallel::run(int64_t(w1 - w0), parallel::Schedule::dynamic, scratch, [&](int64_t i, TileScratch& ws) {
      const Item& it = items[w0 + size_t(i)];
      const GatherTile& t = it.t;
      SoftmaxState st{pm.data() + it.partial, pl.data() + it.partial, pacc.data() + it.partial * p.d, p.d};
      st.reset(t.len, p.d);
      gather_rows(q, rows_of(t), t.len, ws.q.data());
      attend_key_range(p, p.seqs[size_t(t.seq)], k, v, t.g, Rows{ws.q.data(), p.d}, t.len, 0, t.j * m.B,
                       (t.j + 1) * m.B, st, ws, true);
    });
    // (query, partial row) in wave order, i.e. block order per query; stable-sorted by query.
    std::vector<std::pair<int64_t, int64_t>> merges;
    merges.reserve(size_t(rows_in_wave));
    for (size_t i = w0; i < w1; ++i) {
      const int64_t* rows = rows_of(items[i].t);
      for (int64_t e = 0; e < items[i].t.len; ++e) merges.push_back({rows[e], items[i].partial + e});
    }
    std::stable_sort(merges.begin(), merges.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<size_t> starts;  // first entry of each query
    for (size_t e = 0; e < merges.size(); ++e)
      if (e == 0 || merges[e].first != merges[e - 1].first) starts.push_back(e);
    starts.push_back(merges.size());
#pragma omp parallel for schedule(static) if (parallel::worth_threads(rows_in_wave * p.d))
    for (int64_t qi = 0; qi < int64_t(starts.size()) - 1; ++qi) {
      const size_t e0 = starts[size_t(qi)], e1 = starts[size_t(qi) + 1];
      const int64_t row = merges[e0].first, stat = (row % p.hq) * p.tq + row / p.hq;
      const SoftmaxState running{&m_all[size_t(stat)], &l_all[size_t(stat)], r.out.f32() + row * p.d, p.d};
      for (size_t e = e0; e < e1; ++e) merge_state(running, 0, partials, merges[e].second, p.d);
    }
    w0 = w1;
  }

  // out = acc / l, lse = m + log l.
#pragma omp parallel for schedule(static) if (parallel::worth_threads(p.tq * p.hq * p.d))
  for (int64_t row = 0; row < p.tq; ++row)
    for (int h = 0; h < p.hq; ++h) {
      const size_t stat = size_t(h) * p.tq + row;
      float* out = r.out.f32() + (row * p.hq + h) * p.d;
      tile_finalize(SoftmaxState{&m_all[stat], &l_all[stat], out, ld_out}, 1, p.d, out, ld_out, r.lse.f32() + stat);
    }
  return r;
}

AttentionGrads moba_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const MobaResult& fwd,
                                       const Tensor& dout, const Varlen& varlen) {
  const char* who = "moba_attention_backward";
  const Moba m = make_moba(who, q, k, v, varlen, fwd.moba);
  const Problem& p = m.p;
  check_f32_shape(who, "out", fwd.out, {p.tq, p.hq, p.d});
  check_f32_shape(who, "lse", fwd.lse, {p.hq, p.tq});
  check_f32_shape(who, "dout", dout, {p.tq, p.hq, p.d});
  LONGCTX_CHECK(fwd.slots == m.slots && fwd.selected.size() == size_t(p.hq) * p.tq * m.slots, who,
                ": the forward result's selection (", fwd.slots, " slots, ", fwd.selected.size(),
                " entries) does not match top_k = ", fwd.moba.top_k, " and ", p.hq, " heads x ", p.tq, " queries");
  AttentionGrads g{Tensor({p.tq, p.hq, p.d}), Tensor({p.tk, p.hkv, p.d}), Tensor({p.tk, p.hkv, p.d})};
  const std::vector<float> delta = rowsum_dout_out(dout, fwd.out);
  const Selectors sel = invert_selection(m, fwd.selected);
  const BackwardInputs in{q, k, v, dout, fwd.lse.f32(), delta.data()};

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
      for (int64_t j = 0; j * m.B < s.lk; ++j)
        for (int64_t kp = j * m.B; kp < std::min((j + 1) * m.B, s.lk); kp += kKeyTile) {
          const int64_t n = std::min({kKeyTile, (j + 1) * m.B - kp, s.lk - kp});
          const int64_t chosen = j < m.full_blocks(s) ? sel.of((m.first_block[si] + j) * p.hkv + gi).second : 0;
          all.push_back({int32_t(si), gi, j, kp, n});
          cost.push_back(double(n) * (chosen + p.group * std::min(m.B, s.lk - kp)));
        }
  }
  const std::vector<KTile> items = parallel::heaviest_first(all, cost);

  DqAccumulators dq_acc(g.dq, parallel::max_threads());
  const int64_t ld_kv = int64_t(p.hkv) * p.d;
  parallel::run(
      int64_t(items.size()), parallel::Schedule::cyclic,
      [&](int t) {
        return std::tuple(TileScratch(kQueryTile, kKeyTile, p.d, true), dq_acc.for_thread(t),
                          std::vector<float>(kQueryTile * p.d));
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
        lo = std::max(lo, it.j * m.B - s.offset());
        hi = std::min(hi, (it.j + 1) * m.B - s.offset());
        if (lo < hi) backward_key_tile(p, s, in, it.g, it.start, it.len, lo, hi, dk, dv, dq, ws);
        if (it.j >= m.full_blocks(s)) return;
        // Queries that selected block j: all keys visible.
        const auto [rows, count] = sel.of((m.first_block[size_t(it.seq)] + it.j) * p.hkv + it.g);
        const Rows kr = load_rows(k, s.k0 + it.start, it.len, it.g, ws.k.data());
        const Rows vr = load_rows(v, s.k0 + it.start, it.len, it.g, ws.v.data());
        for (int64_t b = 0; b < count; b += kQueryTile) {
          const int64_t n = std::min(kQueryTile, count - b);
          gather_rows(q, rows + b, n, ws.q.data());
          gather_rows(dout, rows + b, n, ws.dout.data());
          for (int64_t e = 0; e < n; ++e) {
            const int64_t stat = (rows[b + e] % p.hq) * p.tq + rows[b + e] / p.hq;
            ws.lse[size_t(e)] = fwd.lse.f32()[stat];
            ws.delta[size_t(e)] = delta[size_t(stat)];
          }
          std::fill_n(dq_rows.data(), n * p.d, 0.0f);
          tile_backward(Rows{ws.q.data(), p.d}, Rows{ws.dout.data(), p.d}, ws.lse.data(), ws.delta.data(), n, kr, vr,
                        it.len, p.d, p.scale, p.products, TileMask{}, dq_rows.data(), p.d, dk, dv, ld_kv, ws.s.data(),
                        ws.dp.data());
          for (int64_t e = 0; e < n; ++e) simd::add_inplace(dq + rows[b + e] * p.d, &dq_rows[size_t(e * p.d)], p.d);
        }
      });
  dq_acc.reduce();
  return g;
}

}  // namespace longctx
