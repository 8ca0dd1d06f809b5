// Shared by the top-k, threshold and decode tests: the dense mask a SparseResult visited, and a
// structured synthetic source (clustered keys, queries aimed at a few past clusters) on which
// attention concentrates the way trained models' attention does.
#pragma once
#include <longctx/attention/cache/kv_cache.hpp>
#include <longctx/attention/sparse/topk.hpp>

#include <random>

#include "helpers.hpp"

namespace longctx::testing {

// Rows [t0, t0 + n) of a [T, H, d] tensor, same dtype.
inline Tensor rows_of(const Tensor& x, int64_t t0, int64_t n) {
  std::vector<int64_t> shape = x.shape();
  shape[0] = n;
  Tensor r(shape, x.dtype());
  const size_t row = size_t(x.dim(1) * x.dim(2)) * dtype_size(x.dtype());
  std::memcpy(r.raw(), static_cast<const char*>(x.raw()) + size_t(t0) * row, size_t(n) * row);
  return r;
}

// What a cache of `dtype` holds for fp32 rows x [n, H, d]: bf16-rounded, or each (token, head)
// row quantised by quantize_int8 and read back as int8 * scale.
inline Tensor stored(const Tensor& x, KVDType dtype) {
  if (dtype == KVDType::bf16) return x.to(DType::bf16).to(DType::f32);
  if (dtype == KVDType::f32) return x.clone();
  const int64_t d = x.dim(2);
  Tensor out(x.shape());
  std::vector<int8_t> code(static_cast<size_t>(d));
  for (int64_t r = 0; r < x.dim(0) * x.dim(1); ++r) {
    const float s = quantize_int8(x.f32() + r * d, d, code.data());
    for (int64_t c = 0; c < d; ++c) out.f32()[r * d + c] = float(code[size_t(c)]) * s;
  }
  return out;
}

inline reference::Mask mask_of(const SparseResult& r, const reference::Shape& s, const Varlen& varlen) {
  reference::Mask m(size_t(s.hq) * s.tq * s.tk, 0);
  std::vector<int64_t> cu_q{0, s.tq}, cu_k{0, s.tk};
  if (!varlen.cu_q.empty()) cu_q = varlen.cu_q, cu_k = varlen.cu_k;
  for (size_t si = 0; si + 1 < cu_q.size(); ++si) {
    const int64_t lq = cu_q[si + 1] - cu_q[si], lk = cu_k[si + 1] - cu_k[si];
    for (int h = 0; h < s.hq; ++h)
      for (int64_t i = 0; i < lq; ++i) {
        const int64_t row = cu_q[si] + i, pos = i + lk - lq, stat = int64_t(h) * s.tq + row;
        if (pos < 0) continue;
        uint8_t* mr = &m[size_t(stat) * s.tk + cu_k[si]];
        const int64_t B = r.block_size;
        if (!r.token_level)
          for (int64_t j = pos / B * B; j <= pos; ++j) mr[j] = 1;
        for (int64_t e = r.row_offset[size_t(stat)]; e < r.row_offset[size_t(stat) + 1]; ++e) {
          const int64_t x = r.visited[size_t(e)];
          if (r.token_level) mr[x] = 1;
          else
            for (int64_t j = x * B; j < (x + 1) * B; ++j) mr[j] = 1;
        }
      }
  }
  return m;
}

// Keys: block-local clusters (centre per block of `block` tokens, per KV head) plus noise; queries
// point at `targets` random earlier clusters, scaled by `sharp`.
struct Structured {
  Tensor q, k, v;
};
inline Structured structured_source(int64_t n, int hq, int hkv, int d, int64_t block, int targets, float sharp,
                                    uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t blocks = (n + block - 1) / block;
  std::vector<float> centre(size_t(blocks) * hkv * d);
  for (float& c : centre) c = nd(rng);
  Structured s{Tensor({n, hq, d}), Tensor({n, hkv, d}), Tensor({n, hkv, d})};
  for (int64_t t = 0; t < n; ++t)
    for (int g = 0; g < hkv; ++g)
      for (int c = 0; c < d; ++c) {
        s.k.f32()[(t * hkv + g) * d + c] = centre[(size_t(t / block) * hkv + g) * d + c] + 0.3f * nd(rng);
        s.v.f32()[(t * hkv + g) * d + c] = nd(rng);
      }
  for (int64_t t = 0; t < n; ++t)
    for (int h = 0; h < hq; ++h) {
      float* x = s.q.f32() + (t * hq + h) * d;
      for (int c = 0; c < d; ++c) x[c] = 0.3f * nd(rng);
      const int64_t own = t / block;
      for (int e = 0; e < targets; ++e) {
        const int64_t b = std::uniform_int_distribution<int64_t>(0, own)(rng);
        for (int c = 0; c < d; ++c) x[c] += sharp * centre[(size_t(b) * hkv + h / (hq / hkv)) * d + c] / float(targets);
      }
    }
  return s;
}

}  // namespace longctx::testing
