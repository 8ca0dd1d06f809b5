// The naive NSA (see nsa.hpp): every rule written out directly from its definition, one dense
// mask per branch, reference::attention_forward/backward for each branch.
#include <longctx/attention/nsa/nsa.hpp>
#include <longctx/attention/nsa/reference.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/engine/varlen.hpp"
#include "core/simd.hpp"

namespace longctx::reference {

namespace {

// phi of compressed block i of the rows starting at k0 (KV head g) into out[d].
template <class T>
void compress_block(const std::vector<T>& x, int hkv, int d, int64_t k0, int64_t i, int g, const NsaConfig& cfg,
                    const NsaCompressor<T>& c, T* out) {
  const int64_t l = cfg.block_len, L = l * d;
  std::vector<T> in(size_t(L), 0);
  for (int64_t r = 0; r < l; ++r)
    for (int e = 0; e < d; ++e) in[r * d + e] = x[((k0 + i * cfg.stride + r) * hkv + g) * d + e];
  if (cfg.compress == NsaCompress::mean) {
    for (int e = 0; e < d; ++e) {
      T acc = 0;
      for (int64_t r = 0; r < l; ++r) acc += in[r * d + e];
      out[e] = acc / T(l);
    }
    return;
  }
  const int64_t H = int64_t(c.b1.size());
  std::vector<T> a(H);
  for (int64_t j = 0; j < H; ++j) {
    T pre = c.b1[j];
    for (int64_t m = 0; m < L; ++m) pre += c.w1[j * L + m] * (in[m] + c.pos[m]);
    a[j] = pre * simd::sigmoid(pre);
  }
  for (int e = 0; e < d; ++e) {
    T acc = c.b2[e];
    for (int64_t j = 0; j < H; ++j) acc += c.w2[e * H + j] * a[j];
    out[e] = acc;
  }
}

// Backward of compress_block: dout[d] -> += dx rows, += dc.
template <class T>
void compress_block_backward(const std::vector<T>& x, int hkv, int d, int64_t k0, int64_t i, int g,
                             const NsaConfig& cfg, const NsaCompressor<T>& c, const T* dout, std::vector<T>& dx,
                             NsaCompressor<T>& dc) {
  const int64_t l = cfg.block_len, L = l * d;
  auto row = [&](int64_t m) { return ((k0 + i * cfg.stride + m / d) * hkv + g) * d + m % d; };
  if (cfg.compress == NsaCompress::mean) {
    for (int64_t m = 0; m < L; ++m) dx[row(m)] += dout[m % d] / T(l);
    return;
  }
  const int64_t H = int64_t(c.b1.size());
  std::vector<T> in(L), pre(H), dpre(H);
  for (int64_t m = 0; m < L; ++m) in[m] = x[row(m)] + c.pos[m];
  for (int64_t j = 0; j < H; ++j) {
    pre[j] = c.b1[j];
    for (int64_t m = 0; m < L; ++m) pre[j] += c.w1[j * L + m] * in[m];
  }
  for (int64_t j = 0; j < H; ++j) {
    const T sg = simd::sigmoid(pre[j]), a = pre[j] * sg;
    T da = 0;
    for (int e = 0; e < d; ++e) {
      da += dout[e] * c.w2[e * H + j];
      dc.w2[e * H + j] += dout[e] * a;
    }
    dpre[j] = da * sg * (1 + pre[j] * (1 - sg));  // silu'(x) = s (1 + x (1 - s))
    dc.b1[j] += dpre[j];
  }
  for (int e = 0; e < d; ++e) dc.b2[e] += dout[e];
  for (int64_t m = 0; m < L; ++m) {
    T din = 0;
    for (int64_t j = 0; j < H; ++j) {
      din += dpre[j] * c.w1[j * L + m];
      dc.w1[j * L + m] += dpre[j] * in[m];
    }
    dc.pos[m] += din;
    dx[row(m)] += din;
  }
}

template <class T>
NsaCompressor<T> zeros_like(const NsaCompressor<T>& c) {
  auto z = [](const std::vector<T>& x) { return std::vector<T>(x.size(), 0); };
  return {z(c.pos), z(c.w1), z(c.b1), z(c.w2), z(c.b2)};
}

}  // namespace

template <class T>
NsaForward<T> nsa_forward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                          const std::vector<T>& v, const std::vector<T>& x, int gate_in,
                          const NsaWeights<T>& w, const NsaConfig& cfg, const Varlen& varlen,
                          const std::vector<int32_t>* fixed_selection) {
  NsaForward<T> f;
  const std::vector<attn::Seq> seqs = attn::sequences_of(varlen, s.tq, s.tk);
  const int d = s.d, group = s.hq / s.hkv;
  const T scale = cfg.softmax_scale > 0 ? T(cfg.softmax_scale) : T(1) / std::sqrt(T(d));
  const int64_t l = cfg.block_len, ls = cfg.select_len, n = cfg.top_n;

  // Compression: block i of a sequence covers [i*stride, i*stride + l), for every such block
  // that lies inside the sequence.
  f.cu_c.push_back(0);
  for (const attn::Seq& sq : seqs) {
    int64_t nc = 0;
    while (nc * cfg.stride + l <= sq.lk) ++nc;
    f.cu_c.push_back(f.cu_c.back() + nc);
    f.max_blocks = std::max(f.max_blocks, (sq.lk + ls - 1) / ls);
  }
  const int64_t tc = f.cu_c.back();
  f.kc.assign(size_t(tc * s.hkv * d), 0);
  f.vc.assign(size_t(tc * s.hkv * d), 0);
  for (size_t si = 0; si < seqs.size(); ++si)
    for (int64_t i = 0; i < f.cu_c[si + 1] - f.cu_c[si]; ++i)
      for (int g = 0; g < s.hkv; ++g) {
        const int64_t row = ((f.cu_c[si] + i) * s.hkv + g) * d;
        compress_block(k, s.hkv, d, seqs[si].k0, i, g, cfg, w.ck, &f.kc[row]);
        compress_block(v, s.hkv, d, seqs[si].k0, i, g, cfg, w.cv, &f.vc[row]);
      }

  // Compression branch: query at position t sees block i iff t >= i*stride + l - 1.
  const Shape sc{s.tq, tc, s.hq, s.hkv, d};
  f.mask_c.assign(size_t(s.hq * s.tq * tc), 0);
  for (size_t si = 0; si < seqs.size(); ++si)
    for (int64_t i = 0; i < seqs[si].lq; ++i)
      for (int64_t b = 0; b < f.cu_c[si + 1] - f.cu_c[si]; ++b)
        for (int h = 0; h < s.hq; ++h)
          f.mask_c[(h * s.tq + seqs[si].q0 + i) * tc + f.cu_c[si] + b] =
              i + seqs[si].offset() >= b * cfg.stride + l - 1;
  attention_forward(sc, q, f.kc, f.vc, scale, f.mask_c, f.out_c, f.lse_c);

  // Importance of selection block j for (query row, KV head): the compression probabilities of
  // the group's heads, each compressed block counted with the fraction of its l tokens inside j.
  const int64_t mb = f.max_blocks;
  f.importance.assign(size_t(s.tq * s.hkv * mb), 0);
  for (size_t si = 0; si < seqs.size(); ++si)
    for (int64_t i = 0; i < seqs[si].lq; ++i)
      for (int h = 0; h < s.hq; ++h) {
        const int64_t r = seqs[si].q0 + i;
        if (f.lse_c[h * s.tq + r] == -std::numeric_limits<T>::infinity()) continue;
        for (int64_t b = 0; b < f.cu_c[si + 1] - f.cu_c[si]; ++b) {
          const int64_t c = f.cu_c[si] + b;
          if (!f.mask_c[(h * s.tq + r) * tc + c]) continue;
          T dot = 0;
          for (int e = 0; e < d; ++e) dot += q[(r * s.hq + h) * d + e] * f.kc[(c * s.hkv + h / group) * d + e];
          const T p = std::exp(scale * dot - f.lse_c[h * s.tq + r]);
          for (int64_t j = 0; j < mb; ++j) {
            const int64_t ov = std::min(b * cfg.stride + l, (j + 1) * ls) - std::max(b * cfg.stride, j * ls);
            if (ov > 0) f.importance[(r * s.hkv + h / group) * mb + j] += p * T(ov) / T(l);
          }
        }
      }

  // Selection: among blocks starting at or before t, block 0 and the local_blocks latest are
  // forced, the rest by importance (ties toward the later block), n in all, ascending.
  if (fixed_selection) {
    f.selected = *fixed_selection;
  } else {
    f.selected.assign(size_t(s.tq * s.hkv * n), -1);
    for (const attn::Seq& sq : seqs)
      for (int64_t i = 0; i < sq.lq; ++i)
        for (int g = 0; g < s.hkv; ++g) {
          const int64_t t = i + sq.offset(), r = sq.q0 + i, own = t / ls;
          std::vector<int64_t> cand;
          for (int64_t j = 0; j <= own; ++j) cand.push_back(j);
          auto forced = [&](int64_t j) { return j == 0 || own - j < cfg.local_blocks; };
          const T* imp = &f.importance[(r * s.hkv + g) * mb];
          std::sort(cand.begin(), cand.end(), [&](int64_t a, int64_t b) {
            if (forced(a) != forced(b)) return forced(a);
            if (imp[a] != imp[b]) return imp[a] > imp[b];
            return a > b;
          });
          cand.resize(std::min<size_t>(cand.size(), size_t(n)));
          std::sort(cand.begin(), cand.end());
          for (size_t c = 0; c < cand.size(); ++c) f.selected[(r * s.hkv + g) * n + c] = int32_t(cand[c]);
        }
  }
  f.mask_s.assign(size_t(s.hq * s.tq * s.tk), 0);
  for (const attn::Seq& sq : seqs)
    for (int64_t i = 0; i < sq.lq; ++i)
      for (int h = 0; h < s.hq; ++h)
        for (int64_t c = 0; c < n; ++c) {
          const int32_t j = f.selected[((sq.q0 + i) * s.hkv + h / group) * n + c];
          if (j < 0) continue;
          for (int64_t kp = j * ls; kp < std::min((j + 1) * ls, sq.lk); ++kp)
            f.mask_s[(h * s.tq + sq.q0 + i) * s.tk + sq.k0 + kp] = kp <= i + sq.offset();
        }
  attention_forward(s, q, k, v, scale, f.mask_s, f.out_s, f.lse_s);

  AttentionOptions wopt;
  wopt.window = cfg.window;
  f.mask_w = dense_mask(s, varlen, wopt);
  attention_forward(s, q, k, v, scale, f.mask_w, f.out_w, f.lse_w);

  // Gates and the gated sum (paper eq. 5).
  f.gates.assign(size_t(s.tq * s.hq * 3), 0);
  f.out.assign(size_t(s.tq * s.hq * d), 0);
  for (int64_t t = 0; t < s.tq; ++t)
    for (int h = 0; h < s.hq; ++h) {
      const std::vector<T>* outs[3] = {&f.out_c, &f.out_s, &f.out_w};
      for (int b = 0; b < 3; ++b) {
        const int64_t gr = h * 3 + b;
        T logit = w.gate_b[gr];
        for (int e = 0; e < gate_in; ++e) logit += x[t * gate_in + e] * w.gate_w[gr * gate_in + e];
        const T g = simd::sigmoid(logit);
        f.gates[(t * s.hq + h) * 3 + b] = g;
        for (int e = 0; e < d; ++e) f.out[(t * s.hq + h) * d + e] += g * (*outs[b])[(t * s.hq + h) * d + e];
      }
    }
  return f;
}

template <class T>
NsaGradsRef<T> nsa_backward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                            const std::vector<T>& v, const std::vector<T>& x, int gate_in,
                            const NsaWeights<T>& w, const NsaConfig& cfg, const Varlen& varlen,
                            const NsaForward<T>& f, const std::vector<T>& dout) {
  const int d = s.d;
  const T scale = cfg.softmax_scale > 0 ? T(cfg.softmax_scale) : T(1) / std::sqrt(T(d));
  NsaGradsRef<T> g;
  g.dx.assign(x.size(), 0);
  g.dw = {zeros_like(w.ck), zeros_like(w.cv), std::vector<T>(w.gate_w.size(), 0), std::vector<T>(w.gate_b.size(), 0)};

  // Gates: d gate_b = dout . O_b, through the sigmoid into the linear gate.
  std::vector<T> dout_b[3];
  const std::vector<T>* outs[3] = {&f.out_c, &f.out_s, &f.out_w};
  for (auto& db : dout_b) db.assign(dout.size(), 0);
  for (int64_t t = 0; t < s.tq; ++t)
    for (int h = 0; h < s.hq; ++h)
      for (int b = 0; b < 3; ++b) {
        const T gv = f.gates[(t * s.hq + h) * 3 + b];
        T dg = 0;
        for (int e = 0; e < d; ++e) {
          const int64_t o = (t * s.hq + h) * d + e;
          dg += dout[o] * (*outs[b])[o];
          dout_b[b][o] = gv * dout[o];
        }
        const T dlogit = dg * gv * (1 - gv);
        const int64_t gr = h * 3 + b;
        g.dw.gate_b[gr] += dlogit;
        for (int e = 0; e < gate_in; ++e) {
          g.dw.gate_w[gr * gate_in + e] += dlogit * x[t * gate_in + e];
          g.dx[t * gate_in + e] += dlogit * w.gate_w[gr * gate_in + e];
        }
      }

  const int64_t tc = f.cu_c.back();
  const Shape sc{s.tq, tc, s.hq, s.hkv, d};
  std::vector<T> dq_c, dkc, dvc, dq_s, dk_s, dv_s, dq_w, dk_w, dv_w;
  attention_backward(sc, q, f.kc, f.vc, scale, f.mask_c, dout_b[0], dq_c, dkc, dvc);
  attention_backward(s, q, k, v, scale, f.mask_s, dout_b[1], dq_s, dk_s, dv_s);
  attention_backward(s, q, k, v, scale, f.mask_w, dout_b[2], dq_w, dk_w, dv_w);
  g.dq = dq_c;
  g.dk = dk_s;
  g.dv = dv_s;
  for (size_t i = 0; i < g.dq.size(); ++i) g.dq[i] += dq_s[i] + dq_w[i];
  for (size_t i = 0; i < g.dk.size(); ++i) g.dk[i] += dk_w[i], g.dv[i] += dv_w[i];

  const std::vector<attn::Seq> seqs = attn::sequences_of(varlen, s.tq, s.tk);
  for (size_t si = 0; si < seqs.size(); ++si)
    for (int64_t i = 0; i < f.cu_c[si + 1] - f.cu_c[si]; ++i)
      for (int hg = 0; hg < s.hkv; ++hg) {
        const int64_t row = ((f.cu_c[si] + i) * s.hkv + hg) * d;
        compress_block_backward(k, s.hkv, d, seqs[si].k0, i, hg, cfg, w.ck, &dkc[row], g.dk, g.dw.ck);
        compress_block_backward(v, s.hkv, d, seqs[si].k0, i, hg, cfg, w.cv, &dvc[row], g.dv, g.dw.cv);
      }
  return g;
}

#define LONGCTX_NSA_INSTANTIATE(T)                                                                          \
  template NsaForward<T> nsa_forward<T>(const Shape&, const std::vector<T>&, const std::vector<T>&,         \
                                        const std::vector<T>&, const std::vector<T>&, int,                  \
                                        const NsaWeights<T>&, const NsaConfig&, const Varlen&,              \
                                        const std::vector<int32_t>*);                                       \
  template NsaGradsRef<T> nsa_backward<T>(const Shape&, const std::vector<T>&, const std::vector<T>&,       \
                                          const std::vector<T>&, const std::vector<T>&, int,                \
                                          const NsaWeights<T>&, const NsaConfig&, const Varlen&,            \
                                          const NsaForward<T>&, const std::vector<T>&);
LONGCTX_NSA_INSTANTIATE(float)
LONGCTX_NSA_INSTANTIATE(double)

}  // namespace longctx::reference
