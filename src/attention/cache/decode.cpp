// Decode and chunked prefill over a KV cache: dense (GQA group batched in decode) and the
// per-row sparse methods through the shared row engine.
#include <longctx/attention/cache/decode.hpp>
#include <longctx/core/error.hpp>

#include <cmath>
#include <limits>

#include "attention/cache/stored_rows.hpp"
#include "attention/engine/decode_kernel.hpp"
#include "attention/sparse/row_engine.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx {

using namespace attn;

namespace {

// Dense decode, Flash-Decoding style (Dao et al. 2023, split-KV decoding: partial results of key
// ranges merged by their LSE): the cache is split into one contiguous key range per
// thread; each range runs every KV head tile by tile (so the interleaved [T, Hkv, d] rows stream
// from memory once), with the GQA group's heads as the rows of each tile. The partial softmax
// states are merged in range order (deterministic for a fixed thread count).
void dense_decode(const Problem& p, const Tensor& q, const KVCache& cache, SparseResult& r) {
  const int64_t lk = p.seqs[0].lk, lo = p.key_lo(lk - 1), span = lk - lo;  // the visible keys
  const int64_t parts = std::clamp<int64_t>(span / (16 * kKeyTile), 1, parallel::max_threads());
  const StoredRows k = stored_keys(cache), v = stored_values(cache);
  const size_t states = size_t(parts) * size_t(p.hq);
  std::vector<float> m(states), l(states), acc(states * size_t(p.d));
  std::vector<float> qf(size_t(p.hq) * p.d);
  for (int h = 0; h < p.hq; ++h) {
    const Rows one = load_rows(q, 0, 1, h, &qf[size_t(h) * p.d]);
    if (one.p != &qf[size_t(h) * p.d]) std::copy_n(one.p, p.d, &qf[size_t(h) * p.d]);
  }
  run_items(
      parts, int64_t(p.hq) * span * p.d, [&](int) { return TileScratch(p.group, kKeyTile, p.d, false); },
      [&](int64_t part, TileScratch& ws) {
        const int64_t begin = lo + span * part / parts, end = lo + span * (part + 1) / parts;
        const size_t base = size_t(part) * size_t(p.hq);
        SoftmaxState all{&m[base], &l[base], &acc[base * size_t(p.d)], p.d};
        all.reset(p.hq, p.d);
        for (int64_t kp = begin; kp < end; kp += kKeyTile)
          for (int g = 0; g < p.hkv; ++g) {
            const size_t h0 = size_t(g) * size_t(p.group);
            decode_attend_range(k, v, g, kp, std::min(kp + kKeyTile, end),
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
  r.max_keys = 0;
  for (int64_t t = 0; t < p.tq; ++t) {
    const int64_t keys = s.offset() + t + 1 - p.key_lo(s.offset() + t);
    r.mean_keys += double(keys) / double(p.tq);
    r.max_keys = std::max(r.max_keys, keys);
  }
  if (p.tq == 1) {
    dense_decode(p, q, cache, r);
    return r;
  }
  const int64_t ld = int64_t(p.hq) * p.d, per_head = (p.tq + kQueryTile - 1) / kQueryTile;
  const StoredRows k = stored_keys(cache), v = stored_values(cache);
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
        attend_key_range(p, s, k, v, p.kv_head(h), qr, rows, t0 + s.offset(), p.key_lo(t0 + s.offset()),
                         s.offset() + t0 + rows, st, ws);
        tile_finalize(st, rows, p.d, out, ld, lse.data());
        std::copy_n(lse.data(), rows, r.lse.f32() + int64_t(h) * p.tq + t0);
      });
  return r;
}

// The selecting methods (MoBA, block top-k) one (query, KV head) item at a time: the group's query
// heads attend their shared own block as one tile; then each selected block is read once, in
// place, and folded into the states of all the heads that chose it in one kernel call. Per head the
// online-softmax order is the row path's (own block, then its blocks ascending). Selection is per
// query head, or with `group_select` one per group from the scores summed over its heads.
struct GroupedScratch {
  RowScratch rs;
  TileScratch tile;
  std::vector<float> score, sub_q, sub_m, sub_l, sub_acc;
  std::vector<std::pair<int32_t, int>> chosen;  // (block, head in group)
  GroupedScratch(const Problem& p) : rs(p.d), tile(p.group, kKeyTile, p.d, false) {
    sub_q.resize(size_t(p.group) * p.d), sub_m.resize(size_t(p.group)), sub_l.resize(size_t(p.group));
    sub_acc.resize(size_t(p.group) * p.d);
  }
};

// Block j of KV head g for the heads `chosen[c0, c1)` of the group whose states are `st`: all of
// them in place, or a subset gathered into compact rows and scattered back.
void attend_block_for(const Problem& p, const KVCache& cache, int g, int64_t j, const float* qg, SoftmaxState st,
                      size_t c0, size_t c1, GroupedScratch& ws) {
  const int64_t B = cache.block_size(), cnt = int64_t(c1 - c0);
  const StoredRows k = stored_keys(cache), v = stored_values(cache);
  if (cnt == p.group) {
    decode_attend_range(k, v, g, j * B, (j + 1) * B, Rows{qg, p.d}, cnt, p.d, p.scale, st,
                        ws.tile);
    return;
  }
  const SoftmaxState sub{ws.sub_m.data(), ws.sub_l.data(), ws.sub_acc.data(), p.d};
  for (int64_t i = 0; i < cnt; ++i) {
    const int e = ws.chosen[c0 + size_t(i)].second;
    std::copy_n(qg + e * p.d, p.d, &ws.sub_q[size_t(i * p.d)]);
    std::copy_n(st.acc + e * st.ld_acc, p.d, sub.acc + i * p.d);
    sub.m[i] = st.m[e], sub.l[i] = st.l[e];
  }
  decode_attend_range(k, v, g, j * B, (j + 1) * B, Rows{ws.sub_q.data(), p.d}, cnt, p.d,
                      p.scale, sub, ws.tile);
  for (int64_t i = 0; i < cnt; ++i) {
    const int e = ws.chosen[c0 + size_t(i)].second;
    std::copy_n(sub.acc + i * p.d, p.d, st.acc + e * st.ld_acc);
    st.m[e] = sub.m[i], st.l[e] = sub.l[i];
  }
}

SparseResult grouped_selected(const Problem& p, const Tensor& q, const KVCache& cache, int64_t top_k,
                              BlockScorer scorer, bool group_select) {
  const Seq& s = p.seqs[0];
  const int64_t B = cache.block_size();
  SparseResult r;
  r.out = Tensor({p.tq, p.hq, p.d});
  r.lse = Tensor({p.hq, p.tq});
  r.block_size = B;
  const size_t rows = size_t(p.hq) * size_t(p.tq);  // row i = h * tq + t
  std::vector<std::vector<int32_t>> sel(rows);
  std::vector<int64_t> keys(rows, 0);
  const StoredRows k = stored_keys(cache), v = stored_values(cache);
  run_items(
      p.tq * p.hkv, p.tq * p.hq * (top_k + 1) * B * p.d, [&](int) { return GroupedScratch(p); },
      [&](int64_t item, GroupedScratch& ws) {
        const int64_t t = item / p.hkv, pos = s.offset() + t, own = pos / B;
        const int g = int(item % p.hkv), h0 = g * p.group;
        auto row = [&](int e) { return size_t(h0 + e) * size_t(p.tq) + size_t(t); };
        const SparseSource src{p, s, k, v, cache.stats()};
        float* qg = ws.tile.q.data();
        for (int e = 0; e < p.group; ++e) {
          const Rows one = load_rows(q, t, 1, h0 + e, qg + e * p.d);
          if (one.p != qg + e * p.d) std::copy_n(one.p, p.d, qg + e * p.d);
        }
        float* out = r.out.f32() + (t * p.hq + h0) * p.d;
        SoftmaxState st{ws.tile.m.data(), ws.tile.l.data(), out, p.d};
        st.reset(p.group, p.d);
        decode_attend_range(k, v, g, own * B, pos + 1, Rows{qg, p.d}, p.group, p.d, p.scale, st,
                            ws.tile);
        ws.chosen.clear();
        if (top_k > 1 && own > 0) {
          ws.score.resize(size_t(p.group * own));
          scorer(src, Rows{qg, p.d}, p.group, g, own, ws.rs, ws.score.data());
          ws.rs.score.assign(ws.score.begin(), ws.score.begin() + own);
          for (int e = 0; e < p.group; ++e) {
            if (group_select) {  // summed in head order; one selection for the whole group
              if (e > 0) simd::add_inplace(ws.rs.score.data(), &ws.score[size_t(e * own)], own);
              if (e + 1 < p.group) continue;
              append_top_indices(ws.rs.score, own, top_k - 1, sel[row(0)]);
              for (int f = 1; f < p.group; ++f) sel[row(f)] = sel[row(0)];
            } else {
              if (e > 0) std::copy_n(&ws.score[size_t(e * own)], own, ws.rs.score.data());
              append_top_indices(ws.rs.score, own, top_k - 1, sel[row(e)]);
            }
          }
          for (int e = 0; e < p.group; ++e)
            for (int32_t j : sel[row(e)]) ws.chosen.push_back({j, e});
          std::sort(ws.chosen.begin(), ws.chosen.end());
        }
        for (size_t c0 = 0; c0 < ws.chosen.size();) {
          size_t c1 = c0;
          while (c1 < ws.chosen.size() && ws.chosen[c1].first == ws.chosen[c0].first) ++c1;
          attend_block_for(p, cache, g, ws.chosen[c0].first, qg, st, c0, c1, ws);
          c0 = c1;
        }
        std::vector<float> lse(size_t(p.group));
        tile_finalize(st, p.group, p.d, out, p.d, lse.data());
        for (int e = 0; e < p.group; ++e) {
          r.lse.f32()[row(e)] = lse[size_t(e)];
          keys[row(e)] = pos + 1 - own * B + int64_t(sel[row(e)].size()) * B;
        }
      });
  r.row_offset.assign(rows + 1, 0);
  for (size_t i = 0; i < rows; ++i) {
    r.row_offset[i + 1] = r.row_offset[i] + int64_t(sel[i].size());
    r.visited.insert(r.visited.end(), sel[i].begin(), sel[i].end());
    r.mean_keys += double(keys[i]) / double(rows);
    r.max_keys = std::max(r.max_keys, keys[i]);
  }
  return r;
}

}  // namespace

SparseResult attention_over_cache(const Tensor& q, const KVCache& cache, const AttentionSpec& spec) {
  const char* who = "attention_over_cache";
  LONGCTX_CHECK(q.ndim() == 3, who, ": q must be [q_len, heads, head_dim], got ", q.shape_str());
  LONGCTX_CHECK(q.dim(2) == cache.head_dim(), who, ": q head_dim ", q.dim(2), " differs from the cache's ",
                cache.head_dim());
  LONGCTX_CHECK(q.dim(1) > 0 && q.dim(1) % cache.kv_heads() == 0, who, ": query heads (", q.dim(1),
                ") must be a positive multiple of the cache's kv_heads (", cache.kv_heads(), ")");
  LONGCTX_CHECK(q.dim(0) >= 1 && q.dim(0) <= cache.size(), who, ": q_len must be in [1, cache size ", cache.size(),
                "], got ", q.dim(0), " (append the new tokens' K/V first)");
  const AttentionKind kind = spec.kind();
  LONGCTX_CHECK(kind != AttentionKind::nsa && kind != AttentionKind::infini, who, ": ", spec.name(),
                " decodes through its own state (nsa_decode_step, InfiniStream), not over a plain KV cache");
  spec.validate(std::string(who) + ": ");
  const float softmax_scale = spec.visit([](const auto& o) { return o.softmax_scale; });
  LONGCTX_CHECK(softmax_scale >= 0.0f && std::isfinite(softmax_scale), who,
                ": softmax_scale must be finite and >= 0 (0 = 1/sqrt(head_dim)), got ", softmax_scale);
  const bool block_topk = kind == AttentionKind::topk && !spec.get<TopkOptions>().token_level;
  const bool group_select = kind == AttentionKind::moba ? spec.get<MobaOptions>().group_select
                            : block_topk               ? spec.get<TopkOptions>().group_select
                                                       : false;
  const int64_t B = cache.block_size();
  LONGCTX_CHECK(spec.stats_block_size() == 0 || (cache.has_stats() && spec.stats_block_size() == B), who, ": ",
                spec.name(), " reads blocks of ", spec.stats_block_size(), " keys but the cache keeps statistics of ",
                cache.has_stats() ? concat("blocks of ", B) : std::string("no blocks"));
  Problem p;
  p.tq = q.dim(0);
  p.tk = cache.size();
  p.hq = int(q.dim(1));
  p.hkv = cache.kv_heads();
  p.d = cache.head_dim();
  p.group = p.hq / p.hkv;
  p.scale = softmax_scale > 0.0f ? softmax_scale : 1.0f / std::sqrt(float(p.d));
  p.seqs = {Seq{0, p.tq, 0, p.tk}};
  p.window = spec.window();
  const StoredRows k = stored_keys(cache), v = stored_values(cache);
  switch (kind) {
    case AttentionKind::moba:
    case AttentionKind::topk: {
      const int64_t top_k = kind == AttentionKind::moba ? spec.get<MobaOptions>().top_k : spec.get<TopkOptions>().top_k;
      if (kind == AttentionKind::topk && !block_topk)
        return sparse_forward(p, q, k, v, cache.stats(),
                              [top_k](const SparseSource& src, const float* qr, int h, int64_t pos, SoftmaxState st,
                                      std::vector<int32_t>& vis, RowScratch& ws) {
                                return topk_tokens_row(src, qr, h, pos, top_k, st, vis, ws);
                              },
                              true, 0);
      const BlockScorer scorer = kind == AttentionKind::moba ? moba_block_scores : quest_block_scores;
      if (p.tq == 1 || group_select) return grouped_selected(p, q, cache, top_k, scorer, group_select);
      const BlockSelector select = kind == AttentionKind::moba ? select_moba_blocks : select_quest_blocks;
      return sparse_forward(p, q, k, v, cache.stats(),
                            [top_k, select](const SparseSource& src, const float* qr, int h, int64_t pos,
                                            SoftmaxState st, std::vector<int32_t>& vis, RowScratch& ws) {
                              return selected_blocks_row(src, qr, h, pos, top_k, select, st, vis, ws);
                            },
                            false, B);
    }
    case AttentionKind::threshold: {
      const ThresholdOptions& o = spec.get<ThresholdOptions>();
      const float tau = o.tau;
      const StopRule rule = o.stop_rule;
      SparseResult r = sparse_forward(p, q, k, v, cache.stats(),
                                      [tau, rule](const SparseSource& src, const float* qr, int h, int64_t pos,
                                                  SoftmaxState st, std::vector<int32_t>& vis, RowScratch& ws) {
                                        return threshold_row(src, qr, h, pos, tau, rule, st, vis, ws);
                                      },
                                      false, B);
      r.stop_rule = enum_name(rule);
      return r;
    }
    case AttentionKind::full:
    case AttentionKind::nsa:
    case AttentionKind::infini: break;
  }
  return dense_over_cache(p, q, cache);
}

}  // namespace longctx
