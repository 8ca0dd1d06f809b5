#include <longctx/attention/engine/reference.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "attention/engine/varlen.hpp"

namespace longctx::reference {

namespace {


// Softmax probabilities p of query row i, head h over all keys (0 where masked); returns the
// row's log-sum-exp, -inf when it sees no key.
template <class T>
T probs(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, T scale, const Mask& mask,
        int h, int64_t i, std::vector<T>& p) {
  const int g = h / (s.hq / s.hkv);
  const uint8_t* mrow = mask.data() + (size_t(h) * s.tq + i) * s.tk;  // tk may be 0
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < s.tk; ++j) {
    p[j] = mrow[j] ? scale * row_dot(&q[(i * s.hq + h) * s.d], &k[(j * s.hkv + g) * s.d], s.d) : 0;
    if (mrow[j]) mx = std::max(mx, p[j]);
  }
  if (mx == -std::numeric_limits<T>::infinity()) return mx;
  T sum = 0;
  for (int64_t j = 0; j < s.tk; ++j) sum += p[j] = mrow[j] ? std::exp(p[j] - mx) : 0;
  for (int64_t j = 0; j < s.tk; ++j) p[j] /= sum;
  return mx + std::log(sum);
}

}  // namespace

Mask dense_mask(const Shape& s, const Varlen& varlen, const AttentionOptions& opts) {
  Mask m(size_t(s.hq) * s.tq * s.tk, 0);
  for (const attn::Seq& sq : attn::sequences_of(varlen, s.tq, s.tk))
    for (int64_t i = 0; i < sq.lq; ++i) {
      const int64_t pos = i + sq.offset();
      for (int64_t j = 0; j < sq.lk; ++j) {
        bool vis = !opts.causal || j <= pos;
        if (opts.window > 0 && pos - j >= opts.window) vis = false;
        for (int h = 0; h < s.hq; ++h) m[(size_t(h) * s.tq + sq.q0 + i) * s.tk + sq.k0 + j] = vis;
      }
    }
  return m;
}

template <class T>
void attention_forward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                       const std::vector<T>& v, T scale, const Mask& mask, std::vector<T>& out,
                       std::vector<T>& lse) {
  out.assign(size_t(s.tq) * s.hq * s.d, 0);
  lse.assign(size_t(s.hq) * s.tq, -std::numeric_limits<T>::infinity());
  std::vector<T> p(s.tk);
  const int group = s.hq / s.hkv;
  for (int h = 0; h < s.hq; ++h)
    for (int64_t i = 0; i < s.tq; ++i) {
      const T row_lse = probs(s, q, k, scale, mask, h, i, p);
      if (row_lse == -std::numeric_limits<T>::infinity()) continue;
      lse[size_t(h) * s.tq + i] = row_lse;
      for (int64_t j = 0; j < s.tk; ++j)
        for (int c = 0; c < s.d; ++c) out[(i * s.hq + h) * s.d + c] += p[j] * v[(j * s.hkv + h / group) * s.d + c];
    }
}

template <class T>
void attention_backward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                        const std::vector<T>& v, T scale, const Mask& mask, const std::vector<T>& dout,
                        std::vector<T>& dq, std::vector<T>& dk, std::vector<T>& dv) {
  dq.assign(q.size(), 0);
  dk.assign(k.size(), 0);
  dv.assign(v.size(), 0);
  std::vector<T> p(s.tk), dp(s.tk);
  const int group = s.hq / s.hkv;
  for (int h = 0; h < s.hq; ++h)
    for (int64_t i = 0; i < s.tq; ++i) {
      if (probs(s, q, k, scale, mask, h, i, p) == -std::numeric_limits<T>::infinity()) continue;
      const int g = h / group;
      const T* doi = &dout[(i * s.hq + h) * s.d];
      T delta = 0;  // sum_j P_ij dP_ij
      for (int64_t j = 0; j < s.tk; ++j) {
        dp[j] = row_dot(doi, &v[(j * s.hkv + g) * s.d], s.d);
        delta += p[j] * dp[j];
      }
      for (int64_t j = 0; j < s.tk; ++j) {
        if (p[j] == 0) continue;
        const T ds = p[j] * (dp[j] - delta) * scale;
        for (int c = 0; c < s.d; ++c) {
          dv[(j * s.hkv + g) * s.d + c] += p[j] * doi[c];
          dq[(i * s.hq + h) * s.d + c] += ds * k[(j * s.hkv + g) * s.d + c];
          dk[(j * s.hkv + g) * s.d + c] += ds * q[(i * s.hq + h) * s.d + c];
        }
      }
    }
}

#define LONGCTX_INSTANTIATE(T)                                                                       \
  template void attention_forward<T>(const Shape&, const std::vector<T>&, const std::vector<T>&,     \
                                     const std::vector<T>&, T, const Mask&, std::vector<T>&,         \
                                     std::vector<T>&);                                               \
  template void attention_backward<T>(const Shape&, const std::vector<T>&, const std::vector<T>&,    \
                                      const std::vector<T>&, T, const Mask&, const std::vector<T>&,  \
                                      std::vector<T>&, std::vector<T>&, std::vector<T>&);
LONGCTX_INSTANTIATE(float)
LONGCTX_INSTANTIATE(double)

}  // namespace longctx::reference
