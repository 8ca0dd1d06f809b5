#include <longctx/core/error.hpp>
#include <longctx/model/sampler.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace longctx {

void SamplerConfig::validate() const {
  LONGCTX_CHECK(temperature >= 0 && std::isfinite(temperature), "sampler: temperature must be >= 0 and finite, got ",
                temperature);
  LONGCTX_CHECK(top_k >= 0, "sampler: top_k must be >= 0, got ", top_k);
  LONGCTX_CHECK(top_p > 0 && top_p <= 1, "sampler: top_p must be in (0, 1], got ", top_p);
}

int32_t sample_token(const float* logits, int64_t V, const SamplerConfig& cfg, std::mt19937_64& rng) {
  cfg.validate();
  if (cfg.temperature == 0) return int32_t(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t k = cfg.top_k > 0 ? std::min(cfg.top_k, V) : V;
  // most likely first (ties: lower id), only the first k sorted
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; });
  ids.resize(size_t(k));
  std::vector<double> p(ids.size());
  const double m = logits[ids[0]];
  double sum = 0;
  for (size_t i = 0; i < ids.size(); ++i) sum += p[i] = std::exp((logits[ids[i]] - m) / cfg.temperature);
  double cum = 0;
  size_t keep = ids.size();
  for (size_t i = 0; i < ids.size(); ++i)
    if ((cum += p[i] / sum) >= cfg.top_p) {
      keep = i + 1;
      break;
    }
  std::discrete_distribution<size_t> pick(p.begin(), p.begin() + long(keep));
  return ids[pick(rng)];
}

}  // namespace longctx
