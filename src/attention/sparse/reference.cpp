#include <longctx/attention/sparse/reference.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/engine/varlen.hpp"

namespace longctx::reference {

namespace {

template <class T>
const T* qrow(const Shape& s, const std::vector<T>& q, int64_t row, int h) {
  return &q[(size_t(row) * s.hq + h) * s.d];
}
template <class T>
const T* krow(const Shape& s, const std::vector<T>& k, int64_t row, int g) {
  return &k[(size_t(row) * s.hkv + g) * s.d];
}

// Quest bound of block b (sequence-local) for query x.
template <class T>
T quest(const Shape& s, const std::vector<T>& k, const attn::Seq& sq, int g, int64_t b, int64_t B, const T* x) {
  T bound = 0;
  for (int c = 0; c < s.d; ++c) {
    T mn = std::numeric_limits<T>::infinity(), mx = -mn;
    for (int64_t j = b * B; j < (b + 1) * B; ++j) {
      mn = std::min(mn, krow(s, k, sq.k0 + j, g)[c]);
      mx = std::max(mx, krow(s, k, sq.k0 + j, g)[c]);
    }
    bound += std::max(x[c] * mn, x[c] * mx);
  }
  return bound;
}

// (score, index) sorted by score desc, index desc.
template <class T>
void sort_desc(std::vector<std::pair<T, int64_t>>& c) {
  std::sort(c.begin(), c.end(), [](auto& a, auto& b) { return a.first != b.first ? a.first > b.first : a.second > b.second; });
}

}  // namespace

template <class T>
Mask topk_mask(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, const Varlen& varlen, int64_t B,
               int64_t top_k, bool token_level, bool group_select) {
  Mask m(size_t(s.hq) * s.tq * s.tk, 0);
  const int group = s.hq / s.hkv;
  for (const attn::Seq& sq : attn::sequences_of(varlen, s.tq, s.tk))
    for (int h = 0; h < s.hq; ++h)
      for (int64_t i = 0; i < sq.lq; ++i) {
        const int64_t pos = i + sq.offset();
        if (pos < 0) continue;
        const T* x = qrow(s, q, sq.q0 + i, h);
        uint8_t* row = &m[(size_t(h) * s.tq + sq.q0 + i) * s.tk + sq.k0];
        std::vector<std::pair<T, int64_t>> cand;
        if (token_level) {
          for (int64_t j = 0; j <= pos; ++j) cand.push_back({row_dot(x, krow(s, k, sq.k0 + j, h / group), s.d), j});
          sort_desc(cand);
          cand.resize(std::min<size_t>(cand.size(), size_t(top_k)));
          for (auto& c : cand) row[c.second] = 1;
          continue;
        }
        const int first = group_select ? h / group * group : h, last = group_select ? first + group : h + 1;
        for (int64_t b = 0; b < pos / B; ++b) {
          T bound = 0;
          for (int e = first; e < last; ++e) bound += quest(s, k, sq, h / group, b, B, qrow(s, q, sq.q0 + i, e));
          cand.push_back({bound, b});
        }
        sort_desc(cand);
        cand.resize(std::min<size_t>(cand.size(), size_t(top_k - 1)));
        for (int64_t j = pos / B * B; j <= pos; ++j) row[j] = 1;
        for (auto& c : cand)
          for (int64_t j = c.second * B; j < (c.second + 1) * B; ++j) row[j] = 1;
      }
  return m;
}

template <class T>
Mask threshold_mask(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, const Varlen& varlen, int64_t B,
                    T scale, double tau, bool heuristic) {
  Mask m(size_t(s.hq) * s.tq * s.tk, 0);
  const int group = s.hq / s.hkv;
  for (const attn::Seq& sq : attn::sequences_of(varlen, s.tq, s.tk))
    for (int h = 0; h < s.hq; ++h)
      for (int64_t i = 0; i < sq.lq; ++i) {
        const int64_t pos = i + sq.offset();
        if (pos < 0) continue;
        const int g = h / group;
        const T* x = qrow(s, q, sq.q0 + i, h);
        uint8_t* row = &m[(size_t(h) * s.tq + sq.q0 + i) * s.tk + sq.k0];
        for (int64_t j = pos / B * B; j <= pos; ++j) row[j] = 1;
        std::vector<std::pair<T, int64_t>> cand;
        for (int64_t b = 0; b < pos / B; ++b) {
          T score = 0;
          if (heuristic) {
            for (int c = 0; c < s.d; ++c) {
              T mean = 0;
              for (int64_t j = b * B; j < (b + 1) * B; ++j) mean += krow(s, k, sq.k0 + j, g)[c];
              score += x[c] * (mean / T(B));
            }
          } else {
            score = quest(s, k, sq, g, b, B, x);
          }
          cand.push_back({scale * score, b});
        }
        sort_desc(cand);
        for (size_t next = 0; next < cand.size(); ++next) {
          // Exact max and mass of the visited keys.
          double mx = -std::numeric_limits<double>::infinity(), l = 0;
          for (int64_t j = 0; j <= pos; ++j)
            if (row[j]) mx = std::max(mx, double(scale * row_dot(x, krow(s, k, sq.k0 + j, g), s.d)));
          for (int64_t j = 0; j <= pos; ++j)
            if (row[j]) l += std::exp(double(scale * row_dot(x, krow(s, k, sq.k0 + j, g), s.d)) - mx);
          double unvisited = 0;
          if (heuristic) {
            const double last = next == 0 ? double(cand[0].first) : double(cand[next - 1].first);
            unvisited = double(B) * double(cand.size() - next) * std::exp(last - mx);
          } else {
            for (size_t c = next; c < cand.size(); ++c) unvisited += double(B) * std::exp(double(cand[c].first) - mx);
          }
          if (unvisited < (1.0 - tau) * (l + unvisited)) break;
          for (int64_t j = cand[next].second * B; j < (cand[next].second + 1) * B; ++j) row[j] = 1;
        }
      }
  return m;
}

#define LONGCTX_INSTANTIATE_SPARSE(T)                                                                                 \
  template Mask topk_mask<T>(const Shape&, const std::vector<T>&, const std::vector<T>&, const Varlen&, int64_t,    \
                             int64_t, bool, bool);                                                                   \
  template Mask threshold_mask<T>(const Shape&, const std::vector<T>&, const std::vector<T>&, const Varlen&, int64_t, \
                                  T, double, bool);
LONGCTX_INSTANTIATE_SPARSE(float)
LONGCTX_INSTANTIATE_SPARSE(double)

}  // namespace longctx::reference
