#include <longctx/attention/moba/reference.hpp>

#include <algorithm>

#include "attention/engine/varlen.hpp"

namespace longctx::reference {

template <class T>
Mask moba_mask(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, const Varlen& varlen,
               int64_t B, int64_t top_k, std::vector<int32_t>* selected, bool group_select) {
  Mask m(size_t(s.hq) * s.tq * s.tk, 0);
  if (selected) selected->assign(size_t(s.hq) * s.tq * std::max<int64_t>(top_k - 1, 0), -1);
  const int group = s.hq / s.hkv;
  for (const attn::Seq& sq : attn::sequences_of(varlen, s.tq, s.tk)) {
    const int64_t full_blocks = sq.lk / B;
    // Mean key of every full block, per KV head.
    std::vector<T> mean(size_t(full_blocks) * s.hkv * s.d, 0);
    for (int64_t b = 0; b < full_blocks; ++b)
      for (int g = 0; g < s.hkv; ++g)
        for (int c = 0; c < s.d; ++c) {
          T acc = 0;
          for (int64_t j = b * B; j < (b + 1) * B; ++j) acc += k[((sq.k0 + j) * s.hkv + g) * s.d + c];
          mean[(b * s.hkv + g) * s.d + c] = acc / T(B);
        }
    for (int h = 0; h < s.hq; ++h)
      for (int64_t i = 0; i < sq.lq; ++i) {
        const int64_t pos = i + sq.offset();
        if (pos < 0) continue;
        const int64_t own = pos / B;
        // Score every strictly-past block, sort by (score desc, block index desc), keep top_k - 1.
        std::vector<std::pair<T, int64_t>> cand;
        const int first = group_select ? h / group * group : h, last = group_select ? first + group : h + 1;
        for (int64_t b = 0; b < own; ++b) {
          T score = 0;
          for (int e = first; e < last; ++e)
            score += row_dot(&q[((sq.q0 + i) * s.hq + e) * s.d], &mean[(b * s.hkv + h / group) * s.d], s.d);
          cand.push_back({score, b});
        }
        std::sort(cand.begin(), cand.end(), [](auto& a, auto& b) { return a.first != b.first ? a.first > b.first : a.second > b.second; });
        cand.resize(std::min<size_t>(cand.size(), size_t(top_k - 1)));
        uint8_t* row = &m[(size_t(h) * s.tq + sq.q0 + i) * s.tk + sq.k0];
        for (int64_t j = own * B; j <= pos; ++j) row[j] = 1;
        for (size_t c = 0; c < cand.size(); ++c) {
          for (int64_t j = cand[c].second * B; j < (cand[c].second + 1) * B; ++j) row[j] = 1;
          if (selected) (*selected)[(size_t(h) * s.tq + sq.q0 + i) * (top_k - 1) + c] = int32_t(cand[c].second);
        }
      }
  }
  return m;
}

template Mask moba_mask<float>(const Shape&, const std::vector<float>&, const std::vector<float>&, const Varlen&,
                               int64_t, int64_t, std::vector<int32_t>*, bool);
template Mask moba_mask<double>(const Shape&, const std::vector<double>&, const std::vector<double>&, const Varlen&,
                                int64_t, int64_t, std::vector<int32_t>*, bool);

}  // namespace longctx::reference
