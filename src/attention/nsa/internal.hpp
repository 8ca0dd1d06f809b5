// NSA internals shared by nsa.cpp (orchestration, gates, decode), compressor.cpp (the
// compression MLP), compressed_branch.cpp and selected_branch.cpp (the two branches) and selection.cpp
// (block importance and top-n).
#pragma once
#include <longctx/attention/nsa/nsa.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention/engine/varlen.hpp"

namespace longctx::attn::nsa {

// Block geometry of one configuration (sequence-local positions).
struct Geometry {
  int64_t l, stride, ls, n, local;
  explicit Geometry(const NsaConfig& c)
      : l(c.block_len), stride(c.stride), ls(c.select_len), n(c.top_n), local(c.local_blocks) {}
  // Compressed blocks [i*stride, i*stride + l) that fit in lk keys.
  int64_t compressed_blocks(int64_t lk) const { return lk >= l ? (lk - l) / stride + 1 : 0; }
  // Compressed blocks visible at position t (block i iff t >= i*stride + l - 1), of nc.
  int64_t visible(int64_t t, int64_t nc) const {
    return t >= l - 1 ? std::min(nc, (t - l + 1) / stride + 1) : 0;
  }
  int64_t select_blocks(int64_t lk) const { return (lk + ls - 1) / ls; }
};

// fp32 compressed keys/values [Tc, Hkv, d], sequence s at rows cu[s] .. cu[s+1].
struct CompressedView {
  const float* k;
  const float* v;
  std::vector<int64_t> cu;
};

// Checks the configuration, the weights' shapes and x; `who` names the caller.
void validate(const char* who, const NsaConfig& cfg, const NsaWeights<float>& w, const Problem& p,
              const Tensor& x);

// phi of compressed blocks [i0, i1) of the sequence whose rows start at k0, KV head g, into
// out (row stride ld_out). Blocks are processed in chunks through sgemm.
void compress_blocks(const Tensor& x, int64_t k0, int g, int64_t i0, int64_t i1, const NsaCompressor<float>& c,
                     const NsaConfig& cfg, float* out, int64_t ld_out);
// Backward of compress_blocks: dout rows (stride ld) -> += dx ([T, Hkv, d] fp32) and += dc.
void compress_blocks_backward(const Tensor& x, int64_t k0, int g, int64_t i0, int64_t i1,
                              const NsaCompressor<float>& c, const NsaConfig& cfg, const float* dout, int64_t ld,
                              float* dx, NsaCompressor<float>& dc);

// Compression branch fused with the selection it drives: every query row against its visible
// compressed keys, and the top-n selection blocks per (query row, KV head) into `selected`
// ([Tq, Hkv, n] ascending, -1 padded) from the same probabilities.
AttentionResult compressed_forward(const Problem& p, const Tensor& q, const CompressedView& c, const Geometry& geo,
                                   std::vector<int32_t>& selected);
// Its backward: writes dq, accumulates (+=) dkc/dvc ([Tc, Hkv, d]).
void compressed_backward(const Problem& p, const Tensor& q, const CompressedView& c, const Geometry& geo,
                         const AttentionResult& fwd, const Tensor& dout, Tensor& dq, float* dkc, float* dvc);

// Importance imp_b[0..own] of the selection blocks of one position from imp_c[0..vis), the
// compression probabilities of its visible compressed blocks.
void block_importance(const float* imp_c, int64_t vis, int64_t own, const Geometry& geo, float* imp_b);
// Top-n of the candidate blocks [0, own] into out (ascending, -1 padded to n): block 0 and the
// `local` latest blocks are forced; the others rank by importance, ties toward the later block.
void top_n(const float* imp, int64_t own, const Geometry& geo, std::vector<int64_t>& rest, int32_t* out);

// Selection branch: exact causal attention over the selected blocks (KV block outer, the group's
// query rows that chose it inner).
AttentionResult selected_forward(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Geometry& geo, const std::vector<int32_t>& sel);
// Its backward: dq, dk, dv written (not accumulated).
void selected_backward(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v, const Geometry& geo,
                       const std::vector<int32_t>& sel, const AttentionResult& fwd, const Tensor& dout,
                       AttentionGrads& g);

}  // namespace longctx::attn::nsa
