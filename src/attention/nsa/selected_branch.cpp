// NSA's selection branch: exact causal attention over each query's selected blocks, shared by
// the query heads of a GQA group. KV block outer, queries inner: a block's keys are loaded once
// and every (position, head) row of the group that chose it is gathered into one tile.
#include "attention/nsa/internal.hpp"
#include "attention/engine/tile_kernels.hpp"
#include "core/parallel.hpp"

namespace longctx::attn::nsa {

namespace {

// Forward: a work item holds up to kForwardRows (position, head) rows; its positions' selections
// overlap, so each chosen block is loaded once for all rows that chose it (bigger tiles than one
// position's). Backward: a block's choosers are processed kBackwardRows rows at a time.
constexpr int64_t kForwardRows = 1024;
constexpr int64_t kBackwardRows = 128;

struct Scratch {
  std::vector<float> q, dout, s, dp, k, v, m, l, acc, lse, delta, dq;
  std::vector<int64_t> hi;
  Scratch(int64_t rows, int64_t keys, int d, bool backward)
      : q(rows * d), s(rows * keys), k(keys * d), v(keys * d), m(rows), l(rows), acc(rows * d), hi(rows) {
    if (backward) {
      dout.resize(rows * d);
      dp.resize(rows * keys);
      lse.resize(rows);
      delta.resize(rows);
      dq.resize(rows * d);
    }
  }
};

TileMask causal_rows(int64_t k_pos0, const int64_t* hi) {
  TileMask m;
  m.k_pos0 = k_pos0;
  m.all = false;
  m.row_hi = hi;
  return m;
}

// Tile row r = hh * npos + c holds head g*group + hh of the query at sequence-local index pos[c].
void gather_group_rows(const Problem& p, const Seq& s, const Tensor& x, int g, const int64_t* pos, int64_t npos,
                       float* dst, std::vector<int64_t>& tokens) {
  tokens.resize(size_t(npos));
  for (int64_t c = 0; c < npos; ++c) tokens[c] = s.q0 + pos[c];
  for (int hh = 0; hh < p.group; ++hh) gather_rows(x, tokens.data(), npos, g * p.group + hh, dst + hh * npos * p.d);
}

}  // namespace

AttentionResult selected_forward(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Geometry& geo, const std::vector<int32_t>& sel) {
  AttentionResult r{Tensor({p.tq, p.hq, p.d}), Tensor({p.hq, p.tq}), {}};
  const int64_t chunk = std::max<int64_t>(1, kForwardRows / p.group), rows_max = chunk * p.group;
  std::vector<Tile> items;  // head = KV head: the group's query heads share the selection
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int g = 0; g < p.hkv; ++g)
      for (int64_t t = 0; t < p.seqs[si].lq; t += chunk)
        items.push_back({int32_t(si), g, t, std::min(chunk, p.seqs[si].lq - t)});

  struct State {
    Scratch ws;
    std::vector<float> m, l, acc, out, lse;  // running state of the item's rows: [position, head]
    std::vector<std::pair<int32_t, int64_t>> pairs;
    std::vector<int64_t> pos, tokens;
  };
  const int d = p.d;
  parallel::run(
      int64_t(items.size()), parallel::Schedule::dynamic,
      [&](int) {
        return State{Scratch(rows_max, geo.ls, d, false), std::vector<float>(rows_max), std::vector<float>(rows_max),
                     std::vector<float>(rows_max * d), std::vector<float>(rows_max * d), std::vector<float>(rows_max),
                     {}, {}, {}};
      },
      [&](int64_t idx, State& st) {
        const Tile& it = items[size_t(idx)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t R = it.len * p.group;
        SoftmaxState run{st.m.data(), st.l.data(), st.acc.data(), d};
        run.reset(R, d);
        // (block, position) pairs of the item, block-major.
        st.pairs.clear();
        for (int64_t i = it.start; i < it.start + it.len; ++i)
          for (int64_t c = 0; c < geo.n; ++c) {
            const int32_t j = sel[((s.q0 + i) * p.hkv + it.head) * geo.n + c];
            if (j >= 0) st.pairs.push_back({j, i});
          }
        std::sort(st.pairs.begin(), st.pairs.end());
        for (size_t a = 0; a < st.pairs.size();) {
          const int32_t j = st.pairs[a].first;
          st.pos.clear();
          for (; a < st.pairs.size() && st.pairs[a].first == j; ++a) st.pos.push_back(st.pairs[a].second);
          const int64_t np = int64_t(st.pos.size()), rows = np * p.group, k0 = int64_t(j) * geo.ls;
          const int64_t nk = std::min(geo.ls, s.lk - k0);
          gather_group_rows(p, s, q, it.head, st.pos.data(), np, st.ws.q.data(), st.tokens);
          // Gather the rows' running state; local row of (position i, head hh) = (i - start) * group + hh.
          for (int hh = 0; hh < p.group; ++hh)
            for (int64_t c = 0; c < np; ++c) {
              const int64_t r = hh * np + c, lr = (st.pos[c] - it.start) * p.group + hh;
              st.ws.m[r] = st.m[lr];
              st.ws.l[r] = st.l[lr];
              std::copy_n(&st.acc[lr * d], d, &st.ws.acc[r * d]);
              st.ws.hi[r] = st.pos[c] + s.offset() + 1;
            }
          const Rows kr = load_rows(k, s.k0 + k0, nk, it.head, st.ws.k.data());
          const Rows vr = load_rows(v, s.k0 + k0, nk, it.head, st.ws.v.data());
          tile_forward({st.ws.q.data(), d}, rows, kr, vr, nk, d, p.scale, p.products, causal_rows(k0, st.ws.hi.data()),
                       {st.ws.m.data(), st.ws.l.data(), st.ws.acc.data(), d}, st.ws.s.data());
          for (int hh = 0; hh < p.group; ++hh)
            for (int64_t c = 0; c < np; ++c) {
              const int64_t r = hh * np + c, lr = (st.pos[c] - it.start) * p.group + hh;
              st.m[lr] = st.ws.m[r];
              st.l[lr] = st.ws.l[r];
              std::copy_n(&st.ws.acc[r * d], d, &st.acc[lr * d]);
            }
        }
        tile_finalize(run, R, d, st.out.data(), d, st.lse.data());
        for (int64_t i = 0; i < it.len; ++i)
          for (int hh = 0; hh < p.group; ++hh) {
            const int64_t lr = i * p.group + hh, row = s.q0 + it.start + i, h = it.head * p.group + hh;
            std::copy_n(&st.out[lr * d], d, r.out.f32() + (row * p.hq + h) * d);
            r.lse.f32()[h * p.tq + row] = st.lse[lr];
          }
      });
  return r;
}

void selected_backward(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v, const Geometry& geo,
                       const std::vector<int32_t>& sel, const AttentionResult& fwd, const Tensor& dout,
                       AttentionGrads& g) {
  const std::vector<float> delta = rowsum_dout_out(dout, fwd.out);
  const int d = p.d;
  // Inverse of the selection: for every (sequence, KV head, block) the positions that chose it,
  // ascending (CSR). Each (sequence, KV head, block) item owns its dk/dv rows.
  struct BlockUsers {
    int32_t seq, g;
    int64_t block, begin, end;  // positions list[begin, end)
  };
  std::vector<BlockUsers> items;
  std::vector<double> cost;
  std::vector<int64_t> list;
  for (size_t si = 0; si < p.seqs.size(); ++si) {
    const Seq& s = p.seqs[si];
    const int64_t nb = geo.select_blocks(s.lk);
    for (int gh = 0; gh < p.hkv; ++gh) {
      std::vector<int64_t> count(size_t(nb + 1), 0);
      for (int64_t i = 0; i < s.lq; ++i)
        for (int64_t c = 0; c < geo.n; ++c) {
          const int32_t j = sel[((s.q0 + i) * p.hkv + gh) * geo.n + c];
          if (j >= 0) ++count[size_t(j) + 1];
        }
      for (int64_t j = 0; j < nb; ++j) count[j + 1] += count[j];
      const int64_t base = int64_t(list.size());
      list.resize(size_t(base + count[nb]));
      std::vector<int64_t> fill(count.begin(), count.end() - 1);
      for (int64_t i = 0; i < s.lq; ++i)
        for (int64_t c = 0; c < geo.n; ++c) {
          const int32_t j = sel[((s.q0 + i) * p.hkv + gh) * geo.n + c];
          if (j >= 0) list[size_t(base + fill[j]++)] = i;
        }
      for (int64_t j = 0; j < nb; ++j)
        if (count[j + 1] > count[j]) {
          items.push_back({int32_t(si), gh, j, base + count[j], base + count[j + 1]});
          cost.push_back(double(count[j + 1] - count[j]));
        }
    }
  }
  const std::vector<BlockUsers> ordered = parallel::heaviest_first(items, cost);

  g = {Tensor({p.tq, p.hq, d}), Tensor({p.tk, p.hkv, d}), Tensor({p.tk, p.hkv, d})};
  const int64_t chunk = std::max<int64_t>(1, kBackwardRows / p.group), rows_max = chunk * p.group;
  DqAccumulators dq_acc(g.dq, parallel::max_threads());
  parallel::run(
      int64_t(ordered.size()), parallel::Schedule::cyclic,
      [&](int t) { return std::tuple(Scratch(rows_max, geo.ls, d, true), dq_acc.for_thread(t), std::vector<int64_t>()); },
      [&](int64_t idx, auto& state) {
        auto& [ws, dq, tokens] = state;
        const BlockUsers& it = ordered[size_t(idx)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t k0 = it.block * geo.ls, nk = std::min(geo.ls, s.lk - k0);
        const Rows kr = load_rows(k, s.k0 + k0, nk, it.g, ws.k.data());
        const Rows vr = load_rows(v, s.k0 + k0, nk, it.g, ws.v.data());
        const int64_t kv_off = ((s.k0 + k0) * p.hkv + it.g) * d;
        for (int64_t b = it.begin; b < it.end; b += chunk) {
          const int64_t np = std::min(chunk, it.end - b), rows = np * p.group;
          const int64_t* pos = &list[size_t(b)];
          gather_group_rows(p, s, q, it.g, pos, np, ws.q.data(), tokens);
          gather_group_rows(p, s, dout, it.g, pos, np, ws.dout.data(), tokens);
          for (int hh = 0; hh < p.group; ++hh)
            for (int64_t c = 0; c < np; ++c) {
              const int64_t r = hh * np + c, stat = int64_t(it.g * p.group + hh) * p.tq + s.q0 + pos[c];
              ws.lse[r] = fwd.lse.f32()[stat];
              ws.delta[r] = delta[size_t(stat)];
              ws.hi[r] = pos[c] + s.offset() + 1;
            }
          std::fill_n(ws.dq.data(), rows * d, 0.0f);
          tile_backward({ws.q.data(), d}, {ws.dout.data(), d}, ws.lse.data(), ws.delta.data(), rows, kr, vr, nk, d,
                        p.scale, p.products, causal_rows(k0, ws.hi.data()), ws.dq.data(), d, g.dk.f32() + kv_off,
                        g.dv.f32() + kv_off, int64_t(p.hkv) * d, ws.s.data(), ws.dp.data());
          for (int hh = 0; hh < p.group; ++hh)
            for (int64_t c = 0; c < np; ++c) {
              float* dst = dq + ((s.q0 + pos[c]) * p.hq + it.g * p.group + hh) * d;
              const float* src = &ws.dq[(hh * np + c) * d];
              for (int e = 0; e < d; ++e) dst[e] += src[e];
            }
        }
      });
  dq_acc.reduce();
}

}  // namespace longctx::attn::nsa
