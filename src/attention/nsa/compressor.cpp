// NSA's compression function phi (paper eq. 7): one key (value) per block of l tokens with stride
// d, W2 silu(W1 vec(block + pos) + b1) + b2, or the block mean. Blocks go through sgemm in chunks.
#include <cmath>

#include "attention/nsa/internal.hpp"
#include "core/gemm.hpp"
#include "core/simd.hpp"

namespace longctx::attn::nsa {

namespace {

constexpr int64_t kBlockChunk = 256;

// A[b] = vec(rows of block i0 + b) (+ pos when given), [nb, l * d].
void gather_blocks(const Tensor& x, int64_t k0, int g, int64_t i0, int64_t nb, const NsaConfig& cfg,
                   const float* pos, float* a) {
  const int64_t d = x.dim(2), L = cfg.block_len * d;
  std::vector<int64_t> rows(size_t(cfg.block_len));
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t r = 0; r < cfg.block_len; ++r) rows[r] = k0 + (i0 + b) * cfg.stride + r;
    float* ab = a + b * L;
    gather_rows(x, rows.data(), cfg.block_len, g, ab);
    if (pos)
      for (int64_t m = 0; m < L; ++m) ab[m] += pos[m];
  }
}

// pre = A W1^T + b1 and act = silu(pre), [nb, hidden] each.
void hidden_layer(const float* a, int64_t nb, int64_t L, const NsaCompressor<float>& c, float* pre, float* act) {
  const int64_t H = int64_t(c.b1.size());
  gemm::sgemm(false, true, nb, H, L, 1.0f, a, L, c.w1.data(), L, 0.0f, pre, H);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t j = 0; j < H; ++j) {
      float& z = pre[b * H + j];
      z += c.b1[j];
      act[b * H + j] = z * simd::sigmoid(z);
    }
}

}  // namespace

void compress_blocks(const Tensor& x, int64_t k0, int g, int64_t i0, int64_t i1, const NsaCompressor<float>& c,
                     const NsaConfig& cfg, float* out, int64_t ld_out) {
  const int64_t d = x.dim(2), L = cfg.block_len * d, H = int64_t(c.b1.size());
  const bool mean = cfg.compress == NsaCompress::mean;
  std::vector<float> a(size_t(std::min(kBlockChunk, std::max<int64_t>(i1 - i0, 0)) * L));
  std::vector<float> pre, act;
  for (int64_t b0 = i0; b0 < i1; b0 += kBlockChunk) {
    const int64_t nb = std::min(kBlockChunk, i1 - b0);
    float* o = out + (b0 - i0) * ld_out;
    gather_blocks(x, k0, g, b0, nb, cfg, mean ? nullptr : c.pos.data(), a.data());
    if (mean) {
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t e = 0; e < d; ++e) {
          float s = 0;
          for (int64_t r = 0; r < cfg.block_len; ++r) s += a[b * L + r * d + e];
          o[b * ld_out + e] = s / float(cfg.block_len);
        }
      continue;
    }
    pre.resize(size_t(nb * H));
    act.resize(size_t(nb * H));
    hidden_layer(a.data(), nb, L, c, pre.data(), act.data());
    gemm::sgemm(false, true, nb, d, H, 1.0f, act.data(), H, c.w2.data(), H, 0.0f, o, ld_out);
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t e = 0; e < d; ++e) o[b * ld_out + e] += c.b2[e];
  }
}

void compress_blocks_backward(const Tensor& x, int64_t k0, int g, int64_t i0, int64_t i1,
                              const NsaCompressor<float>& c, const NsaConfig& cfg, const float* dout, int64_t ld,
                              float* dx, NsaCompressor<float>& dc) {
  const int64_t d = x.dim(2), hkv = x.dim(1), L = cfg.block_len * d, H = int64_t(c.b1.size());
  auto dx_row = [&](int64_t b, int64_t r) { return dx + ((k0 + b * cfg.stride + r) * hkv + g) * d; };
  if (cfg.compress == NsaCompress::mean) {
    for (int64_t b = i0; b < i1; ++b)
      for (int64_t r = 0; r < cfg.block_len; ++r)
        for (int64_t e = 0; e < d; ++e) dx_row(b, r)[e] += dout[(b - i0) * ld + e] / float(cfg.block_len);
    return;
  }
  const int64_t chunk = std::min(kBlockChunk, std::max<int64_t>(i1 - i0, 0));
  std::vector<float> a(size_t(chunk * L)), da(size_t(chunk * L)), pre(size_t(chunk * H)), act(size_t(chunk * H)),
      dpre(size_t(chunk * H));
  for (int64_t b0 = i0; b0 < i1; b0 += kBlockChunk) {
    const int64_t nb = std::min(kBlockChunk, i1 - b0);
    const float* dy = dout + (b0 - i0) * ld;
    gather_blocks(x, k0, g, b0, nb, cfg, c.pos.data(), a.data());
    hidden_layer(a.data(), nb, L, c, pre.data(), act.data());
    // out = act W2^T + b2:  dW2 += dY^T act, db2 += colsum dY, dact = dY W2.
    gemm::sgemm(true, false, d, H, nb, 1.0f, dy, ld, act.data(), H, 1.0f, dc.w2.data(), H);
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t e = 0; e < d; ++e) dc.b2[e] += dy[b * ld + e];
    gemm::sgemm(false, false, nb, H, d, 1.0f, dy, ld, c.w2.data(), H, 0.0f, dpre.data(), H);
    // silu'(z) = s (1 + z (1 - s))
    for (int64_t m = 0; m < nb * H; ++m) {
      const float s = simd::sigmoid(pre[m]);
      dpre[m] *= s * (1.0f + pre[m] * (1.0f - s));
    }
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t j = 0; j < H; ++j) dc.b1[j] += dpre[b * H + j];
    gemm::sgemm(true, false, H, L, nb, 1.0f, dpre.data(), H, a.data(), L, 1.0f, dc.w1.data(), L);
    gemm::sgemm(false, false, nb, L, H, 1.0f, dpre.data(), H, c.w1.data(), L, 0.0f, da.data(), L);
    // A = vec(block) + pos: dpos += colsum dA, and each token row of a block gets its slice.
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t r = 0; r < cfg.block_len; ++r) {
        const float* src = da.data() + b * L + r * d;
        float* dst = dx_row(b0 + b, r);
        for (int64_t e = 0; e < d; ++e) {
          dst[e] += src[e];
          dc.pos[r * d + e] += src[e];
        }
      }
  }
}

}  // namespace longctx::attn::nsa
