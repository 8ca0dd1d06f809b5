// NSA's compression branch on the shared online-softmax tile kernels, and the block selection
// its probabilities drive. Query rows see a prefix of the compressed keys that grows by one every
// `stride` positions, so the tiles pass per-row visible key counts (TileMask::row_hi).
#include <longctx/core/error.hpp>

#include "attention/nsa/internal.hpp"
#include "attention/engine/tile_kernels.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx::attn::nsa {

namespace {

// Query tiles of every (sequence, head) for the compression branch's backward, heaviest first.
std::vector<Tile> compressed_tiles(const Problem& p, const CompressedView& c, const Geometry& geo) {
  std::vector<Tile> tiles;
  std::vector<double> cost;
  for (size_t si = 0; si < p.seqs.size(); ++si) {
    const Seq& s = p.seqs[si];
    const int64_t nc = c.cu[si + 1] - c.cu[si];
    for (int h = 0; h < p.hq; ++h)
      for (int64_t t = 0; t < s.lq; t += kQueryTile) {
        const int64_t rows = std::min(kQueryTile, s.lq - t);
        tiles.push_back({int32_t(si), h, t, rows});
        cost.push_back(double(rows) * double(geo.visible(t + rows - 1 + s.offset(), nc) + 1));
      }
  }
  return parallel::heaviest_first(tiles, cost);
}

Rows compressed_rows(const float* base, const Problem& p, int64_t row, int g) {
  return {base + (row * p.hkv + g) * p.d, int64_t(p.hkv) * p.d};
}

TileMask per_row_mask(int64_t k_pos0, const int64_t* hi) {
  TileMask m;
  m.k_pos0 = k_pos0;
  m.all = false;
  m.row_hi = hi;
  return m;
}

}  // namespace

AttentionResult compressed_forward(const Problem& p, const Tensor& q, const CompressedView& c, const Geometry& geo,
                                   std::vector<int32_t>& selected) {
  AttentionResult r{Tensor({p.tq, p.hq, p.d}), Tensor({p.hq, p.tq}), {}};
  selected.assign(size_t(p.tq * p.hkv * geo.n), -1);
  // Items: (sequence, KV head, P positions) with the group's heads stacked, row = position * group
  // + head: the group's probabilities sum into one selection, and decode still fills a tile.
  const int64_t P = std::max<int64_t>(1, kQueryTile / p.group), R = P * p.group;
  std::vector<Tile> items;
  std::vector<double> cost;
  for (size_t si = 0; si < p.seqs.size(); ++si) {
    const Seq& s = p.seqs[si];
    for (int g = 0; g < p.hkv; ++g)
      for (int64_t t = 0; t < s.lq; t += P) {
        const int64_t len = std::min(P, s.lq - t);
        items.push_back({int32_t(si), g, t, len});
        cost.push_back(double(len) * double(geo.visible(t + len - 1 + s.offset(), c.cu[si + 1] - c.cu[si]) + 1));
      }
  }
  const std::vector<Tile> ordered = parallel::heaviest_first(items, cost);

  struct State {
    std::vector<float> q, m, l, acc, lse, s, imp_c, imp_b;
    std::vector<int64_t> hi, rest;
  };
  const int d = p.d, G = p.group;
  parallel::run(
      int64_t(ordered.size()), parallel::Schedule::dynamic,
      [&](int) {
        return State{std::vector<float>(size_t(R * d)), std::vector<float>(size_t(R)), std::vector<float>(size_t(R)),
                     std::vector<float>(size_t(R * d)), std::vector<float>(size_t(R)), {}, {}, {},
                     std::vector<int64_t>(size_t(R)), {}};
      },
      [&](int64_t idx, State& st) {
        const Tile& it = ordered[size_t(idx)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t nc = c.cu[size_t(it.seq) + 1] - c.cu[size_t(it.seq)], c0 = c.cu[size_t(it.seq)];
        const int64_t rows = it.len * G, nv = geo.visible(it.start + it.len - 1 + s.offset(), nc);
        for (int64_t i = 0; i < it.len; ++i) {
          const int64_t token = s.q0 + it.start + i;
          for (int hh = 0; hh < G; ++hh) {
            st.hi[i * G + hh] = geo.visible(it.start + i + s.offset(), nc);
            gather_rows(q, &token, 1, it.head * G + hh, &st.q[(i * G + hh) * d]);
          }
        }
        // All visible compressed keys in one tile: afterwards s = exp(scale * S - m) with m final,
        // so the probabilities the selection needs are s / l.
        SoftmaxState run{st.m.data(), st.l.data(), st.acc.data(), d};
        run.reset(rows, d);
        st.s.resize(size_t(rows * nv));
        if (nv > 0)
          tile_forward({st.q.data(), d}, rows, compressed_rows(c.k, p, c0, it.head),
                       compressed_rows(c.v, p, c0, it.head), nv, d, p.scale, p.products, per_row_mask(0, st.hi.data()),
                       run, st.s.data());
        tile_finalize(run, rows, d, st.acc.data(), d, st.lse.data());
        st.imp_c.assign(size_t(it.len * nv), 0.0f);
        for (int64_t i = 0; i < it.len; ++i)
          for (int hh = 0; hh < G; ++hh) {
            const int64_t row = i * G + hh, token = s.q0 + it.start + i, h = it.head * G + hh;
            std::copy_n(&st.acc[row * d], d, r.out.f32() + (token * p.hq + h) * d);
            r.lse.f32()[h * p.tq + token] = st.lse[row];
            if (st.l[row] > 0.0f) {
              const float inv = 1.0f / st.l[row];
              for (int64_t b = 0; b < st.hi[row]; ++b) st.imp_c[i * nv + b] += st.s[row * nv + b] * inv;
            }
          }
        for (int64_t i = 0; i < it.len; ++i) {
          const int64_t t = it.start + i + s.offset(), own = t / geo.ls;
          st.imp_b.resize(size_t(own + 1));
          block_importance(st.imp_c.data() + i * nv, st.hi[i * G], own, geo, st.imp_b.data());  // nv may be 0
          top_n(st.imp_b.data(), own, geo, st.rest, &selected[((s.q0 + it.start + i) * p.hkv + it.head) * geo.n]);
        }
      });
  return r;
}

void compressed_backward(const Problem& p, const Tensor& q, const CompressedView& c, const Geometry& geo,
                         const AttentionResult& fwd, const Tensor& dout, Tensor& dq, float* dkc, float* dvc) {
  const std::vector<float> delta = rowsum_dout_out(dout, fwd.out);
  const std::vector<Tile> tiles = compressed_tiles(p, c, geo);
  const int threads = parallel::max_threads();
  const int64_t tc = c.cu.back(), ld_q = int64_t(p.hq) * p.d, ld_kv = int64_t(p.hkv) * p.d;
  // Each tile owns its dq rows; dkc/dvc go to per-thread buffers summed in thread order after a
  // cyclic schedule (deterministic). Thread 0 accumulates straight into dkc/dvc.
  std::vector<std::vector<float>> extra(size_t(2 * (threads - 1)), std::vector<float>(size_t(tc * ld_kv)));
  auto acc_of = [&](int t, int which) {
    return t == 0 ? (which ? dvc : dkc) : extra[size_t(2 * (t - 1) + which)].data();
  };
  parallel::run(
      int64_t(tiles.size()), parallel::Schedule::cyclic,
      [&](int t) {
        return std::tuple(TileScratch(kQueryTile, kKeyTile, p.d, true), std::vector<int64_t>(kQueryTile), acc_of(t, 0),
                          acc_of(t, 1));
      },
      [&](int64_t i, auto& state) {
        auto& [ws, hi, dk, dv] = state;
        const Tile& it = tiles[size_t(i)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t nc = c.cu[size_t(it.seq) + 1] - c.cu[size_t(it.seq)], c0 = c.cu[size_t(it.seq)];
        const int g = p.kv_head(it.head);
        for (int64_t j = 0; j < it.len; ++j) hi[j] = geo.visible(it.start + j + s.offset(), nc);
        const int64_t row0 = s.q0 + it.start, stat = int64_t(it.head) * p.tq + row0;
        const Rows qr = load_rows(q, row0, it.len, it.head, ws.q.data());
        const Rows dor = load_rows(dout, row0, it.len, it.head, ws.dout.data());
        for (int64_t kp = 0; kp < hi[it.len - 1]; kp += kKeyTile) {
          const int64_t n = std::min(kKeyTile, hi[it.len - 1] - kp), off = ((c0 + kp) * p.hkv + g) * p.d;
          tile_backward(qr, dor, fwd.lse.f32() + stat, delta.data() + stat, it.len, compressed_rows(c.k, p, c0 + kp, g),
                        compressed_rows(c.v, p, c0 + kp, g), n, p.d, p.scale, p.products, per_row_mask(kp, hi.data()),
                        dq.f32() + (row0 * p.hq + it.head) * p.d, ld_q, dk + off, dv + off, ld_kv, ws.s.data(),
                        ws.dp.data());
        }
      });
  for (int t = 1; t < threads; ++t)
    for (int which = 0; which < 2; ++which) simd::add_inplace(acc_of(0, which), acc_of(t, which), tc * ld_kv);
}

}  // namespace longctx::attn::nsa
