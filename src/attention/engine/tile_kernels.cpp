#include "attention/engine/tile_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/gemm.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx::attn {

static constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void TileMask::range(int64_t i, int64_t n, int64_t& lo, int64_t& hi) const {
  if (row_hi) {
    lo = 0;
    hi = std::clamp<int64_t>(row_hi[i] - k_pos0, 0, n);
    return;
  }
  if (all) {
    lo = 0;
    hi = n;
    return;
  }
  const int64_t p = q_pos0 + i;
  lo = std::clamp<int64_t>(problem->key_lo(p) - k_pos0, 0, n);
  hi = std::clamp<int64_t>(problem->key_hi(p, lk) - k_pos0, 0, n);
}

void SoftmaxState::reset(int64_t rows, int d) {
  std::fill_n(m, rows, kNegInf);
  std::fill_n(l, rows, 0.0f);
  for (int64_t i = 0; i < rows; ++i) std::fill_n(acc + i * ld_acc, d, 0.0f);
}

void fold_scores(SoftmaxState st, int64_t i, float* s, int64_t n, float scale, int d) {
  const float m_new = std::max(st.m[i], scale * simd::max_of(s, n));
  const float alpha = simd::exp_approx(st.m[i] - m_new);  // 0 on the first visible tile
  st.l[i] = st.l[i] * alpha + simd::exp_scaled_sum(s, n, scale, m_new);
  st.m[i] = m_new;
  if (alpha != 1.0f) simd::scale_inplace(st.acc + i * st.ld_acc, d, alpha);
}

void merge_state(SoftmaxState into, int64_t i, SoftmaxState from, int64_t j, int d) {
  if (from.l[j] == 0.0f) return;  // no key on that side
  float* a = into.acc + i * into.ld_acc;
  const float* b = from.acc + j * from.ld_acc;
  const float m = std::max(into.m[i], from.m[j]);
  const float wa = into.l[i] > 0.0f ? simd::exp_approx(into.m[i] - m) : 0.0f, wb = simd::exp_approx(from.m[j] - m);
  simd::scale_inplace(a, d, wa);
  simd::axpy(a, b, d, wb);
  into.l[i] = into.l[i] * wa + from.l[j] * wb;
  into.m[i] = m;
}

void tile_forward(Rows q, int64_t rows, Rows k, Rows v, int64_t n, int d, float scale, gemm::Precision products,
                  const TileMask& mask, SoftmaxState st, float* s) {
  gemm::gemm(products, false, true, rows, n, d, 1.0f, q.p, q.ld, k.p, k.ld, 0.0f, s, n);
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * n;
    int64_t lo, hi;
    mask.range(i, n, lo, hi);
    if (hi <= lo) {
      std::fill_n(si, n, 0.0f);
      continue;
    }
    std::fill(si, si + lo, 0.0f);
    std::fill(si + hi, si + n, 0.0f);
    fold_scores(st, i, si + lo, hi - lo, scale, d);
  }
  gemm::gemm(products, false, false, rows, d, n, 1.0f, s, n, v.p, v.ld, 1.0f, st.acc, st.ld_acc);
}

void tile_finalize(SoftmaxState st, int64_t rows, int d, float* out, int64_t ld_out, float* lse) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* a = st.acc + i * st.ld_acc;
    float* o = out + i * ld_out;
    if (st.l[i] > 0.0f) {
      const float inv = 1.0f / st.l[i];
      for (int c = 0; c < d; ++c) o[c] = a[c] * inv;
      lse[i] = st.m[i] + std::log(st.l[i]);
    } else {
      std::fill_n(o, d, 0.0f);
      lse[i] = kNegInf;
    }
  }
}

void tile_backward(Rows q, Rows dout, const float* lse, const float* delta, int64_t rows, Rows k,
                   Rows v, int64_t n, int d, float scale, gemm::Precision products, const TileMask& mask, float* dq,
                   int64_t ld_dq, float* dk, float* dv, int64_t ld_dkv, float* p, float* dp) {
  // P = exp(scale * Q K^T - lse), zero outside the mask.
  gemm::gemm(products, false, true, rows, n, d, 1.0f, q.p, q.ld, k.p, k.ld, 0.0f, p, n);
  for (int64_t i = 0; i < rows; ++i) {
    float* pi = p + i * n;
    int64_t lo, hi;
    mask.range(i, n, lo, hi);
    if (hi <= lo || lse[i] == kNegInf) {
      std::fill_n(pi, n, 0.0f);
      continue;
    }
    std::fill(pi, pi + lo, 0.0f);
    std::fill(pi + hi, pi + n, 0.0f);
    simd::exp_scaled_sum(pi + lo, hi - lo, scale, lse[i]);
  }
  // dV += P^T dO;  dP = dO V^T;  dS = P o (dP - D);  dK += scale dS^T Q;  dQ += scale dS K.
  gemm::gemm(products, true, false, n, d, rows, 1.0f, p, n, dout.p, dout.ld, 1.0f, dv, ld_dkv);
  gemm::gemm(products, false, true, rows, n, d, 1.0f, dout.p, dout.ld, v.p, v.ld, 0.0f, dp, n);
  for (int64_t i = 0; i < rows; ++i) simd::softmax_grad_inplace(dp + i * n, p + i * n, n, delta[i]);
  gemm::gemm(products, true, false, n, d, rows, scale, dp, n, q.p, q.ld, 1.0f, dk, ld_dkv);
  gemm::gemm(products, false, false, rows, d, n, scale, dp, n, k.p, k.ld, 1.0f, dq, ld_dq);
}

}  // namespace longctx::attn

namespace longctx::attn {

TileScratch::TileScratch(int64_t q_rows, int64_t k_rows, int d, bool backward)
    : m(q_rows), l(q_rows), s(q_rows * k_rows), q(q_rows * d), k(k_rows * d), v(k_rows * d) {
  if (backward) {
    dp.resize(q_rows * k_rows);
    dout.resize(q_rows * d);
    lse.resize(q_rows);
    delta.resize(q_rows);
  }
}

TileMask make_tile_mask(const Problem& p, int64_t q_pos0, int64_t rows, int64_t k_pos0, int64_t n, int64_t lk) {
  TileMask m{&p, q_pos0, k_pos0, lk, false};
  const int64_t last = q_pos0 + rows - 1;
  m.all = p.key_lo(last) <= k_pos0 && p.key_hi(q_pos0, lk) >= k_pos0 + n;
  return m;
}

void rows_seeing_keys(const Problem& p, const Seq& s, int64_t k_pos0, int64_t n, int64_t& lo, int64_t& hi) {
  // position p sees [key_lo(p), key_hi(p)), both non-decreasing in p
  lo = p.causal ? std::max<int64_t>(0, k_pos0 - s.offset()) : 0;
  hi = s.lq;
  if (p.window > 0) hi = std::min(hi, k_pos0 + n - 1 + p.window - s.offset());
  hi = std::max(hi, lo);
}

std::vector<float> rowsum_dout_out(const Tensor& dout, const Tensor& out) {
  const int64_t T = out.dim(0), H = out.dim(1), d = out.dim(2);
  std::vector<float> delta(size_t(H * T));
  const float* o = out.f32();
  const float* g = dout.f32();
#pragma omp parallel for schedule(static) if (parallel::worth_threads(T * H * d))
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) delta[h * T + t] = simd::dot(o + (t * H + h) * d, g + (t * H + h) * d, d);
  return delta;
}

DqAccumulators::DqAccumulators(Tensor& dq, int threads) : dq_(dq) {
  for (int t = 1; t < threads; ++t) extra_.emplace_back(dq.shape());
}

float* DqAccumulators::for_thread(int t) { return t == 0 ? dq_.f32() : extra_[size_t(t - 1)].f32(); }

void DqAccumulators::reduce() {
  if (extra_.empty()) return;
  const int64_t n = dq_.numel(), chunk = 1 << 14;
  float* dst = dq_.f32();
#pragma omp parallel for schedule(static) if (parallel::worth_threads(n))
  for (int64_t c = 0; c < n; c += chunk)
    for (const Tensor& e : extra_) simd::add_inplace(dst + c, e.f32() + c, std::min(chunk, n - c));
}

}  // namespace longctx::attn

namespace longctx::attn {

void attend_key_range(const Problem& p, const Seq& s, const Tensor& k, const Tensor& v, int g, Rows q,
                      int64_t rows, int64_t pos0, int64_t k_begin, int64_t k_end, SoftmaxState st,
                      TileScratch& ws, bool all_visible) {
  for (int64_t kp = k_begin; kp < k_end; kp += kKeyTile) {
    const int64_t n = std::min(kKeyTile, k_end - kp);
    const Rows kr = load_rows(k, s.k0 + kp, n, g, ws.k.data());
    const Rows vr = load_rows(v, s.k0 + kp, n, g, ws.v.data());
    const TileMask mask = all_visible ? TileMask{} : make_tile_mask(p, pos0, rows, kp, n, s.lk);
    tile_forward(q, rows, kr, vr, n, p.d, p.scale, p.products, mask, st, ws.s.data());
  }
}

void backward_key_tile(const Problem& p, const Seq& s, const BackwardInputs& in, int g, int64_t k_pos0,
                       int64_t n, int64_t q_lo, int64_t q_hi, float* dk, float* dv, float* dq,
                       TileScratch& ws) {
  const Rows kr = load_rows(in.k, s.k0 + k_pos0, n, g, ws.k.data());
  const Rows vr = load_rows(in.v, s.k0 + k_pos0, n, g, ws.v.data());
  const int64_t ld_q = int64_t(p.hq) * p.d, ld_kv = int64_t(p.hkv) * p.d;
  for (int h = g * p.group; h < (g + 1) * p.group; ++h)
    for (int64_t t = q_lo; t < q_hi; t += kQueryTile) {
      const int64_t rows = std::min(kQueryTile, q_hi - t), row0 = s.q0 + t;
      const Rows qr = load_rows(in.q, row0, rows, h, ws.q.data());
      const Rows dor = load_rows(in.dout, row0, rows, h, ws.dout.data());
      const int64_t stat = int64_t(h) * p.tq + row0;
      tile_backward(qr, dor, in.lse + stat, in.delta + stat, rows, kr, vr, n, p.d, p.scale, p.products,
                    make_tile_mask(p, t + s.offset(), rows, k_pos0, n, s.lk), dq + (row0 * p.hq + h) * p.d,
                    ld_q, dk, dv, ld_kv, ws.s.data(), ws.dp.data());
    }
}

}  // namespace longctx::attn
