// Infini-attention's compressive memory (arXiv 2404.07143, eqs. 3-5): the readout mixed with the
// local attention output by the gate, the linear / delta update, and the forward and backward
// passes over every segment of a varlen batch. All products are OpenBLAS sgemm calls.
#pragma once
#include <longctx/attention/infini/infini.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "attention/engine/varlen.hpp"
#include "core/simd.hpp"

namespace longctx::attn::infini {

// Scratch of the memory kernels for segments of up to `rows` tokens (the forward kernels only
// need a block of them; the backward takes whole segments).
struct MemoryScratch {
  std::vector<float> sx, prod, w, dw, dx, dprod, den, pending;
  MemoryScratch(int64_t rows, int d, bool backward);
};

// out[t] = gate * sigma(q_t) M / (sigma(q_t) . z + eps) + (1 - gate) * local[t] for n rows.
void read_and_mix(Rows q, int64_t n, int d, const float* M, const float* z, float gate, Rows local, float* out,
                  int64_t ld_out, MemoryScratch& ws);

// M and z absorb one segment's n keys/values (linear or delta rule).
void write_memory(Rows k, Rows v, int64_t n, int d, InfiniUpdate rule, float* M, float* z, MemoryScratch& ws);

// The tensors of one memory pass over the sequences of `p` (q/k/v as InfiniInputs: the memory q/k).
struct MemoryPass {
  const Problem& p;
  const Tensor &q, &k, &v;
  std::vector<float> gate;  // sigmoid(beta_h)
  int64_t segment_len;
  InfiniUpdate update;
  int64_t segments(const Seq& s) const { return (s.lq + segment_len - 1) / segment_len; }
  int64_t total_segments() const;
};

// Forward: out = gate * A_mem + (1 - gate) * local_out over every segment; M and z before each
// segment go to the checkpoints ([segments, Hkv, d, d] and [segments, Hkv, d]) when non-null.
// Parallel over (sequence, KV head).
void memory_forward(const MemoryPass& mp, const Tensor& local_out, float* out, float* ckpt_m, float* ckpt_z);

// Backward from the checkpoints: adds the memory path's gradients into dq / dk / dv ([T, H, d]) and
// returns dbeta [Hq]. Parallel over (sequence, KV head), reduced in a fixed order.
std::vector<float> memory_backward(const MemoryPass& mp, const Tensor& local_out, const Tensor& dout,
                                   const float* ckpt_m, const float* ckpt_z, float* dq, float* dk, float* dv);

}  // namespace longctx::attn::infini
