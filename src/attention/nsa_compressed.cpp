// NSA's compression branch on the shared online-softmax tile kernels.
// Query rows see a prefix of the compressed keys that grows by one every `stride` positions, so
// the tiles pass per-row visible key counts (TileMask::row_hi).
#include <longctx/error.hpp>

#include "attention/nsa_internal.hpp"
#include "attention/tile_kernels.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx::attn::nsa {

namespace {

// Query tiles of every (sequence, head) for the compression branch, heaviest first.
struct QueryTile {
  int32_t seq, head;
  int64_t start, len;
};

std::vector<QueryTile> compressed_tiles(const Problem& p, const CompressedView& c, const Geometry& geo) {
  std::vector<QueryTile> tiles;
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
  std::vector<QueryTile> ordered;
  for (int64_t i : parallel::heaviest_first(cost)) ordered.push_back(tiles[size_t(i)]);
  return ordered;
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

AttentionResult compressed_forward(const Problem& p, const Tensor& q, const CompressedView& c, const Geometry& geo) {
  AttentionResult r{Tensor({p.tq, p.hq, p.d}), Tensor({p.hq, p.tq})};
  const std::vector<QueryTile> tiles = compressed_tiles(p, c, geo);
  const int64_t ld_out = int64_t(p.hq) * p.d;
  parallel::run(
      int64_t(tiles.size()), parallel::Schedule::dynamic,
      [&](int) { return std::pair(TileScratch(kQueryTile, kKeyTile, p.d, false), std::vector<int64_t>(kQueryTile)); },
      [&](int64_t i, auto& state) {
        auto& [ws, hi] = state;
        const QueryTile& it = tiles[size_t(i)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t nc = c.cu[size_t(it.seq) + 1] - c.cu[size_t(it.seq)], c0 = c.cu[size_t(it.seq)];
        const int g = p.kv_head(it.head);
        for (int64_t j = 0; j < it.len; ++j) hi[j] = geo.visible(it.start + j + s.offset(), nc);
        const Rows qr = load_rows(q, s.q0 + it.start, it.len, it.head, ws.q.data());
        float* out = r.out.f32() + ((s.q0 + it.start) * p.hq + it.head) * p.d;
        SoftmaxState st{ws.m.data(), ws.l.data(), out, ld_out};
        st.reset(it.len, p.d);
        for (int64_t kp = 0; kp < hi[it.len - 1]; kp += kKeyTile) {
          const int64_t n = std::min(kKeyTile, hi[it.len - 1] - kp);
          tile_forward(qr, it.len, compressed_rows(c.k, p, c0 + kp, g), compressed_rows(c.v, p, c0 + kp, g), n, p.d,
                       p.scale, per_row_mask(kp, hi.data()), st, ws.s.data());
        }
        tile_finalize(st, it.len, p.d, out, ld_out, r.lse.f32() + int64_t(it.head) * p.tq + s.q0 + it.start);
      });
  return r;
}

void compressed_backward(const Problem& p, const Tensor& q, const CompressedView& c, const Geometry& geo,
                         const AttentionResult& fwd, const Tensor& dout, Tensor& dq, float* dkc, float* dvc) {
  const std::vector<float> delta = rowsum_dout_out(dout, fwd.out);
  const std::vector<QueryTile> tiles = compressed_tiles(p, c, geo);
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
        const QueryTile& it = tiles[size_t(i)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t nc = c.cu[size_t(it.seq) + 1] - c.cu[size_t(it.seq)], c0 = c.cu[size_t(it.seq)];
        const int g = p.kv_head(it.head);
        for (int64_t j = 0; j < it.len; ++j) hi[j] = geo.visible(it.start + j + s.offset(), nc);
        const int64_t row0 = s.q0 + it.start, stat = int64_t(it.head) * p.tq + row0;
        const Rows qr = load_rows(q, row0, it.len, it.head, ws.q.data());
        const Rows dor = load_rows(dout, row0, it.len, it.head, ws.dout.data());
        for (int64_t kp = 0; kp < hi[it.len - 1]; kp += kKeyTile) {
          const int64_t n = std::min(kKeyTile, hi[it.len - 1] - kp), off = ((c0 + kp) * p.hkv + g) * p.d;
          tile_backward(qr, dor, fwd.lse.f32() + stat, delta.data() + stat, it.len,
                        compressed_rows(c.k, p, c0 + kp, g), compressed_rows(c.v, p, c0 + kp, g), n, p.d, p.scale,
                        per_row_mask(kp, hi.data()), dq.f32() + (row0 * p.hq + it.head) * p.d, ld_q, dk + off,
                        dv + off, ld_kv, ws.s.data(), ws.dp.data());
        }
      });
  for (int t = 1; t < threads; ++t)
    for (int which = 0; which < 2; ++which) simd::add_inplace(acc_of(0, which), acc_of(t, which), tc * ld_kv);
}

}  // namespace longctx::attn::nsa
