#include <longctx/attention/cache/reference.hpp>
#include <longctx/attention/engine/reference.hpp>

#include <algorithm>
#include <cmath>

namespace longctx::reference {

CascadeDecode::CascadeDecode(CascadePruningOptions opts, int layers, int hq, int hkv, int d)
    : opts_(std::move(opts)), layers_(layers), hq_(hq), hkv_(hkv), d_(d), kept_(size_t(layers)), kv_(size_t(layers)) {
  opts_.validate(layers);
}

double CascadeDecode::importance(int64_t pos) const {
  const auto it = importance_.find(pos);
  return it == importance_.end() ? 0.0 : it->second;
}

std::vector<double> CascadeDecode::step(int layer, const std::vector<double>& q, const std::vector<double>& k,
                                        const std::vector<double>& v, int64_t n) {
  auto& rows = kv_[size_t(layer)];
  auto& kept = kept_[size_t(layer)];
  const int64_t first = int64_t(rows.size()), row = int64_t(hkv_) * d_;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> r(k.begin() + i * row, k.begin() + (i + 1) * row);
    r.insert(r.end(), v.begin() + i * row, v.begin() + (i + 1) * row);
    rows.push_back(std::move(r));
    kept.push_back(first + i);
  }
  const double scale = 1.0 / std::sqrt(double(d_));
  std::vector<double> out(size_t(n * hq_ * d_), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < hq_; ++h) {
      const int g = h / (hq_ / hkv_);
      const double* qr = &q[size_t((i * hq_ + h) * d_)];
      std::vector<double> s;
      std::vector<int64_t> seen;
      for (int64_t p : kept)
        if (p <= first + i) {
          s.push_back(scale * row_dot(qr, &rows[size_t(p)][size_t(g * d_)], d_));
          seen.push_back(p);
        }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (size_t j = 0; j < s.size(); ++j) {
        const double pj = s[j] / sum;
        importance_[seen[j]] += pj;
        for (int c = 0; c < d_; ++c) out[size_t((i * hq_ + h) * d_ + c)] += pj * rows[size_t(seen[j])][size_t(row + g * d_ + c)];
      }
    }
  // Prune: the excess of the least important (older first on ties) among the tokens that may go.
  const int64_t excess = int64_t(kept.size()) - opts_.budget_of(layer);
  if (excess > 0) {
    const int64_t last_free = first + n - 1 - std::max(opts_.window, n);
    std::vector<int64_t> cand;
    for (int64_t p : kept)
      if (p >= opts_.sink && p <= last_free) cand.push_back(p);
    std::sort(cand.begin(), cand.end(), [&](int64_t a, int64_t b) {
      return importance(a) != importance(b) ? importance(a) < importance(b) : a < b;
    });
    cand.resize(size_t(std::min<int64_t>(excess, int64_t(cand.size()))));
    for (int l = layer; l < layers_; ++l) {
      auto& kl = kept_[size_t(l)];
      kl.erase(std::remove_if(kl.begin(), kl.end(),
                              [&](int64_t p) { return std::find(cand.begin(), cand.end(), p) != cand.end(); }),
               kl.end());
    }
  }
  return out;
}

}  // namespace longctx::reference
