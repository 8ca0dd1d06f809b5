// Decode and chunked prefill over a KV cache: dense (GQA group batched in decode) and the
// per-row sparse methods through the shared row engine.
#include <longctx/attention/decode.hpp>
#include <longctx/error.hpp>

#include <cmath>

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

// Dense attention of the q rows over the cache. Decode (one query) batches the GQA group's query
// heads as the rows of each tile; chunked prefill runs each head's query tile causally.
SparseResult dense_over_cache(const Problem& p, const Tensor& q, const KVCache& cache) {
  const Seq& s = p.seqs[0];
  SparseResult r;
  r.out = Tensor({p.tq, p.hq, p.d});
  r.lse = Tensor({p.hq, p.tq});
  r.row_offset.assign(size_t(p.hq) * size_t(p.tq) + 1, 0);
  const int64_t ld = int64_t(p.hq) * p.d;
  const bool decode = p.tq == 1;
  const int64_t per_head = decode ? 1 : (p.tq + kQueryTile - 1) / kQueryTile;
  const int64_t items = decode ? p.hkv : p.hq * per_head;
  const int64_t rows_max = decode ? p.group : kQueryTile;
  run_items(
      items, p.hq * p.tq * p.tk * p.d,
      [&](int) { return std::pair(TileScratch(rows_max, kKeyTile, p.d, false), std::vector<float>(size_t(rows_max) * p.d)); },
      [&](int64_t i, auto& state) {
        auto& [ws, lse] = state;
        const int h0 = decode ? int(i) * p.group : int(i / per_head);
        const int64_t t0 = decode ? 0 : (i % per_head) * kQueryTile;
        const int64_t rows = decode ? p.group : std::min(kQueryTile, p.tq - t0);
        // decode: rows are the group's heads of the one token, contiguous in [1, Hq, d]
        const Rows qr = decode ? Rows{nullptr, p.d} : load_rows(q, t0, rows, h0, ws.q.data());
        Rows qd = qr;
        if (decode) {
          for (int e = 0; e < p.group; ++e) {
            const Rows one = load_rows(q, 0, 1, h0 + e, ws.q.data() + e * p.d);
            if (one.p != ws.q.data() + e * p.d) std::copy_n(one.p, p.d, ws.q.data() + e * p.d);
          }
          qd = Rows{ws.q.data(), p.d};
        }
        float* out = r.out.f32() + (t0 * p.hq + h0) * p.d;
        const int64_t ld_out = decode ? p.d : ld;
        SoftmaxState st{ws.m.data(), ws.l.data(), out, ld_out};
        st.reset(rows, p.d);
        attend_key_range(p, s, cache.keys(), cache.values(), p.kv_head(h0), qd, rows, t0 + s.offset(), 0,
                         s.offset() + t0 + (decode ? 1 : rows), st, ws, decode);
        tile_finalize(st, rows, p.d, out, ld_out, lse.data());
        for (int64_t e = 0; e < rows; ++e)
          r.lse.f32()[decode ? int64_t(h0 + e) * p.tq : int64_t(h0) * p.tq + t0 + e] = lse[size_t(e)];
      });
  r.mean_keys = 0;
  for (int64_t t = 0; t < p.tq; ++t) r.mean_keys += double(s.offset() + t + 1);
  r.mean_keys /= double(p.tq);
  r.max_keys = s.lk;
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
        attend_key_range(p, s, cache.keys(), cache.values(), g, Rows{qg, p.d}, p.group, pos, own * B, pos + 1, st,
                         ws.tile, true);
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
              tile_forward(Rows{qg + e * p.d, p.d}, 1, kr, vr, n, p.d, p.scale, TileMask{},
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
