// SpAtten's cascade token pruning (Wang, Zhang and Han, "SpAtten", HPCA 2021, arXiv 2012.09852,
// sec. III-A) as a KV-cache eviction policy for decode with a token budget (docs/DESIGN.md
// "Cascade token pruning"):
// - A cached token's importance is the attention probability it received, summed over the query
//   heads, over the queries of every step (prompt chunks and decode steps) and over the layers:
//   one running score per token, shared by all layers, as SpAtten accumulates it across layers.
// - After a step, a layer whose cache holds more than its budget prunes its lowest-importance
//   tokens (ties: the older first) down to the budget. Never pruned: the first `sink` tokens, the
//   `window` most recent ones, and the tokens of the step itself (they have had one step's say).
// - Cascade: a token pruned at layer l leaves the caches of layers l, l + 1, ... at once (its keys
//   and values there are never read again); layers before l keep it until they prune it
//   themselves. The layers' token sets are therefore nested, and per-layer budgets must not grow
//   with depth. A uniform budget makes layer 0 decide (it is the first to exceed it) with the
//   importance accumulated over all layers so far; decreasing budgets prune more deeply.
// Defined over dense attention: every layer with a KV cache must be `full` (the sparse kinds'
// block statistics need runs of consecutive positions).
#pragma once
#include <longctx/attention/cache/kv_cache.hpp>

#include <cstdint>
#include <vector>

namespace longctx {

struct CascadePruningOptions {
  // Tokens a layer's cache keeps after each step: one value for every layer, or one per layer
  // (non-increasing). Empty: no pruning.
  std::vector<int64_t> budget;
  int64_t window = 32;  // most recent tokens never pruned
  int64_t sink = 4;     // first tokens never pruned
  // Most new tokens per step (Transformer::extend splits longer calls), so a cache never holds more
  // than budget + chunk. 0: a quarter of the smallest budget, at most 256. A step's own tokens are
  // not pruned in that step, so a chunk near the budget would leave no room for older tokens.
  int64_t chunk = 0;

  bool enabled() const { return !budget.empty(); }
  int64_t budget_of(int64_t layer) const { return budget.size() == 1 ? budget[0] : budget[size_t(layer)]; }
  int64_t step_chunk() const;
  // Throws std::invalid_argument naming the field unless: one budget or `layers` of them,
  // non-increasing, each >= sink + max(window, step_chunk()); window >= 1, sink >= 0, chunk >= 0.
  void validate(int64_t layers) const;
};

// Adds to mass[r], for each row r < cache.size(), the attention probability row r got from one
// attention call over the cache: q [n, Hq, d] holds the cache's last n tokens' queries (as for
// attention_over_cache, dense: query i sees rows [0, size - n + i]) and lse [Hq, n] that call's
// log-sum-exp; summed over the heads and the n queries. `scale` is the softmax scale. The scores
// are the decode kernel's (so an int8 cache's), the probabilities exp(scale * s - lse).
void add_attention_mass(const Tensor& q, const Tensor& lse, const KVCache& cache, float scale,
                        std::vector<double>& mass);

// The pruning state of one sequence across the layers of a model.
class CascadePruner {
 public:
  CascadePruner(CascadePruningOptions opts, int64_t layers);
  const CascadePruningOptions& options() const { return opts_; }
  // Capacity layer `layer`'s cache needs for a sequence of at most `capacity` tokens.
  int64_t cache_capacity(int64_t layer, int64_t capacity) const;
  // After layer `layer` appended a step's tokens to caches[layer] and attended over it with
  // queries q [n, Hq, d] (n <= step_chunk()) and their lse [Hq, n]: adds the step's attention mass
  // to the tokens' importance, then prunes that cache to the layer's budget and removes the pruned
  // tokens from caches[layer + 1 ...] too. caches[i] is null for a layer without a KV cache.
  void after_attention(int64_t layer, const Tensor& q, const Tensor& lse, float scale,
                       const std::vector<KVCache*>& caches);
  // Importance so far of the token at sequence position `pos` (0 for one not seen yet).
  double importance(int64_t pos) const;
  // The first layer whose cache no longer holds the token at `pos` (the layer count if none).
  int64_t pruned_at(int64_t pos) const;

 private:
  CascadePruningOptions opts_;
  int64_t layers_;
  std::vector<double> importance_;  // by position
  std::vector<int32_t> pruned_at_;  // by position
  std::vector<double> mass_;        // by row of the layer being processed
};

}  // namespace longctx
