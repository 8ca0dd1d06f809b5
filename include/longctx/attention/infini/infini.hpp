// Infini-attention (arXiv 2404.07143): local causal attention inside segments of N tokens plus a
// compressive memory carried from segment to segment, mixed by a learned gate per query head.
//
// Per sequence, per KV head g, segments s = 0, 1, ... of N tokens from the sequence start (the
// last may be partial). With sigma(x) = ELU(x) + 1 applied row-wise and M_0 = 0, z_0 = 0:
//   A_mem(t)  = sigma(q_t) M_{s-1} / (sigma(q_t) . z_{s-1} + kInfiniEps)           (paper eq. 3)
//   linear:   M_s = M_{s-1} + sigma(K_s)^T V_s                                     (eq. 4)
//   delta:    M_s = M_{s-1} + sigma(K_s)^T (V_s - sigma(K_s) M_{s-1} / (sigma(K_s) z_{s-1} + eps))  (eq. 5)
//             z_s = z_{s-1} + sum_t sigma(k_t)
//   A_dot(t)  = causal softmax attention of q_t over the keys of its own segment (dense flash kernel)
//   out(t)    = sigmoid(beta_h) A_mem(t) + (1 - sigmoid(beta_h)) A_dot(t)              (eq. 6)
// The memory is per KV head (it only depends on K and V); query head h reads the memory of KV head
// h / (Hq / Hkv), as in GQA. Each varlen sequence has its own memory, starting empty.
//
// First segment: M = 0 and z = 0, so the epsilon makes A_mem exactly 0 there (never 0/0): the
// first segment's output is (1 - sigmoid(beta)) A_dot, and its gradient flows only through A_dot.
//
// RoPE: the paper reads and writes the memory with q/k *before* RoPE and applies RoPE to the local
// part only. InfiniInputs therefore takes q/k for the memory and, optionally, separate q_local /
// k_local (RoPE'd) for the local attention; without them the same q/k serve both.
//
// Storage: fp32 only. The memory M and z are fp32.
#pragma once
#include <longctx/attention/common.hpp>
#include <longctx/core/fields.hpp>

#include <cstdint>
#include <vector>

namespace longctx {

// Added to sigma(q) . z in every memory read (the guard that makes the first segment read 0).
constexpr float kInfiniEps = 1e-6f;

enum class InfiniUpdate { linear, delta };
template <>
struct EnumNames<InfiniUpdate> {
  static constexpr std::array<const char*, 2> names{"linear", "delta"};
};

struct InfiniOptions {
  int64_t segment_len = 2048;  // N, tokens per segment (> 0)
  InfiniUpdate update = InfiniUpdate::linear;
  float softmax_scale = 0.0f;  // local attention scale; 0 means 1/sqrt(head_dim)
  // A model's initial gate logit beta (every head): sigmoid(-2) = 0.12 on the memory, so training
  // starts close to local attention, as reproductions of the paper advise. Read by the model's
  // weight init only; the kernels take beta as an argument.
  float beta_init = -2.0f;

  template <class V>
  void fields(V&& v) {  // core/fields.hpp
    v("segment_len", segment_len, "tokens per segment N");
    v("update", update, "memory update: linear (eq. 4) or delta (eq. 5)");
    v("beta_init", beta_init, "initial gate logit of the model's heads (sigmoid(beta) weighs the memory)");
  }
  void validate(const std::string& prefix) const;  // throws "<prefix>segment_len must be > 0, got 0"
};

// q [T, Hq, d], k and v [T, Hkv, d]; q_local/k_local, when given, have the shapes of q/k.
struct InfiniInputs {
  const Tensor& q;
  const Tensor& k;
  const Tensor& v;
  const Tensor* q_local = nullptr;
  const Tensor* k_local = nullptr;
};

struct InfiniResult {
  InfiniOptions opts;     // the options it ran with (the backward's)
  Tensor out;             // [T, Hq, d]
  AttentionResult local;  // A_dot and its LSE, saved for backward
  Tensor memory;          // [segments, Hkv, d, d]: M before each segment (checkpoints for backward)
  Tensor norm;            // [segments, Hkv, d]: z before each segment
};

struct InfiniGrads {
  Tensor dq, dk, dv;          // dq/dk: the memory q/k (plus the local part when no q_local/k_local)
  Tensor dq_local, dk_local;  // only when q_local/k_local were given
  std::vector<float> dbeta;   // [Hq]
};

// cu_seqlens: prefix sums of sequence lengths (empty = one sequence); beta has Hq entries.
InfiniResult infini_forward(const InfiniInputs& in, const std::vector<float>& beta,
                            const std::vector<int64_t>& cu_seqlens = {}, const InfiniOptions& opts = {});

// Gradients of sum(out o dout) through all segments. Memory states come from the forward's
// per-segment checkpoints (training memory ~ segments * Hkv * d^2, not T^2). Deterministic for a
// fixed thread count.
InfiniGrads infini_backward(const InfiniInputs& in, const std::vector<float>& beta, const InfiniResult& fwd,
                            const Tensor& dout, const std::vector<int64_t>& cu_seqlens = {});

// Streaming inference over one sequence: holds only M, z and the current segment's keys/values,
// so memory use does not depend on how many tokens were fed. feed() takes any number of tokens
// ([n, Hq, d] / [n, Hkv, d], same q/k conventions as InfiniInputs) and returns their outputs;
// feeding a sequence in chunks gives the outputs of one infini_forward call over it (up to fp32
// rounding of differently tiled products; bitwise equal with this OpenBLAS build).
class InfiniStream {
 public:
  InfiniStream(int hq, int hkv, int head_dim, std::vector<float> beta, const InfiniOptions& opts = {});
  Tensor feed(const InfiniInputs& in);

  int64_t tokens() const { return tokens_; }
  const Tensor& memory() const { return memory_; }  // [Hkv, d, d]
  const Tensor& norm() const { return norm_; }      // [Hkv, d]

 private:
  int hq_, hkv_, d_;
  std::vector<float> beta_;
  InfiniOptions opts_;
  int64_t tokens_ = 0, filled_ = 0;  // tokens fed; tokens of the current segment
  Tensor memory_, norm_;
  Tensor seg_k_, seg_k_local_, seg_v_;  // [N, Hkv, d]: the current segment
};

}  // namespace longctx
