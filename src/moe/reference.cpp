#include <longctx/moe/reference.hpp>

#include <cmath>

#include "core/simd.hpp"

namespace longctx::moe::reference {

namespace {

template <class T>
std::vector<T> to_vector(const Tensor& t) {
  std::vector<T> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = T(t.f32()[i]);
  return v;
}

// Router quantities of one token.
template <class T>
struct TokenRoute {
  std::vector<T> h, pre, p;  // logits used by the gates, x W_noise, softmax over all E
  T lse = 0;
  std::vector<int32_t> sel;
  std::vector<T> gate;
};

template <class T>
TokenRoute<T> route_token(const Config& c, const Params<T>& p, const T* x, const T* noise) {
  const int64_t d = c.d_model, E = c.num_experts, k = c.top_k;
  TokenRoute<T> r;
  r.h.assign(size_t(E), T(0));
  r.pre.assign(size_t(E), T(0));
  for (int64_t i = 0; i < E; ++i)
    for (int64_t a = 0; a < d; ++a) r.h[size_t(i)] += x[a] * p.w_gate[size_t(a * E + i)];
  if (noise)
    for (int64_t i = 0; i < E; ++i) {
      for (int64_t a = 0; a < d; ++a) r.pre[size_t(i)] += x[a] * p.w_noise[size_t(a * E + i)];
      r.h[size_t(i)] += noise[i] * std::log1p(std::exp(r.pre[size_t(i)]));
    }
  T m = r.h[0], s = 0;
  for (T v : r.h) m = std::max(m, v);
  for (T v : r.h) s += std::exp(v - m);
  r.lse = m + std::log(s);
  for (T v : r.h) r.p.push_back(std::exp(v - r.lse));
  std::vector<uint8_t> taken(size_t(E), 0);
  for (int64_t j = 0; j < k; ++j) {
    int32_t best = -1;
    for (int64_t i = 0; i < E; ++i) {
      const T score = r.h[size_t(i)] + (c.router == Router::bias_free ? p.expert_bias[size_t(i)] : T(0));
      const T best_score = best < 0 ? T(0) : r.h[size_t(best)] + (c.router == Router::bias_free ? p.expert_bias[size_t(best)] : T(0));
      if (!taken[size_t(i)] && (best < 0 || score > best_score)) best = int32_t(i);
    }
    taken[size_t(best)] = 1;
    r.sel.push_back(best);
  }
  if (c.norm == GateNorm::all) {
    for (int32_t e : r.sel) r.gate.push_back(r.p[size_t(e)]);
  } else {
    T z = 0;
    for (int32_t e : r.sel) z += std::exp(r.h[size_t(e)] - r.lse);
    for (int32_t e : r.sel) r.gate.push_back(std::exp(r.h[size_t(e)] - r.lse) / z);
  }
  return r;
}

// One SwiGLU expert on one token: y += scale * (silu(x W1) o x W3) W2; W1, W3 [d, f], W2 [f, d].
template <class T>
void expert_forward(int64_t d, int64_t f, const T* w1, const T* w3, const T* w2, const T* x, T scale, T* y) {
  for (int64_t j = 0; j < f; ++j) {
    T a = 0, b = 0;
    for (int64_t i = 0; i < d; ++i) {
      a += x[i] * w1[i * f + j];
      b += x[i] * w3[i * f + j];
    }
    const T h = a * simd::sigmoid(a) * b;
    for (int64_t i = 0; i < d; ++i) y[i] += scale * h * w2[j * d + i];
  }
}

// Backward of y = (silu(x W1) o x W3) W2 given dy: accumulates dW1, dW3, dW2 and dx.
template <class T>
void expert_backward(int64_t d, int64_t f, const T* w1, const T* w3, const T* w2, const T* x, const T* dy, T* dw1,
                     T* dw3, T* dw2, T* dx) {
  for (int64_t j = 0; j < f; ++j) {
    T a = 0, b = 0, dh = 0;
    for (int64_t i = 0; i < d; ++i) {
      a += x[i] * w1[i * f + j];
      b += x[i] * w3[i * f + j];
      dh += dy[i] * w2[j * d + i];
    }
    const T s = simd::sigmoid(a), silu = a * s;
    for (int64_t i = 0; i < d; ++i) dw2[j * d + i] += silu * b * dy[i];
    const T da = dh * b * s * (T(1) + a * (T(1) - s)), db = dh * silu;
    for (int64_t i = 0; i < d; ++i) {
      dw1[i * f + j] += x[i] * da;
      dw3[i * f + j] += x[i] * db;
      dx[i] += da * w1[i * f + j] + db * w3[i * f + j];
    }
  }
}

}  // namespace

template <class T>
Params<T> params_of(const Weights& w) {
  return {to_vector<T>(w.w_gate),    to_vector<T>(w.w_noise),   to_vector<T>(w.w1),
          to_vector<T>(w.w3),        to_vector<T>(w.w2),        to_vector<T>(w.shared_w1),
          to_vector<T>(w.shared_w3), to_vector<T>(w.shared_w2), to_vector<T>(w.expert_bias)};
}

template <class T>
Result<T> forward(const Config& c, const Params<T>& p, const std::vector<T>& x, int64_t n,
                  const std::vector<T>& noise) {
  validate(c);
  const int64_t d = c.d_model, f = c.d_ff, E = c.num_experts, k = c.top_k, sf = c.num_shared * c.d_ff;
  Result<T> r;
  r.out.assign(size_t(n * d), T(0));
  std::vector<int64_t> routed(size_t(E), 0);
  std::vector<T> importance(size_t(E), T(0)), prob_sum(size_t(E), T(0));
  T z = 0;
  for (int64_t t = 0; t < n; ++t) {
    const TokenRoute<T> tr = route_token(c, p, x.data() + t * d, noise.empty() ? nullptr : noise.data() + t * E);
    for (int64_t j = 0; j < k; ++j) {
      r.expert.push_back(tr.sel[size_t(j)]);
      r.gate.push_back(tr.gate[size_t(j)]);
      ++routed[size_t(tr.sel[size_t(j)])];
      importance[size_t(tr.sel[size_t(j)])] += tr.gate[size_t(j)];
    }
    for (int64_t i = 0; i < E; ++i) prob_sum[size_t(i)] += tr.p[size_t(i)];
    z += tr.lse * tr.lse;
  }
  // capacity: rank 0 of every token first, then rank 1, ...; tokens in order within a rank
  r.kept.assign(size_t(n * k), 1);
  if (!c.dropless) {
    const int64_t cap = int64_t(std::ceil(c.capacity_factor * double(n * k) / double(E)));
    std::vector<int64_t> used(size_t(E), 0);
    for (int64_t j = 0; j < k; ++j)
      for (int64_t t = 0; t < n; ++t) {
        const size_t a = size_t(t * k + j);
        if (used[size_t(r.expert[a])] < cap) {
          ++used[size_t(r.expert[a])];
        } else {
          r.kept[a] = 0;
          ++r.dropped_assignments;
        }
      }
  }
  for (int64_t t = 0; t < n; ++t) {
    T* y = r.out.data() + t * d;
    const T* xt = x.data() + t * d;
    if (sf > 0) expert_forward(d, sf, p.shared_w1.data(), p.shared_w3.data(), p.shared_w2.data(), xt, T(1), y);
    bool any = false;
    for (int64_t j = 0; j < k; ++j) {
      const size_t a = size_t(t * k + j);
      if (!r.kept[a]) continue;
      any = true;
      const int64_t e = r.expert[a];
      expert_forward(d, f, p.w1.data() + e * d * f, p.w3.data() + e * d * f, p.w2.data() + e * f * d, xt, r.gate[a], y);
    }
    r.dropped_tokens += !any;
  }
  T mean = 0, var = 0, lb = 0;
  for (T v : importance) mean += v / T(E);
  for (T v : importance) var += (v - mean) * (v - mean) / T(E);
  for (int64_t i = 0; i < E; ++i) lb += T(routed[size_t(i)]) / T(n * k) * prob_sum[size_t(i)] / T(n);
  r.importance_loss = var / (mean * mean);
  r.load_balance_loss = T(E) * lb;
  r.z_loss = z / T(n);
  r.aux_loss = T(c.importance_weight) * r.importance_loss + T(c.load_balance_weight) * r.load_balance_loss +
               T(c.z_loss_weight) * r.z_loss;
  return r;
}

template <class T>
Params<T> backward(const Config& c, const Params<T>& p, const std::vector<T>& x, int64_t n,
                   const std::vector<T>& noise, const std::vector<T>& dy, std::vector<T>& dx) {
  const Result<T> fr = forward(c, p, x, n, noise);
  const int64_t d = c.d_model, f = c.d_ff, E = c.num_experts, k = c.top_k, sf = c.num_shared * c.d_ff;
  Params<T> g;
  g.w_gate.assign(p.w_gate.size(), T(0));
  g.w_noise.assign(p.w_noise.size(), T(0));
  g.w1.assign(p.w1.size(), T(0));
  g.w3.assign(p.w3.size(), T(0));
  g.w2.assign(p.w2.size(), T(0));
  g.shared_w1.assign(p.shared_w1.size(), T(0));
  g.shared_w3.assign(p.shared_w3.size(), T(0));
  g.shared_w2.assign(p.shared_w2.size(), T(0));
  dx.assign(size_t(n * d), T(0));
  // global sums the aux-loss gradients need
  std::vector<T> importance(size_t(E), T(0));
  std::vector<int64_t> routed(size_t(E), 0);
  for (size_t a = 0; a < fr.expert.size(); ++a) {
    importance[size_t(fr.expert[a])] += fr.gate[a];
    ++routed[size_t(fr.expert[a])];
  }
  T mean = 0, var = 0;
  for (T v : importance) mean += v / T(E);
  for (T v : importance) var += (v - mean) * (v - mean) / T(E);

  for (int64_t t = 0; t < n; ++t) {
    const T* xt = x.data() + t * d;
    const T* dyt = dy.data() + t * d;
    T* dxt = dx.data() + t * d;
    const TokenRoute<T> tr = route_token(c, p, xt, noise.empty() ? nullptr : noise.data() + t * E);
    if (sf > 0)
      expert_backward(d, sf, p.shared_w1.data(), p.shared_w3.data(), p.shared_w2.data(), xt, dyt, g.shared_w1.data(),
                      g.shared_w3.data(), g.shared_w2.data(), dxt);
    std::vector<T> dgate(size_t(k), T(0));
    for (int64_t j = 0; j < k; ++j) {
      const size_t a = size_t(t * k + j);
      const int64_t e = tr.sel[size_t(j)];
      // importance CV^2: d(var/mean^2)/dImp_e
      dgate[size_t(j)] += T(c.importance_weight) * T(2) / (T(E) * mean * mean) *
                          ((importance[size_t(e)] - mean) - var / mean);
      if (!fr.kept[a]) continue;
      std::vector<T> y(size_t(d), T(0)), dye(size_t(d), T(0));
      const T *w1 = p.w1.data() + e * d * f, *w3 = p.w3.data() + e * d * f, *w2 = p.w2.data() + e * f * d;
      expert_forward(d, f, w1, w3, w2, xt, T(1), y.data());
      for (int64_t i = 0; i < d; ++i) {
        dgate[size_t(j)] += y[size_t(i)] * dyt[i];
        dye[size_t(i)] = tr.gate[size_t(j)] * dyt[i];
      }
      expert_backward(d, f, w1, w3, w2, xt, dye.data(), g.w1.data() + e * d * f, g.w3.data() + e * d * f,
                      g.w2.data() + e * f * d, dxt);
    }
    // dL/dh of the router logits: gates, load balance (through softmax over all), z-loss
    std::vector<T> dh(size_t(E), T(0)), dp(size_t(E), T(0));
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = tr.sel[size_t(j)];
      if (c.norm == GateNorm::all) {
        dp[size_t(e)] += dgate[size_t(j)];
      } else {
        for (int64_t q = 0; q < k; ++q)  // dg_j/dh_q = g_j ([j == q] - g_q)
          dh[size_t(tr.sel[size_t(q)])] +=
              dgate[size_t(j)] * tr.gate[size_t(j)] * (T(j == q) - tr.gate[size_t(q)]);
      }
    }
    for (int64_t i = 0; i < E; ++i)
      dp[size_t(i)] += T(c.load_balance_weight) * T(E) * T(routed[size_t(i)]) / T(n * k) / T(n);
    for (int64_t i = 0; i < E; ++i)  // dp_i/dh_q = p_i ([i == q] - p_q)
      for (int64_t q = 0; q < E; ++q)
        dh[size_t(q)] += dp[size_t(i)] * tr.p[size_t(i)] * (T(i == q) - tr.p[size_t(q)]);
    for (int64_t q = 0; q < E; ++q) dh[size_t(q)] += T(c.z_loss_weight) * T(2) * tr.lse * tr.p[size_t(q)] / T(n);
    for (int64_t q = 0; q < E; ++q)
      for (int64_t i = 0; i < d; ++i) {
        g.w_gate[size_t(i * E + q)] += xt[i] * dh[size_t(q)];
        dxt[i] += dh[size_t(q)] * p.w_gate[size_t(i * E + q)];
        if (noise.empty()) continue;
        const T dpre = dh[size_t(q)] * noise[size_t(t * E + q)] * simd::sigmoid(tr.pre[size_t(q)]);
        g.w_noise[size_t(i * E + q)] += xt[i] * dpre;
        dxt[i] += dpre * p.w_noise[size_t(i * E + q)];
      }
  }
  return g;
}

#define LONGCTX_INSTANTIATE(T)                                                                              \
  template Params<T> params_of<T>(const Weights&);                                                         \
  template Result<T> forward<T>(const Config&, const Params<T>&, const std::vector<T>&, int64_t,           \
                                const std::vector<T>&);                                                    \
  template Params<T> backward<T>(const Config&, const Params<T>&, const std::vector<T>&, int64_t,          \
                                 const std::vector<T>&, const std::vector<T>&, std::vector<T>&);
LONGCTX_INSTANTIATE(float)
LONGCTX_INSTANTIATE(double)
#undef LONGCTX_INSTANTIATE

}  // namespace longctx::moe::reference
