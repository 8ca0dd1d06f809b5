#include <longctx/attention/cache/cascade_pruning.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>
#include <numeric>

#include "attention/cache/stored_rows.hpp"
#include "attention/engine/decode_kernel.hpp"
#include "attention/sparse/row_engine.hpp"
#include "core/simd.hpp"

namespace longctx {

using namespace attn;

int64_t CascadePruningOptions::step_chunk() const {
  if (chunk > 0 || budget.empty()) return chunk;
  const int64_t smallest = *std::min_element(budget.begin(), budget.end());
  return std::clamp<int64_t>(smallest / 4, 1, 256);
}

void CascadePruningOptions::validate(int64_t layers) const {
  const std::string p = "cascade pruning: ";
  require(window >= 1, p, "window", window, ">= 1");
  require(sink >= 0, p, "sink", sink, ">= 0");
  require(chunk >= 0, p, "chunk", chunk, ">= 0 (0: a quarter of the smallest budget, at most 256)");
  LONGCTX_CHECK(budget.size() == 1 || int64_t(budget.size()) == layers, p, "budget needs one value or one per layer (",
                layers, "), got ", budget.size());
  const int64_t need = sink + std::max(window, step_chunk());
  for (size_t l = 0; l < budget.size(); ++l) {
    LONGCTX_CHECK(budget[l] >= need, p, "budget ", budget[l], " must be >= sink ", sink, " + max(window ", window,
                  ", chunk ", step_chunk(), ") = ", need, " (the tokens a step may not prune)");
    LONGCTX_CHECK(l == 0 || budget[l] <= budget[l - 1], p, "budgets must not grow with depth (a token pruned at a "
                  "layer is gone from the later ones), got ", budget[l - 1], " then ", budget[l]);
  }
}

void add_attention_mass(const Tensor& q, const Tensor& lse, const KVCache& cache, float scale,
                        std::vector<double>& mass) {
  const int64_t n = q.dim(0), hq = q.dim(1), size = cache.size();
  const int hkv = cache.kv_heads(), d = cache.head_dim(), group = int(hq / hkv);
  LONGCTX_CHECK(q.ndim() == 3 && q.dim(2) == d && hq % hkv == 0 && n >= 1 && n <= size,
                "add_attention_mass: q must be [n <= ", size, ", heads, ", d, "], got ", q.shape_str());
  LONGCTX_CHECK(lse.ndim() == 2 && lse.dim(0) == hq && lse.dim(1) == n, "add_attention_mass: lse must be [", hq, ", ",
                n, "], got ", lse.shape_str());
  LONGCTX_CHECK(int64_t(mass.size()) >= size, "add_attention_mass: mass holds ", mass.size(), " rows, the cache ", size);
  const StoredRows k = stored_keys(cache);
  std::vector<float> qs(size_t(n * hq * d));  // q as fp32, [n, Hq, d]
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < hq; ++h) {
      const Rows one = load_rows(q, t, 1, int(h), &qs[size_t((t * hq + h) * d)]);
      if (one.p != &qs[size_t((t * hq + h) * d)]) std::copy_n(one.p, d, &qs[size_t((t * hq + h) * d)]);
    }
  // Key tiles in parallel: each owns its rows of `mass`, summed over queries and heads in order.
  const int64_t tiles = (size + kKeyTile - 1) / kKeyTile;
  run_items(
      tiles, n * hq * size * d, [&](int) { return std::vector<float>(size_t(group) * kKeyTile); },
      [&](int64_t tile, std::vector<float>& s) {
        const int64_t k0 = tile * kKeyTile;
        for (int64_t t = 0; t < n; ++t) {
          const int64_t m = std::min(kKeyTile, size - n + t + 1 - k0);  // keys query t sees in the tile
          if (m <= 0) continue;
          for (int g = 0; g < hkv; ++g) {
            decode_scores(k, g, k0, k0 + m, Rows{&qs[size_t((t * hq + g * group) * d)], d}, group, d, s.data());
            for (int e = 0; e < group; ++e) {
              float* p = s.data() + e * m;
              simd::exp_scaled_sum(p, m, scale, lse.f32()[(g * group + e) * n + t]);
              for (int64_t j = 0; j < m; ++j) mass[size_t(k0 + j)] += double(p[j]);
            }
          }
        }
      });
}

CascadePruner::CascadePruner(CascadePruningOptions opts, int64_t layers) : opts_(std::move(opts)), layers_(layers) {
  opts_.validate(layers);
}

int64_t CascadePruner::cache_capacity(int64_t layer, int64_t capacity) const {
  return std::min(capacity, opts_.budget_of(layer) + opts_.step_chunk());
}

double CascadePruner::importance(int64_t pos) const {
  return pos >= 0 && pos < int64_t(importance_.size()) ? importance_[size_t(pos)] : 0.0;
}

int64_t CascadePruner::pruned_at(int64_t pos) const {
  return pos >= 0 && pos < int64_t(pruned_at_.size()) ? pruned_at_[size_t(pos)] : layers_;
}

void CascadePruner::after_attention(int64_t layer, const Tensor& q, const Tensor& lse, float scale,
                                    const std::vector<KVCache*>& caches) {
  LONGCTX_CHECK(layer >= 0 && layer < layers_ && int64_t(caches.size()) == layers_ && caches[size_t(layer)],
                "cascade pruning: layer ", layer, " of ", layers_, " has no KV cache");
  KVCache& cache = *caches[size_t(layer)];
  const int64_t n = q.dim(0), size = cache.size(), appended = cache.appended();
  LONGCTX_CHECK(n <= opts_.step_chunk(), "cascade pruning: a step of ", n, " tokens exceeds the chunk ",
                opts_.step_chunk());
  mass_.assign(size_t(size), 0.0);
  add_attention_mass(q, lse, cache, scale, mass_);
  if (int64_t(importance_.size()) < appended) {
    importance_.resize(size_t(appended), 0.0);
    pruned_at_.resize(size_t(appended), int32_t(layers_));
  }
  const std::vector<int64_t>& pos = cache.positions();
  for (int64_t r = 0; r < size; ++r) importance_[size_t(pos[size_t(r)])] += mass_[size_t(r)];
  const int64_t excess = size - opts_.budget_of(layer);
  if (excess <= 0) return;
  // Candidates: not a sink, not in the window, not of this step; the `excess` least important.
  const int64_t last_free = appended - 1 - std::max(opts_.window, n);
  std::vector<int64_t> cand;
  for (int64_t r = 0; r < size; ++r)
    if (pos[size_t(r)] >= opts_.sink && pos[size_t(r)] <= last_free) cand.push_back(pos[size_t(r)]);
  LONGCTX_CHECK(int64_t(cand.size()) >= excess, "cascade pruning: layer ", layer, " must prune ", excess,
                " tokens but only ", cand.size(), " may go (budget too small for sink + window + chunk)");
  const auto less = [&](int64_t a, int64_t b) {
    return importance_[size_t(a)] != importance_[size_t(b)] ? importance_[size_t(a)] < importance_[size_t(b)] : a < b;
  };
  std::nth_element(cand.begin(), cand.begin() + (excess - 1), cand.end(), less);
  cand.resize(size_t(excess));
  std::sort(cand.begin(), cand.end());
  for (const int64_t p : cand) pruned_at_[size_t(p)] = int32_t(layer);
  for (int64_t l = layer; l < layers_; ++l) {  // the cascade: this layer and every later one
    KVCache* c = caches[size_t(l)];
    if (!c) continue;
    std::vector<int64_t> rows;
    for (int64_t r = 0; r < c->size(); ++r)
      if (std::binary_search(cand.begin(), cand.end(), c->positions()[size_t(r)])) rows.push_back(r);
    c->remove_rows(std::move(rows));
  }
}

}  // namespace longctx
