// Naive reference of cascade token pruning (cascade_pruning.hpp): plain loops in double over each
// layer's set of kept positions, evicting by the same rule; the KV caches with CascadePruner are
// tested against it.
#pragma once
#include <longctx/attention/cache/cascade_pruning.hpp>

#include <cstdint>
#include <map>
#include <vector>

namespace longctx::reference {

class CascadeDecode {
 public:
  CascadeDecode(CascadePruningOptions opts, int layers, int hq, int hkv, int d);
  // One step of `layer`: the step's n tokens (the next positions of that layer) bring keys and
  // values k, v [n, Hkv, d]; queries q [n, Hq, d] attend causally over the kept positions
  // (softmax scale 1/sqrt(d)); returns out [n, Hq, d]. Then the probabilities are added to the
  // importance and the layer prunes to its budget, cascading into the later layers.
  std::vector<double> step(int layer, const std::vector<double>& q, const std::vector<double>& k,
                           const std::vector<double>& v, int64_t n);
  const std::vector<int64_t>& kept(int layer) const { return kept_[size_t(layer)]; }  // ascending
  double importance(int64_t pos) const;

 private:
  CascadePruningOptions opts_;
  int layers_, hq_, hkv_, d_;
  std::vector<std::vector<int64_t>> kept_;
  std::vector<std::vector<std::vector<double>>> kv_;  // [layer][pos]: k then v, 2 * Hkv * d
  std::map<int64_t, double> importance_;
};

}  // namespace longctx::reference
