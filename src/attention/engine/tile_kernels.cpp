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
  reset_fresh(rows);
  fresh = false;
  for (int64_t i = 0; i < rows; ++i) std::fill_n(acc + i * ld_acc, d, 0.0f);
}

void SoftmaxState::reset_fresh(int64_t rows) {
  std::fill_n(m, rows, kNegInf);
  std::fill_n(l, rows, 0.0f);
  fresh = true;
}

void fold_scores(SoftmaxState st, int64_t i, float* s, int64_t n, float scale, int d) {
  const float m_new = std::max(st.m[i], scale * simd::max_of(s, n));
  const float alpha = simd::exp_approx(st.m[i] - m_new);  // 0 on the first visible tile
  // a row without keys so far has acc = 0, or unset in a fresh state that the product overwrites
  if (alpha != 1.0f && st.l[i] > 0.0f) simd::scale_inplace(st.acc + i * st.ld_acc, d, alpha);
  st.l[i] = st.l[i] * alpha + simd::exp_scaled_sum(s, n, scale, m_new);
  st.m[i] = m_new;
}

LONGCTX_SIMD_CLONES  // the row update in one vectorised pass
void merge_state(SoftmaxState into, int64_t i, SoftmaxState from, int64_t j, int d) {
  if (from.l[j] == 0.0f) return;  // no key on that side
  float* a = into.acc + i * into.ld_acc;
  const float* b = from.acc + j * from.ld_acc;
  const float m = std::max(into.m[i], from.m[j]);
  const float wb = simd::exp_approx(from.m[j] - m);
  if (into.l[i] > 0.0f) {
    const float wa = simd::exp_approx(into.m[i] - m);
#pragma omp simd
    for (int c = 0; c < d; ++c) a[c] = a[c] * wa + b[c] * wb;
    into.l[i] = into.l[i] * wa + from.l[j] * wb;
  } else {
#pragma omp simd
    for (int c = 0; c < d; ++c) a[c] = b[c] * wb;
    into.l[i] = from.l[j] * wb;
  }
  into.m[i] = m;
}

namespace {

// Rows per strip on tiles the mask cuts, multiples of the GEMM kernel's 6 rows: forward strips of 48
// skip ~40% of a causal diagonal tile's products; the backward's strips are taller because two of
// its products sum over the strip's rows, which must stay long enough to run at speed.
constexpr int64_t kForwardStripRows = 48, kBackwardStripRows = 96;

// The keys [lo, hi) that rows [r0, r0 + sr) of the tile see between them (hi <= lo: none).
void strip_span(const TileMask& mask, int64_t r0, int64_t sr, int64_t n, int64_t& lo, int64_t& hi) {
  lo = n, hi = 0;
  for (int64_t i = r0; i < r0 + sr; ++i) {
    int64_t l, h;
    mask.range(i, n, l, h);
    if (h > l) lo = std::min(lo, l), hi = std::max(hi, h);
  }
}

// Runs body(r0, sr, lo, w) over the tile in strips: the whole tile when every row sees every key,
// else strip_rows rows at a time over the keys [lo, lo + w) each strip sees (the causal diagonal
// computes only its lower part). Rows of a strip that sees no key get zero scores in `s`.
template <class Body>
void for_each_strip(const TileMask& mask, int64_t strip_rows, int64_t rows, int64_t n, float* s, Body&& body) {
  if (mask.all) return body(int64_t(0), rows, int64_t(0), n);
  for (int64_t r0 = 0; r0 < rows; r0 += strip_rows) {
    const int64_t sr = std::min(strip_rows, rows - r0);
    int64_t lo, hi;
    strip_span(mask, r0, sr, n, lo, hi);
    if (hi > lo)
      body(r0, sr, lo, hi - lo);
    else
      std::fill_n(s + r0 * n, sr * n, 0.0f);
  }
}

// Row i of the tile's scores s[rows x n] after its strip's product: the entries outside the row's
// visible keys set to 0, and that range in [l, h) (h <= l: none).
void mask_row(const TileMask& mask, float* s, int64_t i, int64_t n, int64_t& l, int64_t& h) {
  float* si = s + i * n;
  mask.range(i, n, l, h);
  if (h <= l) {
    std::fill_n(si, n, 0.0f);
    return;
  }
  std::fill(si, si + l, 0.0f);
  std::fill(si + h, si + n, 0.0f);
}

}  // namespace

void PackedKeys::pack(Rows k, Rows v_rows, int64_t n, int d, gemm::Precision products) {
  kt.pack(products, n, d, k.operand(true));
  v.pack(products, d, n, v_rows.operand(false));
}

void tile_forward(Rows q, int64_t rows, Rows k, Rows v, int64_t n, int d, float scale, gemm::Precision products,
                  const TileMask& mask, SoftmaxState st, float* s, const PackedKeys* packed) {
  if (st.fresh && !mask.all) st.reset(rows, d);  // rows the mask hides would keep an unset acc
  const float beta = st.fresh ? 0.0f : 1.0f;
  for_each_strip(mask, kForwardStripRows, rows, n, s, [&](int64_t r0, int64_t sr, int64_t lo, int64_t w) {
    float* ss = s + r0 * n + lo;  // the strip's scores keep the tile's row stride n
    const gemm::Operand qs = q.from(r0).operand(false), ps{ss, nullptr, n};
    float* acc = st.acc + r0 * st.ld_acc;
    const bool from_pack = packed && lo == 0 && packed->v.takes_rows(w);  // the first w keys
    if (from_pack)
      gemm::gemm(sr, w, d, 1.0f, qs, packed->kt, 0.0f, ss, n);
    else
      gemm::gemm(products, sr, w, d, 1.0f, qs, k.from(lo).operand(true), 0.0f, ss, n);
    for (int64_t i = r0; i < r0 + sr; ++i) {
      int64_t l, h;
      mask_row(mask, s, i, n, l, h);
      if (h > l) fold_scores(st, i, s + i * n + l, h - l, scale, d);
    }
    if (from_pack)
      gemm::gemm(sr, d, w, 1.0f, ps, packed->v, beta, acc, st.ld_acc);
    else
      gemm::gemm(products, sr, d, w, 1.0f, ps, v.from(lo).operand(false), beta, acc, st.ld_acc);
  });
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

void tile_backward(Rows q, Rows dout, const float* lse, const float* delta, int64_t rows, Rows k, Rows v, int64_t n,
                   int d, float scale, gemm::Precision products, const TileMask& mask, float* dq, int64_t ld_dq,
                   float* dk, float* dv, int64_t ld_dkv, float* p, float* dp) {
  for_each_strip(mask, kBackwardStripRows, rows, n, p, [&](int64_t r0, int64_t sr, int64_t lo, int64_t w) {
    const Rows qs = q.from(r0), dos = dout.from(r0), ks = k.from(lo), vs = v.from(lo);
    float *ps = p + r0 * n + lo, *dps = dp + r0 * n + lo;  // strips keep the tile's row stride n
    // P = exp(scale * Q K^T - lse), zero outside the mask.
    gemm::gemm(products, sr, w, d, 1.0f, qs.operand(false), ks.operand(true), 0.0f, ps, n);
    for (int64_t i = r0; i < r0 + sr; ++i) {
      int64_t l, h;
      mask_row(mask, p, i, n, l, h);
      if (h <= l) continue;
      if (lse[i] == kNegInf)  // a row that saw no key in the forward
        std::fill_n(p + i * n, n, 0.0f);
      else
        simd::exp_scaled_sum(p + i * n + l, h - l, scale, lse[i]);
    }
    // dV += P^T dO;  dP = dO V^T;  dS = P o (dP - D);  dK += scale dS^T Q;  dQ += scale dS K.
    float *dks = dk + lo * ld_dkv, *dvs = dv + lo * ld_dkv;
    gemm::gemm(products, w, d, sr, 1.0f, {ps, nullptr, n, true}, dos.operand(false), 1.0f, dvs, ld_dkv);
    gemm::gemm(products, sr, w, d, 1.0f, dos.operand(false), vs.operand(true), 0.0f, dps, n);
    for (int64_t i = r0; i < r0 + sr; ++i)
      simd::softmax_grad_inplace(dps + (i - r0) * n, ps + (i - r0) * n, w, delta[i]);
    gemm::gemm(products, w, d, sr, scale, {dps, nullptr, n, true}, qs.operand(false), 1.0f, dks, ld_dkv);
    gemm::gemm(products, sr, d, w, scale, {dps, nullptr, n}, ks.operand(false), 1.0f, dq + r0 * ld_dq, ld_dq);
  });
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

void attend_key_range(const Problem& p, const Seq& s, const StoredRows& k, const StoredRows& v, int g, Rows q,
                      int64_t rows, int64_t pos0, int64_t k_begin, int64_t k_end, SoftmaxState st,
                      TileScratch& ws, bool all_visible, const PackedKeys* packed) {
  for (int64_t kp = k_begin; kp < k_end; kp += kKeyTile) {
    const int64_t n = std::min(kKeyTile, k_end - kp);
    const Rows kr = tile_rows(p, k, s.k0 + kp, n, g, ws.k.data());
    const Rows vr = tile_rows(p, v, s.k0 + kp, n, g, ws.v.data());
    const TileMask mask = all_visible ? TileMask{} : make_tile_mask(p, pos0, rows, kp, n, s.lk);
    const PackedKeys* keys = packed ? &packed[(kp - k_begin) / kKeyTile] : nullptr;
    if (!keys && !mask.all && p.window == 0) {  // a causal tile runs in strips over its first keys: one pack
      ws.keys.pack(kr, vr, n, p.d, p.products);
      keys = &ws.keys;
    }
    tile_forward(q, rows, kr, vr, n, p.d, p.scale, p.products, mask, st, ws.s.data(), keys);
    st.fresh = false;
  }
}

void backward_key_tile(const Problem& p, const Seq& s, const BackwardInputs& in, int g, int64_t k_pos0,
                       int64_t n, int64_t q_lo, int64_t q_hi, float* dk, float* dv, float* dq,
                       TileScratch& ws) {
  const Rows kr = tile_rows(p, in.k, s.k0 + k_pos0, n, g, ws.k.data());
  const Rows vr = tile_rows(p, in.v, s.k0 + k_pos0, n, g, ws.v.data());
  const int64_t ld_q = int64_t(p.hq) * p.d, ld_kv = int64_t(p.hkv) * p.d;
  for (int h = g * p.group; h < (g + 1) * p.group; ++h)
    for (int64_t t = q_lo; t < q_hi; t += kQueryTile) {
      const int64_t rows = std::min(kQueryTile, q_hi - t), row0 = s.q0 + t;
      const Rows qr = tile_rows(p, in.q, row0, rows, h, ws.q.data());
      const Rows dor = load_rows(in.dout, row0, rows, h, ws.dout.data());
      const int64_t stat = int64_t(h) * p.tq + row0;
      tile_backward(qr, dor, in.lse + stat, in.delta + stat, rows, kr, vr, n, p.d, p.scale, p.products,
                    make_tile_mask(p, t + s.offset(), rows, k_pos0, n, s.lk), dq + (row0 * p.hq + h) * p.d, ld_q, dk,
                    dv, ld_kv, ws.s.data(), ws.dp.data());
    }
}

}  // namespace longctx::attn
