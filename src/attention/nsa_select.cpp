// NSA block selection (paper eqs. 8-11): importance of selection blocks from the compression
// branch's attention probabilities, shared by the query heads of a GQA group, then top-n.
#include "attention/nsa_internal.hpp"
#include "core/gemm.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx::attn::nsa {

namespace {

constexpr int64_t kSelectTile = 64;  // query positions per work item

// Top-n of the candidate blocks [0, own] into out (ascending, -1 padded to n): block 0 and the
// `local` latest blocks are forced; the others rank by importance, ties toward the later block.
void top_n(const float* imp, int64_t own, const Geometry& geo, std::vector<int64_t>& rest, int32_t* out) {
  std::fill_n(out, geo.n, -1);
  if (own + 1 <= geo.n) {
    for (int64_t j = 0; j <= own; ++j) out[j] = int32_t(j);
    return;
  }
  int64_t count = 0;
  rest.clear();
  for (int64_t j = 0; j <= own; ++j)
    if (j == 0 || own - j < geo.local)
      out[count++] = int32_t(j);
    else
      rest.push_back(j);
  const int64_t take = geo.n - count;
  std::partial_sort(rest.begin(), rest.begin() + take, rest.end(),
                    [&](int64_t a, int64_t b) { return imp[a] != imp[b] ? imp[a] > imp[b] : a > b; });
  for (int64_t c = 0; c < take; ++c) out[count++] = int32_t(rest[size_t(c)]);
  std::sort(out, out + count);
}

}  // namespace

std::vector<int32_t> select_blocks(const Problem& p, const Tensor& q, const CompressedView& c, const Geometry& geo,
                                   const AttentionResult& cmp) {
  std::vector<int32_t> sel(size_t(p.tq * p.hkv * geo.n), -1);
  struct Item {
    int32_t seq, g;
    int64_t start, len;
  };
  std::vector<Item> items;
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int g = 0; g < p.hkv; ++g)
      for (int64_t t = 0; t < p.seqs[si].lq; t += kSelectTile)
        items.push_back({int32_t(si), g, t, std::min(kSelectTile, p.seqs[si].lq - t)});

  struct State {
    std::vector<float> qbuf, s, imp_c, imp_b;
    std::vector<int64_t> rest;
  };
  parallel::run(
      int64_t(items.size()), parallel::Schedule::dynamic,
      [&](int) { return State{std::vector<float>(size_t(kSelectTile * p.d)), {}, {}, {}, {}}; },
      [&](int64_t idx, State& st) {
        const Item& it = items[size_t(idx)];
        const Seq& s = p.seqs[size_t(it.seq)];
        const int64_t nc = c.cu[size_t(it.seq) + 1] - c.cu[size_t(it.seq)], c0 = c.cu[size_t(it.seq)];
        const int64_t nv = geo.visible(it.start + it.len - 1 + s.offset(), nc);
        // imp_c[i][b]: probability mass on compressed block b summed over the group's heads.
        st.imp_c.assign(size_t(it.len * nv), 0.0f);
        st.s.resize(size_t(it.len * nv));
        for (int hh = 0; hh < p.group && nv > 0; ++hh) {
          const int h = it.g * p.group + hh;
          const Rows qr = load_rows(q, s.q0 + it.start, it.len, h, st.qbuf.data());
          gemm::sgemm(false, true, it.len, nv, p.d, 1.0f, qr.p, qr.ld, c.k + (c0 * p.hkv + it.g) * p.d,
                      int64_t(p.hkv) * p.d, 0.0f, st.s.data(), nv);
          for (int64_t i = 0; i < it.len; ++i) {
            const int64_t vis = geo.visible(it.start + i + s.offset(), nc);
            if (vis == 0) continue;
            float* si = &st.s[i * nv];
            simd::exp_scaled_sum(si, vis, p.scale, cmp.lse.f32()[int64_t(h) * p.tq + s.q0 + it.start + i]);
            simd::add_inplace(&st.imp_c[i * nv], si, vis);
          }
        }
        // Block b covers [b*stride, b*stride + l); selection block j gets the fraction of its l
        // tokens that fall inside [j*l', (j+1)*l').
        for (int64_t i = 0; i < it.len; ++i) {
          const int64_t t = it.start + i + s.offset(), own = t / geo.ls, vis = geo.visible(t, nc);
          st.imp_b.assign(size_t(own + 1), 0.0f);
          for (int64_t b = 0; b < vis; ++b) {
            const int64_t lo = b * geo.stride, hi = lo + geo.l;
            for (int64_t j = lo / geo.ls; j * geo.ls < hi; ++j) {
              const int64_t ov = std::min(hi, (j + 1) * geo.ls) - std::max(lo, j * geo.ls);
              st.imp_b[size_t(j)] += st.imp_c[i * nv + b] * float(ov) / float(geo.l);
            }
          }
          top_n(st.imp_b.data(), own, geo, st.rest, &sel[((s.q0 + it.start + i) * p.hkv + it.g) * geo.n]);
        }
      });
  return sel;
}

}  // namespace longctx::attn::nsa
