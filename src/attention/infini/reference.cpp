#include <longctx/attention/infini/reference.hpp>
#include <longctx/attention/engine/reference.hpp>

#include <algorithm>
#include <cmath>

namespace longctx::reference {

namespace {

template <class T>
T sigma(T x) {
  return x > 0 ? x + 1 : std::exp(x);
}
template <class T>
T sigma_grad(T x) {
  return x > 0 ? T(1) : std::exp(x);
}

std::vector<int64_t> seq_bounds(const InfiniShape& s, const InfiniConfig& cfg) {
  return cfg.cu_seqlens.empty() ? std::vector<int64_t>{0, s.t} : cfg.cu_seqlens;
}

// The local part: causal attention inside each segment, as a dense mask over segment "sequences".
Mask local_mask(const InfiniShape& s, const InfiniConfig& cfg) {
  const std::vector<int64_t> cu = seq_bounds(s, cfg);
  std::vector<int64_t> lens;
  for (size_t i = 0; i + 1 < cu.size(); ++i)
    for (int64_t a = cu[i]; a < cu[i + 1]; a += cfg.segment_len) lens.push_back(std::min(cfg.segment_len, cu[i + 1] - a));
  return dense_mask({s.t, s.t, s.hq, s.hkv, s.d}, Varlen::same(lens), AttentionOptions{});
}

// Memory states of one (sequence, KV head): M[c], z[c] before segment c (c = 0 .. segments).
template <class T>
struct States {
  std::vector<std::vector<T>> M, z;
};

template <class T>
States<T> memory_states(const InfiniShape& s, const InfiniData<T>& in, const InfiniConfig& cfg, int64_t b, int64_t e,
                        int g) {
  const int d = s.d;
  const size_t D = size_t(d);
  States<T> st;
  std::vector<T> M(D * D, 0), z(D, 0);
  for (int64_t a = b; a < e; a += cfg.segment_len) {
    st.M.push_back(M);
    st.z.push_back(z);
    const std::vector<T> M0 = M, z0 = z;  // the update reads the state before the segment
    for (int64_t t = a; t < std::min(a + cfg.segment_len, e); ++t) {
      std::vector<T> sk(D), w(D);
      for (int i = 0; i < d; ++i) sk[i] = sigma(in.k[size_t((t * s.hkv + g) * d + i)]);
      T c = T(kInfiniEps);
      for (int i = 0; i < d; ++i) c += sk[i] * z0[i];
      for (int j = 0; j < d; ++j) {
        w[j] = in.v[size_t((t * s.hkv + g) * d + j)];
        if (cfg.update == InfiniUpdate::delta) {
          T r = 0;
          for (int i = 0; i < d; ++i) r += sk[i] * M0[i * d + j];
          w[j] -= r / c;
        }
      }
      for (int i = 0; i < d; ++i) {
        for (int j = 0; j < d; ++j) M[i * d + j] += sk[i] * w[j];
        z[i] += sk[i];
      }
    }
  }
  return st;
}

template <class T>
void local_forward(const InfiniShape& s, const InfiniData<T>& in, const InfiniConfig& cfg, std::vector<T>& out) {
  std::vector<T> lse;
  attention_forward<T>({s.t, s.t, s.hq, s.hkv, s.d}, in.q_local.empty() ? in.q : in.q_local,
                       in.k_local.empty() ? in.k : in.k_local, in.v, T(cfg.scale), local_mask(s, cfg), out, lse);
}

}  // namespace

template <class T>
void infini_forward(const InfiniShape& s, const InfiniData<T>& in, const std::vector<T>& beta,
                    const InfiniConfig& cfg, std::vector<T>& out) {
  const int d = s.d, group = s.hq / s.hkv;
  std::vector<T> local;
  local_forward(s, in, cfg, local);
  out.assign(local.size(), 0);
  const std::vector<int64_t> cu = seq_bounds(s, cfg);
  for (size_t si = 0; si + 1 < cu.size(); ++si)
    for (int g = 0; g < s.hkv; ++g) {
      const States<T> st = memory_states(s, in, cfg, cu[si], cu[si + 1], g);
      for (int64_t t = cu[si]; t < cu[si + 1]; ++t) {
        const size_t c = size_t((t - cu[si]) / cfg.segment_len);
        for (int h = g * group; h < (g + 1) * group; ++h) {
          const T gate = 1 / (1 + std::exp(-beta[h]));
          const T* q = &in.q[size_t((t * s.hq + h) * d)];
          T den = T(kInfiniEps);
          for (int i = 0; i < d; ++i) den += sigma(q[i]) * st.z[c][i];
          for (int j = 0; j < d; ++j) {
            T num = 0;
            for (int i = 0; i < d; ++i) num += sigma(q[i]) * st.M[c][i * d + j];
            const size_t o = size_t((t * s.hq + h) * d + j);
            out[o] = gate * num / den + (1 - gate) * local[o];
          }
        }
      }
    }
}

template <class T>
void infini_backward(const InfiniShape& s, const InfiniData<T>& in, const std::vector<T>& beta,
                     const InfiniConfig& cfg, const std::vector<T>& dout, InfiniGradsRef<T>& g) {
  const int d = s.d, group = s.hq / s.hkv;
  const size_t D = size_t(d);
  const bool sep_q = !in.q_local.empty(), sep_k = !in.k_local.empty();
  // local part: dA_dot = (1 - gate) dout
  std::vector<T> local, dout_local(dout.size()), dql, dkl, dv;
  local_forward(s, in, cfg, local);
  for (int64_t t = 0; t < s.t; ++t)
    for (int h = 0; h < s.hq; ++h)
      for (int j = 0; j < d; ++j) {
        const size_t o = size_t((t * s.hq + h) * d + j);
        dout_local[o] = (1 - 1 / (1 + std::exp(-beta[h]))) * dout[o];
      }
  attention_backward<T>({s.t, s.t, s.hq, s.hkv, s.d}, sep_q ? in.q_local : in.q, sep_k ? in.k_local : in.k, in.v,
                        T(cfg.scale), local_mask(s, cfg), dout_local, dql, dkl, dv);
  g.dv = dv;
  g.dq = sep_q ? std::vector<T>(in.q.size(), 0) : dql;
  g.dk = sep_k ? std::vector<T>(in.k.size(), 0) : dkl;
  g.dq_local = sep_q ? dql : std::vector<T>{};
  g.dk_local = sep_k ? dkl : std::vector<T>{};
  g.dbeta.assign(size_t(s.hq), 0);

  const std::vector<int64_t> cu = seq_bounds(s, cfg);
  for (size_t si = 0; si + 1 < cu.size(); ++si)
    for (int kh = 0; kh < s.hkv; ++kh) {
      const States<T> st = memory_states(s, in, cfg, cu[si], cu[si + 1], kh);
      const int64_t nseg = int64_t(st.M.size());
      std::vector<T> dM(D * D, 0), dz(D, 0);  // w.r.t. the state after segment c
      for (int64_t c = nseg - 1; c >= 0; --c) {
        const std::vector<T>&M = st.M[size_t(c)], &z = st.z[size_t(c)];
        const int64_t a = cu[si] + c * cfg.segment_len, e = std::min(a + cfg.segment_len, cu[si + 1]);
        std::vector<T> dM_prev = dM, dz_prev = dz;
        // update: M' = M + sum_t sigma(k_t)^T w_t, z' = z + sum_t sigma(k_t)
        for (int64_t t = a; t < e; ++t) {
          std::vector<T> sk(D), r(D, 0), w(D), dw(D, 0), dsk(D, 0);
          for (int i = 0; i < d; ++i) sk[i] = sigma(in.k[size_t((t * s.hkv + kh) * d + i)]);
          T cden = T(kInfiniEps);
          for (int i = 0; i < d; ++i) cden += sk[i] * z[i];
          for (int j = 0; j < d; ++j) {
            for (int i = 0; i < d; ++i) r[j] += sk[i] * M[i * d + j];
            w[j] = in.v[size_t((t * s.hkv + kh) * d + j)];
            if (cfg.update == InfiniUpdate::delta) w[j] -= r[j] / cden;
          }
          for (int i = 0; i < d; ++i)
            for (int j = 0; j < d; ++j) {
              dw[j] += sk[i] * dM[i * d + j];
              dsk[i] += w[j] * dM[i * d + j];
            }
          for (int i = 0; i < d; ++i) dsk[i] += dz[i];
          for (int j = 0; j < d; ++j) g.dv[size_t((t * s.hkv + kh) * d + j)] += dw[j];
          if (cfg.update == InfiniUpdate::delta) {
            T dc = 0;
            for (int j = 0; j < d; ++j) dc += dw[j] * r[j] / (cden * cden);
            for (int i = 0; i < d; ++i) {
              for (int j = 0; j < d; ++j) {
                const T dr = -dw[j] / cden;
                dsk[i] += dr * M[i * d + j];
                dM_prev[i * d + j] += sk[i] * dr;
              }
              dsk[i] += dc * z[i];
              dz_prev[i] += dc * sk[i];
            }
          }
          for (int i = 0; i < d; ++i) {
            const size_t o = size_t((t * s.hkv + kh) * d + i);
            g.dk[o] += dsk[i] * sigma_grad(in.k[o]);
          }
        }
        // readout: A = sigma(q) M / (sigma(q) z + eps), out = gate A + (1 - gate) A_dot
        for (int64_t t = a; t < e; ++t)
          for (int h = kh * group; h < (kh + 1) * group; ++h) {
            const T gate = 1 / (1 + std::exp(-beta[h]));
            const size_t row = size_t((t * s.hq + h) * d);
            std::vector<T> sq(D), A(D, 0), dsq(D, 0);
            T den = T(kInfiniEps);
            for (int i = 0; i < d; ++i) {
              sq[i] = sigma(in.q[row + i]);
              den += sq[i] * z[i];
            }
            for (int j = 0; j < d; ++j) {
              for (int i = 0; i < d; ++i) A[j] += sq[i] * M[i * d + j];
              A[j] /= den;
            }
            T dden = 0;
            for (int j = 0; j < d; ++j) {
              g.dbeta[h] += gate * (1 - gate) * dout[row + j] * (A[j] - local[row + j]);
              dden -= gate * dout[row + j] * A[j] / den;
            }
            for (int i = 0; i < d; ++i) {
              for (int j = 0; j < d; ++j) {
                const T dnum = gate * dout[row + j] / den;
                dsq[i] += dnum * M[i * d + j];
                dM_prev[i * d + j] += sq[i] * dnum;
              }
              dsq[i] += dden * z[i];
              dz_prev[i] += dden * sq[i];
              g.dq[row + i] += dsq[i] * sigma_grad(in.q[row + i]);
            }
          }
        dM = dM_prev;
        dz = dz_prev;
      }
    }
}

#define LONGCTX_INSTANTIATE_INFINI(T)                                                                     \
  template void infini_forward<T>(const InfiniShape&, const InfiniData<T>&, const std::vector<T>&,         \
                                  const InfiniConfig&, std::vector<T>&);                                 \
  template void infini_backward<T>(const InfiniShape&, const InfiniData<T>&, const std::vector<T>&,        \
                                   const InfiniConfig&, const std::vector<T>&, InfiniGradsRef<T>&);
LONGCTX_INSTANTIATE_INFINI(float)
LONGCTX_INSTANTIATE_INFINI(double)
#undef LONGCTX_INSTANTIATE_INFINI

}  // namespace longctx::reference
