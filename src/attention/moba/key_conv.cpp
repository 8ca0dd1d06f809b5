#include <longctx/attention/moba/key_conv.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>

#include "attention/engine/varlen.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx {

namespace {

constexpr const char* kWho = "key_conv";
// Rows per partial sum of the weight gradient: fixed, so the sum's order does not depend on the
// thread count.
constexpr int64_t kChunkRows = 256;

// Validated shapes of one call; `cu` spans all rows when the caller gave none.
struct Shape {
  int64_t rows, channels, kernel;
  std::vector<int64_t> cu;
  // First row and one past the last row of the sequence holding row t.
  std::pair<int64_t, int64_t> seq_of(int64_t t) const {
    const auto it = std::upper_bound(cu.begin(), cu.end(), t);
    return {*(it - 1), *it};
  }
};

Shape check(const Tensor& x, const Tensor& w, const Tensor* b, const std::vector<int64_t>& cu_seqlens) {
  LONGCTX_CHECK(x.dtype() == DType::f32 && x.ndim() == 3, kWho, ": keys must be an f32 [tokens, heads, head_dim] tensor, got ",
                dtype_name(x.dtype()), " ", x.shape_str());
  const int64_t C = x.dim(1) * x.dim(2);
  LONGCTX_CHECK(w.dtype() == DType::f32 && w.ndim() == 2 && w.dim(1) == C, kWho,
                ": weights must be an f32 [kernel, heads * head_dim = ", C, "] tensor, got ", dtype_name(w.dtype()), " ",
                w.shape_str());
  LONGCTX_CHECK(w.dim(0) >= 1 && w.dim(0) <= kMaxKeyConv, kWho, ": kernel (weights' first dimension) must be in [1, ",
                kMaxKeyConv, "], got ", w.dim(0));
  if (b && !b->empty())
    LONGCTX_CHECK(b->dtype() == DType::f32 && b->shape() == std::vector<int64_t>{C}, kWho,
                  ": bias must be empty or an f32 [", C, "] tensor, got ", dtype_name(b->dtype()), " ", b->shape_str());
  Shape s{x.dim(0), C, w.dim(0), cu_seqlens};
  if (s.cu.empty()) s.cu = {0, s.rows};
  attn::check_cu(kWho, "cu_seqlens", s.cu, s.rows);
  return s;
}

}  // namespace

Tensor key_conv_forward(const Tensor& x, const Tensor& w, const Tensor& b, const std::vector<int64_t>& cu_seqlens) {
  const Shape s = check(x, w, &b, cu_seqlens);
  const int64_t C = s.channels, K = s.kernel;
  Tensor y(x.shape());
  const float *xp = x.f32(), *wp = w.f32();
  float* yp = y.f32();
#pragma omp parallel for schedule(static) if (parallel::worth_threads(s.rows * C * K))
  for (int64_t t = 0; t < s.rows; ++t) {
    const int64_t s0 = s.seq_of(t).first;
    float* yr = yp + t * C;
    if (!b.empty()) std::copy_n(b.f32(), C, yr);
    for (int64_t j = std::max<int64_t>(0, s0 - t + K - 1); j < K; ++j)  // taps whose row is in the sequence
      simd::mul_add(yr, wp + j * C, xp + (t - (K - 1) + j) * C, C);
  }
  return y;
}

KeyConvGrads key_conv_backward(const Tensor& x, const Tensor& w, bool bias, const Tensor& dy,
                               const std::vector<int64_t>& cu_seqlens) {
  const Shape s = check(x, w, nullptr, cu_seqlens);
  attn::check_f32_shape(kWho, "dy", dy, x.shape());
  const int64_t C = s.channels, K = s.kernel, T = s.rows;
  const float *xp = x.f32(), *wp = w.f32(), *dyp = dy.f32();
  KeyConvGrads g{Tensor(x.shape()), Tensor({K, C}), bias ? Tensor({C}) : Tensor()};
  float* dxp = g.dx.f32();
  // dx[r] = sum_j w[j] * dy[r + K - 1 - j] over the rows r + K - 1 - j of r's sequence
#pragma omp parallel for schedule(static) if (parallel::worth_threads(T * C * K))
  for (int64_t r = 0; r < T; ++r) {
    const int64_t end = s.seq_of(r).second;
    for (int64_t j = std::max<int64_t>(0, r + K - end); j < K; ++j)
      simd::mul_add(dxp + r * C, wp + j * C, dyp + (r + K - 1 - j) * C, C);
  }
  // dw[j] = sum_t dy[t] * x[t - (K - 1) + j], db = sum_t dy[t]: per chunk of rows, then the chunks in order
  const int64_t chunks = (T + kChunkRows - 1) / kChunkRows, part = (K + 1) * C;
  std::vector<float> partial(size_t(chunks * part), 0.0f);
#pragma omp parallel for schedule(static) if (parallel::worth_threads(T * C * K))
  for (int64_t ch = 0; ch < chunks; ++ch) {
    float* pw = partial.data() + ch * part;
    for (int64_t t = ch * kChunkRows; t < std::min(T, (ch + 1) * kChunkRows); ++t) {
      const int64_t s0 = s.seq_of(t).first;
      for (int64_t j = std::max<int64_t>(0, s0 - t + K - 1); j < K; ++j)
        simd::mul_add(pw + j * C, dyp + t * C, xp + (t - (K - 1) + j) * C, C);
      if (bias) simd::add_inplace(pw + K * C, dyp + t * C, C);
    }
  }
  for (int64_t ch = 0; ch < chunks; ++ch) {
    simd::add_inplace(g.dw.f32(), partial.data() + ch * part, K * C);
    if (bias) simd::add_inplace(g.db.f32(), partial.data() + ch * part + K * C, C);
  }
  return g;
}

KeyConvStream::KeyConvStream(const Tensor& w, const Tensor& b) : w_(w.clone()), b_(b.empty() ? Tensor() : b.clone()) {
  LONGCTX_CHECK(w.ndim() == 2 && w.dim(0) >= 1, kWho, ": stream weights must be [kernel, channels], got ", w.shape_str());
}

Tensor KeyConvStream::feed(const Tensor& x) {
  LONGCTX_CHECK(x.ndim() == 3 && x.dim(1) * x.dim(2) == w_.dim(1), kWho, ": stream keys must be [tokens, heads, head_dim] with ",
                w_.dim(1), " channels, got ", x.shape_str());
  const int64_t C = w_.dim(1), kept = int64_t(tail_.size()) / C, n = x.dim(0);
  // The kept keys, then the new ones: one sequence, whose last n rows are the new keys' outputs.
  Tensor seq({kept + n, x.dim(1), x.dim(2)});
  std::copy(tail_.begin(), tail_.end(), seq.f32());
  std::copy_n(x.f32(), n * C, seq.f32() + kept * C);
  const Tensor y = key_conv_forward(seq, w_, b_);
  Tensor out(x.shape());
  std::copy_n(y.f32() + kept * C, n * C, out.f32());
  const int64_t keep = std::min(w_.dim(0) - 1, kept + n);
  tail_.assign(seq.f32() + (kept + n - keep) * C, seq.f32() + (kept + n) * C);
  return out;
}

double KeyConvStream::bytes(int64_t kernel, int64_t channels, bool bias) {
  return 4.0 * double(channels) * double(2 * kernel - 1 + (bias ? 1 : 0));
}

}  // namespace longctx
