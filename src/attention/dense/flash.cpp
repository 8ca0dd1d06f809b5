#include <longctx/attention/dense/flash.hpp>
#include <longctx/core/error.hpp>

#include "attention/engine/tile_kernels.hpp"
#include "attention/engine/varlen.hpp"
#include "core/parallel.hpp"

namespace longctx {

using namespace attn;

namespace {

// Query tiles of every (sequence, head), heaviest (most visible keys) first.
std::vector<Tile> query_tiles(const Problem& p) {
  std::vector<Tile> items;
  std::vector<double> cost;
  for (size_t si = 0; si < p.seqs.size(); ++si) {
    const Seq& s = p.seqs[si];
    for (int h = 0; h < p.hq; ++h)
      for (int64_t t = 0; t < s.lq; t += kQueryTile) {
        const int64_t rows = std::min(kQueryTile, s.lq - t), last = t + rows - 1 + s.offset();
        items.push_back({int32_t(si), h, t, rows});
        cost.push_back(double(rows) * std::max<int64_t>(0, p.key_hi(last, s.lk) - p.key_lo(t + s.offset())));
      }
  }
  return parallel::heaviest_first(items, cost);
}

}  // namespace

AttentionResult flash_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Varlen& varlen, const AttentionOptions& opts) {
  const Problem p = make_problem("flash_attention_forward", q, k, v, varlen, opts);
  AttentionResult r{Tensor({p.tq, p.hq, p.d}), Tensor({p.hq, p.tq}), opts};
  const std::vector<Tile> items = query_tiles(p);
  const int64_t ld_out = int64_t(p.hq) * p.d;

  parallel::run(
      int64_t(items.size()), parallel::Schedule::dynamic,
      [&](int) { return TileScratch(kQueryTile, kKeyTile, p.d, false); },
      [&](int64_t i, TileScratch& ws) {
        const Tile& it = items[size_t(i)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t pos0 = it.start + s.offset(), last = pos0 + it.len - 1;
        const Rows qr = tile_rows(p, q, s.q0 + it.start, it.len, it.head, ws.q.data());
        float* out = r.out.f32() + ((s.q0 + it.start) * p.hq + it.head) * p.d;
        SoftmaxState st{ws.m.data(), ws.l.data(), out, ld_out};
        st.reset(it.len, p.d);
        const int64_t k_end = last >= 0 ? p.key_hi(last, s.lk) : 0;
        attend_key_range(p, s, k, v, p.kv_head(it.head), qr, it.len, pos0, p.key_lo(std::max<int64_t>(pos0, 0)),
                         k_end, st, ws);
        tile_finalize(st, it.len, p.d, out, ld_out, r.lse.f32() + int64_t(it.head) * p.tq + s.q0 + it.start);
      });
  return r;
}

AttentionGrads flash_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const AttentionResult& fwd, const Tensor& dout,
                                        const Varlen& varlen) {
  const AttentionOptions& opts = fwd.options;
  const char* who = "flash_attention_backward";
  const Problem p = make_problem(who, q, k, v, varlen, opts);
  check_f32_shape(who, "out", fwd.out, {p.tq, p.hq, p.d});
  check_f32_shape(who, "lse", fwd.lse, {p.hq, p.tq});
  check_f32_shape(who, "dout", dout, {p.tq, p.hq, p.d});
  AttentionGrads g{Tensor({p.tq, p.hq, p.d}), Tensor({p.tk, p.hkv, p.d}), Tensor({p.tk, p.hkv, p.d})};
  const std::vector<float> delta = rowsum_dout_out(dout, fwd.out);

  // Items: key tiles of every (sequence, KV head); each owns its dK/dV rows, dQ goes to
  // per-thread accumulators. Cost ~ query rows that see the tile.
  std::vector<Tile> tiles;
  std::vector<double> cost;
  for (size_t si = 0; si < p.seqs.size(); ++si) {
    const Seq& s = p.seqs[si];
    for (int kh = 0; kh < p.hkv; ++kh)
      for (int64_t kp = 0; kp < s.lk; kp += kKeyTile) {
        const int64_t n = std::min(kKeyTile, s.lk - kp);
        int64_t lo, hi;
        rows_seeing_keys(p, s, kp, n, lo, hi);
        tiles.push_back({int32_t(si), kh, kp, n});
        cost.push_back(double(hi - lo) * n);
      }
  }
  const std::vector<Tile> items = parallel::heaviest_first(tiles, cost);

  DqAccumulators dq_acc(g.dq, parallel::max_threads());
  const BackwardInputs in{q, k, v, dout, fwd.lse.f32(), delta.data()};
  parallel::run(
      int64_t(items.size()), parallel::Schedule::cyclic,
      [&](int t) { return std::pair(TileScratch(kQueryTile, kKeyTile, p.d, true), dq_acc.for_thread(t)); },
      [&](int64_t i, auto& state) {
        auto& [ws, dq] = state;
        const Tile& it = items[size_t(i)];
        const Seq& s = p.seqs[size_t(it.seq)];
        int64_t lo, hi;
        rows_seeing_keys(p, s, it.start, it.len, lo, hi);
        const int64_t kv_off = ((s.k0 + it.start) * p.hkv + it.head) * p.d;
        backward_key_tile(p, s, in, it.head, it.start, it.len, lo, hi, g.dk.f32() + kv_off, g.dv.f32() + kv_off,
                          dq, ws);
      });
  dq_acc.reduce();
  return g;
}

}  // namespace longctx
