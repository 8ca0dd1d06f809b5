// Native Sparse Attention (NSA; DeepSeek, arXiv 2502.11089): three branches over the same
// queries, each its own online softmax, mixed by per-head sigmoid gates (paper eq. 5):
//   out = g_cmp * O_cmp + g_slc * O_slc + g_win * O_win.
// - compression: keys/values in blocks of l tokens with stride d, each block mapped to one key /
//   value by a small MLP over the block plus an intra-block position embedding (or its mean);
//   compressed block i covers [i*d, i*d + l) and is visible to the query at t iff t >= i*d + l - 1.
// - selection: blocks of l' tokens; importance from the compression branch's probabilities
//   (overlap-weighted, summed over the query heads of a GQA group, so the group shares one
//   selection); the top-n blocks, always including block 0 and the `local_blocks` latest ones;
//   exact causal attention over the selected tokens.
// - sliding window: the last w tokens (dense flash attention with a window).
// A branch that sees no key contributes zero. Layout and varlen rules as in common.hpp; a
// sequence may have fewer queries than keys (its last tokens: chunked prefill, decode).
#pragma once
#include <longctx/attention/common.hpp>
#include <longctx/core/fields.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx {

enum class NsaCompress { mlp, mean };
template <>
struct EnumNames<NsaCompress> {
  static constexpr std::array<const char*, 2> names{"mlp", "mean"};
};

struct NsaConfig {
  int64_t block_len = 32;     // l: compression block length
  int64_t stride = 16;        // d: compression stride (divides l)
  int64_t select_len = 64;    // l': selection block length
  int64_t top_n = 16;         // n: selected blocks per query, forced ones included
  int64_t local_blocks = 2;   // the latest blocks always selected (with block 0)
  int64_t window = 512;       // w: sliding window
  NsaCompress compress = NsaCompress::mlp;
  int64_t hidden = 64;        // compressor MLP width of a model layer (nsa_init_weights)
  float softmax_scale = 0.0f;  // 0 = 1/sqrt(head_dim), all branches

  template <class V>
  void fields(V&& v) {  // core/fields.hpp
    v("block_len", block_len, "compression block length l");
    v("stride", stride, "compression stride d (divides block_len)");
    v("select_len", select_len, "selection block length l'");
    v("top_n", top_n, "selected blocks per query n (block 0 and the local blocks included)");
    v("local_blocks", local_blocks, "latest selection blocks always selected");
    v("window", window, "sliding window w");
    v("compress", compress, "mlp (learned compressor) or mean (parameter-free)");
    v("hidden", hidden, "compressor MLP width (mlp)");
  }
  // Throws "<prefix>stride must be > 0, got 0" and the like.
  void validate(const std::string& prefix) const;
};

// phi(block) = W2 silu(W1 vec(K_block + pos) + b1) + b2, vec row-major over [l, head_dim].
// One compressor for keys, one for values, shared by all KV heads.
template <class T>
struct NsaCompressor {
  std::vector<T> pos;  // [l, head_dim]
  std::vector<T> w1;   // [hidden, l * head_dim]
  std::vector<T> b1;   // [hidden]
  std::vector<T> w2;   // [head_dim, hidden]
  std::vector<T> b2;   // [head_dim]
};

// Learnable parameters (and, with the same shapes, their gradients). With NsaCompress::mean the
// compressors are empty. Gate logits of token t: x_t Wg^T + bg, rows ordered (head, branch) with
// branches (cmp, slc, win); the gates are their sigmoids.
template <class T>
struct NsaWeights {
  NsaCompressor<T> ck, cv;
  std::vector<T> gate_w;  // [3 * Hq, gate_in]
  std::vector<T> gate_b;  // [3 * Hq]
};

// Random compressor weights (hidden width `hidden`) and a gate whose bias favours the window
// branch at the start of training (bias +2 on win, 0 on cmp and slc: gates 0.88 vs 0.5).
NsaWeights<float> nsa_init_weights(const NsaConfig& cfg, int hq, int head_dim, int gate_in, int hidden,
                                   uint64_t seed);

// Element-wise conversion (tests run the reference in double on the float weights).
template <class T, class U>
NsaWeights<T> nsa_cast_weights(const NsaWeights<U>& w) {
  auto cv = [](const std::vector<U>& x) { return std::vector<T>(x.begin(), x.end()); };
  auto cc = [&](const NsaCompressor<U>& c) { return NsaCompressor<T>{cv(c.pos), cv(c.w1), cv(c.b1), cv(c.w2), cv(c.b2)}; };
  return {cc(w.ck), cc(w.cv), cv(w.gate_w), cv(w.gate_b)};
}

// Compressed keys and values of every sequence, packed: rows cu[s] .. cu[s+1] of [Tc, Hkv, d].
struct NsaCompressedKV {
  Tensor k, v;
  std::vector<int64_t> cu;
};

struct NsaResult {
  NsaConfig cfg;                         // the config it ran with (the backward's)
  Tensor out;                            // [Tq, Hq, d] gated sum
  AttentionResult cmp, slc, win;         // per-branch out and LSE (saved for backward)
  Tensor gates;                          // [Tq, Hq, 3] sigmoid gates (cmp, slc, win)
  std::vector<int32_t> selected;         // [Tq, Hkv, top_n] block ids ascending, -1 padded
  NsaCompressedKV compressed;
};

struct NsaGrads {
  Tensor dq, dk, dv;  // like q, k, v (fp32)
  Tensor dx;          // [Tq, gate_in]: gradient of the gate input
  NsaWeights<float> dw;
};

// x: [Tq, gate_in] fp32, the gate MLP's input (the layer's hidden state).
NsaResult nsa_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x,
                      const NsaWeights<float>& w, const NsaConfig& cfg, const Varlen& varlen = {});

// Gradients of sum(out o dout). The selection is held fixed (no gradient through top-n).
// Deterministic for a fixed thread count.
NsaGrads nsa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x,
                      const NsaWeights<float>& w, const NsaResult& fwd,
                      const Tensor& dout, const Varlen& varlen = {});

// Decode over one sequence's plain K/V prefix plus NSA's own compressed-key cache: compressed
// keys/values are appended as blocks complete (block i once the prefix reaches i*d + l tokens).
// Meant to live inside the shared KV cache as NSA's per-layer state.
struct NsaDecodeCache {
  int hkv = 0, head_dim = 0;
  int64_t blocks = 0;        // compressed blocks stored
  std::vector<float> k, v;   // [blocks, Hkv, head_dim]
  // Compresses the blocks the prefix k/v ([len, Hkv, d]) has completed since the last call.
  void update(const Tensor& k, const Tensor& v, const NsaWeights<float>& w, const NsaConfig& cfg);
};

// One decode step: q [1, Hq, d] and x [1, gate_in] of the newest token, whose key/value is the
// last row of k/v (the prefix, [len, Hkv, d]). Updates the cache, returns out [1, Hq, d]; equal
// to the last row of nsa_forward over the whole prefix.
Tensor nsa_decode_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x,
                       const NsaWeights<float>& w, const NsaConfig& cfg, NsaDecodeCache& cache);

}  // namespace longctx
