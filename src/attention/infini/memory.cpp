#include "attention/infini/memory.hpp"

#include <algorithm>
#include <cmath>

#include "core/gemm.hpp"
#include "core/parallel.hpp"

namespace longctx::attn::infini {

// Vectorised helpers (external linkage: GCC only clones non-static functions for target_clones).
namespace kernels {

// Rows of one head of a [T, H, d] tensor sit a page apart, where hardware prefetchers stop: the
// row loops fetch a few rows ahead themselves.
constexpr int64_t kPrefetchRows = 6;
// Rows per block of the forward memory kernels.
constexpr int64_t kMemoryBlock = 256;
inline void prefetch_row(const float* p, int d) {
  for (int c = 0; c < d; c += 16) __builtin_prefetch(p + c);
}

// sigma(x) = ELU(x) + 1 = x + 1 for x > 0, exp(x) otherwise; sigma'(x) = 1 or exp(x).

// dst[n x d] = sigma(x rows)
LONGCTX_SIMD_CLONES void sigma_rows(Rows x, int64_t n, int d, float* dst) {
  for (int64_t t = 0; t < n; ++t) {
    const float* r = x.row(t);
    if (t + kPrefetchRows < n) prefetch_row(x.row(t + kPrefetchRows), d);
    float* o = dst + t * d;
    for (int c = 0; c < d; ++c) {
      const float e = simd::exp_approx(std::min(r[c], 0.0f));
      o[c] = r[c] > 0.0f ? r[c] + 1.0f : e;
    }
  }
}

// z[c] += sum_t a[t] * x[t, c] (a == nullptr: weights 1)
LONGCTX_SIMD_CLONES void add_weighted_colsum(const float* x, const float* a, int64_t n, int d, float* z) {
  for (int64_t t = 0; t < n; ++t) {
    const float w = a ? a[t] : 1.0f;
    const float* r = x + t * d;
    for (int c = 0; c < d; ++c) z[c] += w * r[c];
  }
}

// dst rows += g[t] o sigma'(x rows)
LONGCTX_SIMD_CLONES void add_sigma_backward(Rows x, const float* g, int64_t n, int d, float* dst, int64_t ld_dst) {
  for (int64_t t = 0; t < n; ++t) {
    const float* r = x.row(t);
    const float* gt = g + t * d;
    float* o = dst + t * ld_dst;
    for (int c = 0; c < d; ++c) {
      const float e = simd::exp_approx(std::min(r[c], 0.0f));
      o[c] += gt[c] * (r[c] > 0.0f ? 1.0f : e);
    }
  }
}

// o = a * x + b * y
LONGCTX_SIMD_CLONES void axpby(const float* x, const float* y, float a, float b, float* o, int d) {
  for (int c = 0; c < d; ++c) o[c] = a * x[c] + b * y[c];
}

}  // namespace kernels
using namespace kernels;

namespace {

// (sequence, KV head) pairs of non-empty sequences, longest first.
struct SeqHead {
  int64_t seq;
  int g;
};
std::vector<SeqHead> items_of(const Problem& p) {
  std::vector<SeqHead> all;
  std::vector<double> cost;
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int g = 0; g < p.hkv; ++g)
      if (p.seqs[si].lq > 0) {
        all.push_back({int64_t(si), g});
        cost.push_back(double(p.seqs[si].lq));
      }
  return parallel::heaviest_first(all, cost);
}

// First global segment index of every sequence.
std::vector<int64_t> segment_offsets(const MemoryPass& mp) {
  std::vector<int64_t> first{0};
  for (const Seq& s : mp.p.seqs) first.push_back(first.back() + mp.segments(s));
  return first;
}

}  // namespace

MemoryScratch::MemoryScratch(int64_t rows, int d, bool backward)
    : pending(size_t(d) * d + d) {
  // the forward kernels work in blocks of kMemoryBlock rows (scratch stays in L2); the backward
  // takes a segment at a time
  const int64_t r = backward ? rows : std::min(rows, kMemoryBlock);
  sx.resize(r * d);
  prod.resize(r * d);
  w.resize(r * d);
  den.resize(r);
  if (backward) {
    dw.resize(r * d);
    dx.resize(r * d);
    dprod.resize(r * d);
  }
}

int64_t MemoryPass::total_segments() const { return segment_offsets(*this).back(); }

void read_and_mix(Rows q, int64_t n, int d, const float* M, const float* z, float gate, Rows local, float* out,
                  int64_t ld_out, MemoryScratch& ws) {
  float *sq = ws.sx.data(), *num = ws.prod.data();
  for (int64_t b = 0; b < n; b += kMemoryBlock) {
    const int64_t m = std::min(kMemoryBlock, n - b);
    sigma_rows({q.row(b), q.ld}, m, d, sq);
    gemm::sgemm(false, false, m, d, d, 1.0f, sq, d, M, d, 0.0f, num, d);
    for (int64_t t = 0; t < m; ++t) {
      if (t + kPrefetchRows < m) prefetch_row(local.row(b + t + kPrefetchRows), d);
      const float a = gate / (simd::dot(sq + t * d, z, d) + kInfiniEps);
      axpby(num + t * d, local.row(b + t), a, 1.0f - gate, out + (b + t) * ld_out, d);
    }
  }
}

void write_memory(Rows k, Rows v, int64_t n, int d, InfiniUpdate rule, float* M, float* z, MemoryScratch& ws) {
  // the segment's update accumulates aside: the delta rule reads M and z of before the segment
  float *dM = ws.pending.data(), *dz = dM + int64_t(d) * d, *sk = ws.sx.data();
  std::fill(ws.pending.begin(), ws.pending.end(), 0.0f);
  for (int64_t b = 0; b < n; b += kMemoryBlock) {
    const int64_t m = std::min(kMemoryBlock, n - b);
    sigma_rows({k.row(b), k.ld}, m, d, sk);
    Rows w{v.row(b), v.ld};
    if (rule == InfiniUpdate::delta) {  // W = V - sigma(K) M / (sigma(K) z + eps)  (eq. 5)
      float* wb = ws.w.data();
      gemm::sgemm(false, false, m, d, d, 1.0f, sk, d, M, d, 0.0f, wb, d);
      for (int64_t t = 0; t < m; ++t)
        axpby(v.row(b + t), wb + t * d, 1.0f, -1.0f / (simd::dot(sk + t * d, z, d) + kInfiniEps), wb + t * d, d);
      w = {wb, d};
    }
    gemm::sgemm(true, false, d, d, m, 1.0f, sk, d, w.p, w.ld, 1.0f, dM, d);
    add_weighted_colsum(sk, nullptr, m, d, dz);
  }
  simd::add_inplace(M, dM, int64_t(d) * d);
  simd::add_inplace(z, dz, d);
}

void memory_forward(const MemoryPass& mp, const Tensor& local_out, float* out, float* ckpt_m, float* ckpt_z) {
  const Problem& p = mp.p;
  const int d = p.d;
  const int64_t dd = int64_t(d) * d, ld_q = int64_t(p.hq) * d;
  const std::vector<SeqHead> items = items_of(p);
  const std::vector<int64_t> seg0 = segment_offsets(mp);
  parallel::run(
      int64_t(items.size()), parallel::Schedule::dynamic,
      [&](int) {
        return std::pair(MemoryScratch(std::min(mp.segment_len, p.tq), d, false), std::vector<float>(dd + d));
      },
      [&](int64_t i, auto& state) {
        auto& [ws, mz] = state;
        const Seq& s = p.seqs[size_t(items[size_t(i)].seq)];
        const int g = items[size_t(i)].g;
        float *M = mz.data(), *z = M + dd;
        std::fill(mz.begin(), mz.end(), 0.0f);
        const int64_t nseg = mp.segments(s);
        for (int64_t c = 0; c < nseg; ++c) {
          const int64_t t0 = s.q0 + c * mp.segment_len, n = std::min(mp.segment_len, s.lq - c * mp.segment_len);
          if (ckpt_m) {
            const int64_t at = (seg0[size_t(items[size_t(i)].seq)] + c) * p.hkv + g;
            std::copy_n(M, dd, ckpt_m + at * dd);
            std::copy_n(z, d, ckpt_z + at * d);
          }
          for (int h = g * p.group; h < (g + 1) * p.group; ++h)
            read_and_mix(load_rows(mp.q, t0, n, h, nullptr), n, d, M, z, mp.gate[size_t(h)],
                         load_rows(local_out, t0, n, h, nullptr), out + (t0 * p.hq + h) * d, ld_q, ws);
          if (c + 1 < nseg)  // nothing reads the memory after the last segment
            write_memory(load_rows(mp.k, t0, n, g, nullptr), load_rows(mp.v, t0, n, g, nullptr), n, d, mp.update, M,
                         z, ws);
        }
      });
}

std::vector<float> memory_backward(const MemoryPass& mp, const Tensor& local_out, const Tensor& dout,
                                   const float* ckpt_m, const float* ckpt_z, float* dq, float* dk, float* dv) {
  const Problem& p = mp.p;
  const int d = p.d;
  const int64_t dd = int64_t(d) * d, ld_q = int64_t(p.hq) * d, ld_kv = int64_t(p.hkv) * d;
  const std::vector<SeqHead> items = items_of(p);
  const std::vector<int64_t> seg0 = segment_offsets(mp);
  std::vector<double> dbeta_part(items.size() * size_t(p.group), 0.0);  // per item, reduced in item order

  parallel::run(
      int64_t(items.size()), parallel::Schedule::dynamic,
      [&](int) {
        return std::pair(MemoryScratch(std::min(mp.segment_len, p.tq), d, true), std::vector<float>(dd + d));
      },
      [&](int64_t i, auto& state) {
        auto& [ws, dmz] = state;
        const Seq& s = p.seqs[size_t(items[size_t(i)].seq)];
        const int g = items[size_t(i)].g;
        float *dM = dmz.data(), *dz = dM + dd;  // gradient w.r.t. the state after the current segment
        std::fill(dmz.begin(), dmz.end(), 0.0f);
        const int64_t nseg = mp.segments(s);
        for (int64_t c = nseg - 1; c >= 0; --c) {
          const int64_t t0 = s.q0 + c * mp.segment_len, n = std::min(mp.segment_len, s.lq - c * mp.segment_len);
          const int64_t at = (seg0[size_t(items[size_t(i)].seq)] + c) * p.hkv + g;
          const float *M = ckpt_m + at * dd, *z = ckpt_z + at * d;
          float *sx = ws.sx.data(), *w = ws.w.data(), *dw = ws.dw.data(), *dx = ws.dx.data(),
                *dprod = ws.dprod.data(), *prod = ws.prod.data(), *den = ws.den.data();

          if (c + 1 < nseg) {  // the update M_c = M + sigma(K)^T W, z_c = z + colsum sigma(K)
            const Rows kr = load_rows(mp.k, t0, n, g, nullptr), vr = load_rows(mp.v, t0, n, g, nullptr);
            sigma_rows(kr, n, d, sx);
            Rows wr = vr;
            if (mp.update == InfiniUpdate::delta) {  // W = V - R / c, R = sigma(K) M, c = sigma(K) z + eps
              gemm::sgemm(false, false, n, d, d, 1.0f, sx, d, M, d, 0.0f, prod, d);
              for (int64_t t = 0; t < n; ++t) {
                den[t] = simd::dot(sx + t * d, z, d) + kInfiniEps;
                for (int c2 = 0; c2 < d; ++c2) w[t * d + c2] = vr.row(t)[c2] - prod[t * d + c2] / den[t];
              }
              wr = {w, d};
            }
            // dW = sigma(K) dM;  dsigma(K) = W dM^T + dz
            gemm::sgemm(false, false, n, d, d, 1.0f, sx, d, dM, d, 0.0f, dw, d);
            gemm::sgemm(false, true, n, d, d, 1.0f, wr.p, wr.ld, dM, d, 0.0f, dx, d);
            for (int64_t t = 0; t < n; ++t) {
              simd::add_inplace(dx + t * d, dz, d);
              simd::add_inplace(dv + ((t0 + t) * p.hkv + g) * d, dw + t * d, d);
            }
            if (mp.update == InfiniUpdate::delta) {
              // dR = -dW / c;  dc = (dW . R) / c^2;  dsigma(K) += dR M^T + dc z;  dM += sigma(K)^T dR;
              // dz += sum_t dc_t sigma(k_t)
              for (int64_t t = 0; t < n; ++t) {
                const float dc = simd::dot(dw + t * d, prod + t * d, d) / (den[t] * den[t]);
                for (int c2 = 0; c2 < d; ++c2) {
                  dprod[t * d + c2] = -dw[t * d + c2] / den[t];
                  dx[t * d + c2] += dc * z[c2];
                }
                den[t] = dc;
              }
              gemm::sgemm(false, true, n, d, d, 1.0f, dprod, d, M, d, 1.0f, dx, d);
              gemm::sgemm(true, false, d, d, n, 1.0f, sx, d, dprod, d, 1.0f, dM, d);
              add_weighted_colsum(sx, den, n, d, dz);
            }
            add_sigma_backward(kr, dx, n, d, dk + (t0 * p.hkv + g) * d, ld_kv);
          }

          // the readouts A = sigma(Q) M / den, den = sigma(Q) z + eps, of every query head of the group
          for (int h = g * p.group; h < (g + 1) * p.group; ++h) {
            const float gate = mp.gate[size_t(h)];
            const Rows qr = load_rows(mp.q, t0, n, h, nullptr), lr = load_rows(local_out, t0, n, h, nullptr),
                       gr = load_rows(dout, t0, n, h, nullptr);
            sigma_rows(qr, n, d, sx);
            gemm::sgemm(false, false, n, d, d, 1.0f, sx, d, M, d, 0.0f, prod, d);
            double db = 0;
            for (int64_t t = 0; t < n; ++t) {
              const float dn = simd::dot(sx + t * d, z, d) + kInfiniEps;
              float* a = prod + t * d;
              const float* gt = gr.row(t);
              for (int c2 = 0; c2 < d; ++c2) a[c2] /= dn;
              // out = gate A + (1 - gate) A_dot:  dbeta += gate (1 - gate) dout . (A - A_dot)
              db += simd::dot(gt, a, d) - simd::dot(gt, lr.row(t), d);
              // dnum = gate dout / den;  dden = -gate (dout . A) / den
              const float dden = -gate * simd::dot(gt, a, d) / dn;
              for (int c2 = 0; c2 < d; ++c2) dw[t * d + c2] = gate * gt[c2] / dn;
              den[t] = dden;
            }
            dbeta_part[size_t(i) * p.group + size_t(h - g * p.group)] += double(gate) * (1.0 - gate) * db;
            // dsigma(Q) = dnum M^T + dden z;  dM += sigma(Q)^T dnum;  dz += sum_t dden_t sigma(q_t)
            gemm::sgemm(false, true, n, d, d, 1.0f, dw, d, M, d, 0.0f, dx, d);
            for (int64_t t = 0; t < n; ++t)
              for (int c2 = 0; c2 < d; ++c2) dx[t * d + c2] += den[t] * z[c2];
            add_sigma_backward(qr, dx, n, d, dq + (t0 * p.hq + h) * d, ld_q);
            gemm::sgemm(true, false, d, d, n, 1.0f, sx, d, dw, d, 1.0f, dM, d);
            add_weighted_colsum(sx, den, n, d, dz);
          }
        }
      });

  std::vector<float> dbeta(size_t(p.hq), 0.0f);
  std::vector<double> acc(size_t(p.hq), 0.0);
  for (size_t i = 0; i < items.size(); ++i)
    for (int j = 0; j < p.group; ++j) acc[size_t(items[i].g * p.group + j)] += dbeta_part[i * p.group + size_t(j)];
  for (int h = 0; h < p.hq; ++h) dbeta[size_t(h)] = float(acc[size_t(h)]);
  return dbeta;
}

}  // namespace longctx::attn::infini
