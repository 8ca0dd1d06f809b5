// Decode and chunked prefill over a KV cache: dense (GQA group batched in decode) and the
// per-row sparse methods through the shared row engine.
#include <longctx/attention/decode.hpp>
#include <longctx/error.hpp>

#include <cmath>
#include <limits>

#include "attention/decode_kernel.hpp"
#include "attention/sparse_rows.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx {

using namespace attn;

const char* cache_method_name(CacheMethod m) {
  switch (m) {
    case CacheMethod::dense: return "dense";
    case CacheMethod::moba: return "moba";
    case CacheMethod::topk: return "topk";
    case CacheMethod::threshold: return "threshold";
  }
  return "?";
}

CacheMethod parse_cache_method(const std::string& name) {
  for (CacheMethod m : {CacheMethod::dense, CacheMethod::moba, CacheMethod::topk, CacheMethod::threshold})
    if (name == cache_method_name(m)) return m;
  LONGCTX_CHECK(false, "unknown cache attention method '", name, "' (dense, moba, topk, threshold)");
  return CacheMethod::dense;
}

namespace {

// Dense decode, flash-decoding style: the cache is split into one contiguous key range per
// thread; each range runs every KV head tile by tile (so the interleaved [T, Hkv, d] rows stream
// from memory once), with the GQA group's heads as the rows of each tile. The partial softmax
// states are merged in range order (deterministic for a fixed thread count).
void dense_decode(const Problem& p, const Tensor& q, const KVCache& cache, SparseResult& r) {
  const int64_t lk = p.seqs[0].lk;
  const int64_t parts = std::clamp<int64_t>(lk / (16 * kKeyTile), 1, parallel::max_threads());
  const size_t states = size_t(parts) * size_t(p.hq);
  std::vector<float> m(states), l(states), acc(states * size_t(p.d));
  std::vector<float> qf(size_t(p.hq) * p.d);
  for (int h = 0; h < p.hq; ++h) {
    const Rows one = load_rows(q, 0, 1, h, &qf[size_t(h) * p.d]);
    if (one.p != &qf[size_t(h) * p.d]) std::copy_n(one.p, p.d, &qf[size_t(h) * p.d]);
  }
  run_items(
      parts, int64_t(p.hq) * lk * p.d, [&](int) { return TileScratch(p.group, kKeyTile, p.d, false); },
      [&](int64_t part, TileScratch& ws) {
        const int64_t begin = lk * part / parts, end = lk * (part + 1) / parts;
        const size_t base = size_t(part) * size_t(p.hq);
        SoftmaxState all{&m[base], &l[base], &acc[base * size_t(p.d)], p.d};
        all.reset(p.hq, p.d);
        for (int64_t kp = begin; kp < end; kp += kKeyTile)
          for (int g = 0; g < p.hkv; ++g) {
            const size_t h0 = size_t(g) * size_t(p.group);
            decode_attend_range(cache.keys(), cache.values(), g, kp, std::min(kp + kKeyTile, end),
                                Rows{&qf[h0 * size_t(p.d)], p.d}, p.group, p.d, p.scale,
                                SoftmaxState{all.m + h0, all.l + h0, all.acc + h0 * size_t(p.d), p.d}, ws);
          }
      });
  // Flash-decoding reduction: parts 1.. merged into part 0 in range order, then normalised.
  const SoftmaxState first{m.data(), l.data(), acc.data(), p.d};
  for (int64_t part = 1; part < parts; ++part) {
    const size_t base = size_t(part) * size_t(p.hq);
    const SoftmaxState other{&m[base], &l[base], &acc[base * size_t(p.d)], p.d};
    for (int h = 0; h < p.hq; ++h) merge_state(first, h, other, h, p.d);
  }
  tile_finalize(first, p.hq, p.d, r.out.f32(), p.d, r.lse.f32());
}

// Dense attention of the q rows over the cache: decode as above; chunked prefill runs each
// head's query tile causally with the shared tile loop.
SparseResult dense_over_cache(const Problem& p, const Tensor& q, const KVCache& cache) {
  const Seq& s = p.seqs[0];
  SparseResult r;
  r.out = Tensor({p.tq, p.hq, p.d});
  r.lse = Tensor({p.hq, p.tq});
  r.row_offset.assign(size_t(p.hq) * size_t(p.tq) + 1, 0);
  r.mean_keys = 0;
  for (int64_t t = 0; t < p.tq; ++t) r.mean_keys += double(s.offset() + t + 1);
  r.mean_keys /= double(p.tq);
  r.max_keys = s.lk;
  if (p.tq == 1) {
    dense_decode(p, q, cache, r);
    return r;
  }
  const int64_t ld = int64_t(p.hq) * p.d, per_head = (p.tq + kQueryTile - 1) / kQueryTile;
  run_items(
      p.hq * per_head, p.hq * p.tq * p.tk * p.d,
      [&](int) { return std::pair(TileScratch(kQueryTile, kKeyTile, p.d, false), std::vector<float>(kQueryTile)); },
      [&](int64_t i, auto& state) {
        auto& [ws, lse] = state;
        const int h = int(i / per_head);
        const int64_t t0 = (i % per_head) * kQueryTile, rows = std::min(kQueryTile, p.tq - t0);
        const Rows qr = load_rows(q, t0, rows, h, ws.q.data());
        float* out = r.out.f32() + (t0 * p.hq + h) * p.d;
        SoftmaxState st{ws.m.data(), ws.l.data(), out, ld};
        st.reset(rows, p.d);
        attend_key_range(p, s, cache.keys(), cache.values(), p.kv_head(h), qr, rows, t0 + s.offset(), 0,
                         s.offset() + t0 + rows, st, ws);
        tile_finalize(st, rows, p.d, out, ld, lse.data());
        std::copy_n(lse.data(), rows, r.lse.f32() + int64_t(h) * p.tq + t0);
      });
  return r;
}

// Decode (one query) of the selecting methods, MoBA and block top-k: per KV head, the group's
// query heads attend their shared own block as one tile, then each block any of them selected is
// loaded (bf16 -> fp32) once and folded into the state of every head that chose it. Per head the
// order of the online softmax is the row path's (own block, then its blocks ascending).
SparseResult grouped_decode(const Problem& p, const Tensor& q, const KVCache& cache, int64_t top_k,
                            BlockSelector select) {
  const Seq& s = p.seqs[0];
  const int64_t B = cache.block_size(), pos = s.lk - 1, own = pos / B;
  SparseResult r;
  r.out = Tensor({1, p.hq, p.d});
  r.lse = Tensor({p.hq, 1});
  r.block_size = B;
  std::vector<std::vector<int32_t>> sel(size_t(p.hq));
  std::vector<int64_t> keys(size_t(p.hq), 0);
  struct State {
    RowScratch rs;
    TileScratch tile;
  };
  run_items(
      p.hkv, int64_t(p.hq) * (own + top_k * B) * p.d,
      [&](int) { return State{RowScratch(p.d), TileScratch(p.group, kKeyTile, p.d, false)}; },
      [&](int64_t item, State& ws) {
        const int g = int(item), h0 = g * p.group;
        const SparseSource src{p, s, cache.keys(), cache.values(), cache.stats()};
        float* qg = ws.tile.q.data();
        for (int e = 0; e < p.group; ++e) {
          const Rows one = load_rows(q, 0, 1, h0 + e, qg + e * p.d);
          if (one.p != qg + e * p.d) std::copy_n(one.p, p.d, qg + e * p.d);
        }
        float* out = r.out.f32() + int64_t(h0) * p.d;
        SoftmaxState st{ws.tile.m.data(), ws.tile.l.data(), out, p.d};
        st.reset(p.group, p.d);
        decode_attend_range(cache.keys(), cache.values(), g, own * B, pos + 1, Rows{qg, p.d}, p.group, p.d, p.scale, st,
                            ws.tile);
        std::vector<std::pair<int32_t, int>> chosen;  // (block, head in group), ascending
        for (int e = 0; e < p.group; ++e) {
          keys[size_t(h0 + e)] = pos + 1 - own * B;
          if (top_k <= 1 || own == 0) continue;
          select(src, qg + e * p.d, g, own, top_k, ws.rs, sel[size_t(h0 + e)]);
          for (int32_t j : sel[size_t(h0 + e)]) chosen.push_back({j, e});
        }
        std::sort(chosen.begin(), chosen.end());
        for (size_t c0 = 0; c0 < chosen.size();) {
          size_t c1 = c0;
          while (c1 < chosen.size() && chosen[c1].first == chosen[c0].first) ++c1;
          const int64_t j = chosen[c0].first;
          for (int64_t kp = j * B; kp < (j + 1) * B; kp += kKeyTile) {
            const int64_t n = std::min(kKeyTile, (j + 1) * B - kp);
            const Rows kr = load_rows(cache.keys(), kp, n, g, ws.tile.k.data());
            const Rows vr = load_rows(cache.values(), kp, n, g, ws.tile.v.data());
            for (size_t c = c0; c < c1; ++c) {
              const int e = chosen[c].second;
              decode_tile_forward(Rows{qg + e * p.d, p.d}, 1, kr, vr, n, p.d, p.scale,
                                  SoftmaxState{st.m + e, st.l + e, out + e * p.d, p.d}, ws.tile.s.data());
            }
          }
          for (size_t c = c0; c < c1; ++c) keys[size_t(h0 + chosen[c].second)] += B;
          c0 = c1;
        }
        std::vector<float> lse(size_t(p.group));
        tile_finalize(st, p.group, p.d, out, p.d, lse.data());
        for (int e = 0; e < p.group; ++e) r.lse.f32()[h0 + e] = lse[size_t(e)];
      });
  r.row_offset.assign(size_t(p.hq) + 1, 0);
  for (int h = 0; h < p.hq; ++h) {
    r.row_offset[size_t(h) + 1] = r.row_offset[size_t(h)] + int64_t(sel[size_t(h)].size());
    r.visited.insert(r.visited.end(), sel[size_t(h)].begin(), sel[size_t(h)].end());
    r.mean_keys += double(keys[size_t(h)]) / p.hq;
    r.max_keys = std::max(r.max_keys, keys[size_t(h)]);
  }
  return r;
}

}  // namespace

SparseResult attention_over_cache(const Tensor& q, const KVCache& cache, const CacheAttentionOptions& opts) {
  const char* who = "attention_over_cache";
  LONGCTX_CHECK(q.ndim() == 3, who, ": q must be [q_len, heads, head_dim], got ", q.shape_str());
  LONGCTX_CHECK(q.dim(2) == cache.head_dim(), who, ": q head_dim ", q.dim(2), " differs from the cache's ",
                cache.head_dim());
  LONGCTX_CHECK(q.dim(1) > 0 && q.dim(1) % cache.kv_heads() == 0, who, ": query heads (", q.dim(1),
                ") must be a positive multiple of the cache's kv_heads (", cache.kv_heads(), ")");
  LONGCTX_CHECK(q.dim(0) >= 1 && q.dim(0) <= cache.size(), who, ": q_len must be in [1, cache size ", cache.size(),
                "], got ", q.dim(0), " (append the new tokens' K/V first)");
  LONGCTX_CHECK(opts.top_k > 0, who, ": top_k must be > 0, got ", opts.top_k);
  LONGCTX_CHECK(opts.tau > 0.0f && opts.tau <= 1.0f, who, ": tau must be in (0, 1], got ", opts.tau);
  LONGCTX_CHECK(opts.softmax_scale >= 0.0f && std::isfinite(opts.softmax_scale), who,
                ": softmax_scale must be finite and >= 0 (0 = 1/sqrt(head_dim)), got ", opts.softmax_scale);
  Problem p;
  p.tq = q.dim(0);
  p.tk = cache.size();
  p.hq = int(q.dim(1));
  p.hkv = cache.kv_heads();
  p.d = cache.head_dim();
  p.group = p.hq / p.hkv;
  p.scale = opts.softmax_scale > 0.0f ? opts.softmax_scale : 1.0f / std::sqrt(float(p.d));
  p.seqs = {Seq{0, p.tq, 0, p.tk}};
  if (opts.method == CacheMethod::dense) return dense_over_cache(p, q, cache);

  const int64_t top_k = opts.top_k, B = cache.block_size();
  const float tau = opts.tau;
  const StopRule rule = opts.stop_rule;
  const Tensor &k = cache.keys(), &v = cache.values();
  switch (opts.method) {
    case CacheMethod::moba:
    case CacheMethod::topk: {
      if (opts.method == CacheMethod::topk && opts.token_level)
        return sparse_forward(p, q, k, v, cache.stats(),
                              [top_k](const SparseSource& src, const float* qr, int h, int64_t pos, SoftmaxState st,
                                      std::vector<int32_t>& vis, RowScratch& ws) {
                                return topk_tokens_row(src, qr, h, pos, top_k, st, vis, ws);
                              },
                              true, 0);
      const BlockSelector select = opts.method == CacheMethod::moba ? select_moba_blocks : select_quest_blocks;
      if (p.tq == 1) return grouped_decode(p, q, cache, top_k, select);
      return sparse_forward(p, q, k, v, cache.stats(),
                            [top_k, select](const SparseSource& src, const float* qr, int h, int64_t pos,
                                            SoftmaxState st, std::vector<int32_t>& vis, RowScratch& ws) {
                              return selected_blocks_row(src, qr, h, pos, top_k, select, st, vis, ws);
                            },
                            false, B);
    }
    case CacheMethod::threshold: {
      SparseResult r = sparse_forward(p, q, k, v, cache.stats(),
                                      [tau, rule](const SparseSource& src, const float* qr, int h, int64_t pos,
                                                  SoftmaxState st, std::vector<int32_t>& vis, RowScratch& ws) {
                                        return threshold_row(src, qr, h, pos, tau, rule, st, vis, ws);
                                      },
                                      false, B);
      r.stop_rule = stop_rule_name(rule);
      return r;
    }
    case CacheMethod::dense: break;
  }
  return dense_over_cache(p, q, cache);
}

}  // namespace longctx
