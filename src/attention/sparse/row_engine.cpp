#include "attention/sparse/row_engine.hpp"

#include "attention/engine/top_indices.hpp"

#include <longctx/core/error.hpp>

#include <algorithm>
#include <numeric>

#include "attention/engine/decode_kernel.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx::attn {

namespace {

constexpr int64_t kRowsPerItem = 32;

// Calls fn(k_pos0, n) over [begin, end) in chunks of at most kKeyTile keys.
template <class Fn>
void for_key_chunks(int64_t begin, int64_t end, Fn&& fn) {
  for (int64_t kp = begin; kp < end; kp += kKeyTile) fn(kp, std::min(kKeyTile, end - kp));
}

}  // namespace

int64_t attend_own_block(const SparseSource& src, Rows q, int g, int64_t pos, SoftmaxState st, RowScratch& ws) {
  const int64_t begin = pos / src.B() * src.B();
  decode_attend_range(src.k, src.v, g, src.s.k0 + begin, src.s.k0 + pos + 1, q, 1, src.p.d, src.p.scale, st, ws.tile);
  return pos + 1 - begin;
}

void attend_block(const SparseSource& src, Rows q, int g, int64_t j, SoftmaxState st, RowScratch& ws) {
  decode_attend_range(src.k, src.v, g, src.s.k0 + j * src.B(), src.s.k0 + (j + 1) * src.B(), q, 1, src.p.d, src.p.scale,
                      st, ws.tile);
}

void append_top_indices(const std::vector<float>& score, int64_t count, int64_t n, std::vector<int32_t>& out) {
  const size_t at = out.size();
  out.resize(at + size_t(std::max<int64_t>(0, std::min(n, count))));
  top_indices(score.data(), count, n, out.data() + at);
}

void quest_block_scores(const SparseSource& src, Rows q, int rows, int g, int64_t own, RowScratch& ws, float* score) {
  for (int64_t j = 0; j < own; ++j) {
    const float *mn = src.stats.key_min(j, g), *mx = src.stats.key_max(j, g);
    for (int e = 0; e < rows; ++e) score[e * own + j] = quest_bound(q.row(e), mn, mx, src.p.d);
  }
}

void moba_block_scores(const SparseSource& src, Rows q, int rows, int g, int64_t own, RowScratch& ws, float* score) {
  for (int64_t j = 0; j < own; ++j) {
    block_mean(src.stats, j, g, src.p.d, ws.mean.data());  // once per block for all rows
    for (int e = 0; e < rows; ++e) score[e * own + j] = simd::dot(q.row(e), ws.mean.data(), src.p.d);
  }
}

void select_quest_blocks(const SparseSource& src, const float* q, int g, int64_t own, int64_t top_k, RowScratch& ws,
                         std::vector<int32_t>& out) {
  ws.score.resize(size_t(own));
  quest_block_scores(src, Rows{q, src.p.d}, 1, g, own, ws, ws.score.data());
  append_top_indices(ws.score, own, top_k - 1, out);
}

void select_moba_blocks(const SparseSource& src, const float* q, int g, int64_t own, int64_t top_k, RowScratch& ws,
                        std::vector<int32_t>& out) {
  ws.score.resize(size_t(own));
  moba_block_scores(src, Rows{q, src.p.d}, 1, g, own, ws, ws.score.data());
  append_top_indices(ws.score, own, top_k - 1, out);
}

int64_t selected_blocks_row(const SparseSource& src, const float* q, int h, int64_t pos, int64_t top_k,
                            BlockSelector select, SoftmaxState st, std::vector<int32_t>& visited, RowScratch& ws) {
  const int g = src.p.kv_head(h);
  const Rows qr{q, src.p.d};
  int64_t keys = attend_own_block(src, qr, g, pos, st, ws);
  const int64_t own = pos / src.B();  // blocks 0 .. own - 1 are full and strictly past
  if (top_k <= 1 || own == 0) return keys;
  const size_t first = visited.size();
  select(src, q, g, own, top_k, ws, visited);
  for (size_t i = first; i < visited.size(); ++i) {
    attend_block(src, qr, g, visited[i], st, ws);
    keys += src.B();
  }
  return keys;
}

int64_t topk_tokens_row(const SparseSource& src, const float* q, int h, int64_t pos, int64_t top_k, SoftmaxState st,
                        std::vector<int32_t>& visited, RowScratch& ws) {
  const int g = src.p.kv_head(h), d = src.p.d;
  const int64_t count = pos + 1;
  ws.score.resize(size_t(count));
  if (count > top_k)
    for_key_chunks(0, count, [&](int64_t kp, int64_t n) {
      const Rows kr = load_rows(src.k, src.s.k0 + kp, n, g, ws.tile.k.data());
      for (int64_t i = 0; i < n; ++i) ws.score[size_t(kp + i)] = simd::dot(q, kr.row(i), d);
    });
  const size_t first = visited.size();
  append_top_indices(ws.score, count, top_k, visited);
  const int64_t n_sel = int64_t(visited.size() - first);
  for_key_chunks(0, n_sel, [&](int64_t c, int64_t n) {
    ws.flat.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) ws.flat[size_t(i)] = (src.s.k0 + visited[first + size_t(c + i)]) * src.p.hkv + g;
    gather_rows(src.k, ws.flat.data(), n, ws.tile.k.data());
    gather_rows(src.v, ws.flat.data(), n, ws.tile.v.data());
    tile_forward(Rows{q, d}, 1, Rows{ws.tile.k.data(), d}, Rows{ws.tile.v.data(), d}, n, d, src.p.scale, src.p.products,
                 TileMask{}, st, ws.tile.s.data());
  });
  return n_sel;
}

namespace {

SparseResult run_rows(const Problem& p, const Tensor& q, const StoredRows& k, const StoredRows& v,
                      const std::function<const BlockStats&(size_t)>& stats_of, const RowFn& row_fn, bool token_level,
                      int64_t block_size) {
  SparseResult r;
  r.out = Tensor({p.tq, p.hq, p.d});
  r.lse = Tensor({p.hq, p.tq});
  r.token_level = token_level;
  r.block_size = block_size;
  r.scale = p.scale;
  const size_t rows = size_t(p.hq) * size_t(p.tq);
  std::vector<std::vector<int32_t>> visited(rows);
  std::vector<int64_t> keys(rows, 0);
  std::vector<Tile> items;
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int h = 0; h < p.hq; ++h)
      for (int64_t t = 0; t < p.seqs[si].lq; t += kRowsPerItem)
        items.push_back({int32_t(si), h, t, std::min(kRowsPerItem, p.seqs[si].lq - t)});
  const int64_t ld = int64_t(p.hq) * p.d;
  run_items(
      int64_t(items.size()), int64_t(rows) * p.tk * p.d, [&](int) { return RowScratch(p.d); },
      [&](int64_t i, RowScratch& ws) {
        const Tile& it = items[size_t(i)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const SparseSource src{p, s, k, v, stats_of(size_t(it.seq))};
        std::vector<float> qbuf(size_t(p.d));
        for (int64_t t = it.start; t < it.start + it.len; ++t) {
          const int64_t row = s.q0 + t, stat = int64_t(it.head) * p.tq + row, pos = t + s.offset();
          float* out = r.out.f32() + (row * p.hq + it.head) * p.d;
          SoftmaxState st{ws.tile.m.data(), ws.tile.l.data(), out, ld};
          st.reset(1, p.d);
          if (pos >= 0) {
            const Rows qr = load_rows(q, row, 1, it.head, qbuf.data());
            keys[size_t(stat)] = row_fn(src, qr.p, it.head, pos, st, visited[size_t(stat)], ws);
          }
          tile_finalize(st, 1, p.d, out, ld, r.lse.f32() + stat);
        }
      });
  r.row_offset.assign(rows + 1, 0);
  for (size_t i = 0; i < rows; ++i) r.row_offset[i + 1] = r.row_offset[i] + int64_t(visited[i].size());
  r.visited.reserve(size_t(r.row_offset.back()));
  for (const auto& vis : visited) r.visited.insert(r.visited.end(), vis.begin(), vis.end());
  double total = 0;
  for (int64_t c : keys) total += double(c), r.max_keys = std::max(r.max_keys, c);
  r.mean_keys = rows ? total / double(rows) : 0.0;
  return r;
}

}  // namespace

SparseResult sparse_forward(const Problem& p, const Tensor& q, const StoredRows& k, const StoredRows& v,
                            const std::vector<BlockStats>& stats, const RowFn& row_fn, bool token_level,
                            int64_t block_size) {
  return run_rows(p, q, k, v, [&](size_t si) -> const BlockStats& { return stats[si]; }, row_fn, token_level,
                  block_size);
}

SparseResult sparse_forward(const Problem& p, const Tensor& q, const StoredRows& k, const StoredRows& v,
                            const BlockStats& stats, const RowFn& row_fn, bool token_level, int64_t block_size) {
  return run_rows(p, q, k, v, [&](size_t) -> const BlockStats& { return stats; }, row_fn, token_level, block_size);
}

AttentionGrads token_rows_backward(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const SparseResult& fwd, const Tensor& dout) {
  AttentionGrads g{Tensor({p.tq, p.hq, p.d}), Tensor({p.tk, p.hkv, p.d}), Tensor({p.tk, p.hkv, p.d})};
  const std::vector<float> delta = rowsum_dout_out(dout, fwd.out);
  const int64_t ld_kv = int64_t(p.hkv) * p.d;

  struct Scratch {
    TileScratch ws;
    std::vector<float> dk, dv;
    std::vector<int64_t> flat;
  };
  // One item per (sequence, KV head): it owns those dK/dV rows and its query heads' dQ rows.
  parallel::run(
      int64_t(p.seqs.size()) * p.hkv, parallel::Schedule::dynamic,
      [&](int) {
        return Scratch{TileScratch(1, kKeyTile, p.d, true), std::vector<float>(size_t(kKeyTile) * p.d),
                       std::vector<float>(size_t(kKeyTile) * p.d), {}};
      },
      [&](int64_t item, Scratch& sc) {
        const Seq& s = p.seqs[size_t(item / p.hkv)];
        const int gi = int(item % p.hkv);
        TileScratch& ws = sc.ws;
        float* dk0 = g.dk.f32() + (s.k0 * p.hkv + gi) * p.d;
        float* dv0 = g.dv.f32() + (s.k0 * p.hkv + gi) * p.d;
        for (int h = gi * p.group; h < (gi + 1) * p.group; ++h)
          for (int64_t t = 0; t < s.lq; ++t) {
            const int64_t row = s.q0 + t, stat = int64_t(h) * p.tq + row;
            const float* lse = fwd.lse.f32() + stat;
            if (t + s.offset() < 0 || *lse == -std::numeric_limits<float>::infinity()) continue;
            const Rows qr = load_rows(q, row, 1, h, ws.q.data());
            const Rows dor{dout.f32() + (row * p.hq + h) * p.d, p.d};
            float* dq = g.dq.f32() + (row * p.hq + h) * p.d;
            const int32_t* vis = fwd.visited.data() + fwd.row_offset[size_t(stat)];
            const int64_t n_vis = fwd.row_offset[size_t(stat) + 1] - fwd.row_offset[size_t(stat)];
            for_key_chunks(0, n_vis, [&](int64_t c, int64_t n) {
              sc.flat.resize(size_t(n));
              for (int64_t i = 0; i < n; ++i) sc.flat[size_t(i)] = (s.k0 + vis[c + i]) * p.hkv + gi;
              gather_rows(k, sc.flat.data(), n, ws.k.data());
              gather_rows(v, sc.flat.data(), n, ws.v.data());
              std::fill_n(sc.dk.data(), n * p.d, 0.0f);
              std::fill_n(sc.dv.data(), n * p.d, 0.0f);
              tile_backward(qr, dor, lse, &delta[size_t(stat)], 1, Rows{ws.k.data(), p.d}, Rows{ws.v.data(), p.d}, n,
                            p.d, p.scale, p.products, TileMask{}, dq, p.d, sc.dk.data(), sc.dv.data(), p.d, ws.s.data(),
                            ws.dp.data());
              for (int64_t i = 0; i < n; ++i) {
                simd::add_inplace(dk0 + vis[c + i] * ld_kv, &sc.dk[size_t(i * p.d)], p.d);
                simd::add_inplace(dv0 + vis[c + i] * ld_kv, &sc.dv[size_t(i * p.d)], p.d);
              }
            });
          }
      });
  return g;
}

}  // namespace longctx::attn
