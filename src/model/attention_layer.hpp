// The attention sublayer of one transformer layer, dispatched on its kind (full, moba, topk,
// threshold, nsa, infini): training forward, its backward and the decode step, side by side.
// Inputs are the raw projections q = h1 Wq, k = h1 Wk, v = h1 Wv (before RoPE) and h1, the
// layer's normalised hidden state; RoPE is applied here because Infini's memory reads and
// writes q/k before RoPE (arXiv 2404.07143 sec. 3.1; only its local attention is rotated).
// `rope` is null in a layer without positional encoding (ModelConfig::nope_layers).
#pragma once
#include <longctx/attention/kind/kind.hpp>
#include <longctx/model/config.hpp>
#include <longctx/model/transformer.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "nn/layers.hpp"

namespace longctx::attention_layer {

// NSA's learnable weights in Param order, each with its name (under layers.N.attention.nsa.) and
// shape: per compressor (keys, then values; mlp only) pos [l, d], w1 [hidden, l*d], b1 [hidden],
// w2 [d, hidden], b2 [d]; then the gate gate_w [3 Hq, d_model], gate_b [3 Hq]. One list serves
// the Param creation, the Param <-> NsaWeights copies and the double reference model.
template <class T, class F>
void for_each_nsa_weight(NsaWeights<T>& w, const NsaConfig& c, int64_t hq, int64_t head_dim, int64_t d_model, F&& f) {
  if (c.compress == NsaCompress::mlp)
    for (auto [cw, name] : {std::pair{&w.ck, "compress_k."}, std::pair{&w.cv, "compress_v."}}) {
      f(std::string(name) + "pos", cw->pos, std::vector<int64_t>{c.block_len, head_dim});
      f(std::string(name) + "w1", cw->w1, std::vector<int64_t>{c.hidden, c.block_len * head_dim});
      f(std::string(name) + "b1", cw->b1, std::vector<int64_t>{c.hidden});
      f(std::string(name) + "w2", cw->w2, std::vector<int64_t>{head_dim, c.hidden});
      f(std::string(name) + "b2", cw->b2, std::vector<int64_t>{head_dim});
    }
  f(std::string("gate_w"), w.gate_w, std::vector<int64_t>{3 * hq, d_model});
  f(std::string("gate_b"), w.gate_b, std::vector<int64_t>{3 * hq});
}

// The parameters a kind adds beyond wq/wk/wv/wo, named "layers.<layer>.attention.<kind>.*":
// nsa: its compressors and gate, initialised as nsa_init_weights (gate biased toward the window
// branch); infini: beta [Hq], InfiniOptions::beta_init (-2: gates start toward local attention);
// moba with key_conv K > 0: its key convolution key_conv.weight [K, Hkv * head_dim] (identity:
// tap K - 1 is 1, the others 0) and, with key_conv_bias, key_conv.bias [Hkv * head_dim] (0).
// Decay on matrices only (ndim >= 2), except the key convolution's taps.
std::vector<Param> kind_params(const ModelConfig& cfg, int64_t layer, uint64_t seed);

// How many values kind_params(cfg, layer, .) holds, without allocating them.
int64_t kind_param_count(const ModelConfig& cfg, int64_t layer);

// A layer's kind parameters (in kind_params order) as the kernels take them. NSA's kernels hold
// weights in std::vector, so this copies the Params: O(weights), once per forward, small next to
// the layer's O(T * ...) work; the backward reuses the forward's copy.
NsaWeights<float> nsa_weights(const NsaConfig& c, const ModelConfig& cfg, const std::vector<Param*>& kp);
std::vector<float> infini_beta(const std::vector<Param*>& kp);

// Whether a layer running `running` has a key convolution: a moba layer's kind params are its key
// convolution's (weight, then bias), if any. A moba layer run as full attention (force_full_attention)
// keeps convolving its keys: the convolution is part of the layer's parameters, not of the sparse
// approximation. The bias as a Tensor (an alias of its Param, or empty).
bool has_key_conv(AttentionKind running, const std::vector<Param*>& kp);
Tensor key_conv_bias(const std::vector<Param*>& kp);

// What the backward needs from the forward. Each result keeps the options it ran with.
struct Acts {
  AttentionKind kind = AttentionKind::full;  // the kind this forward ran (force_full_attention applied)
  Tensor q, k, v;          // attention inputs, q and k RoPE'd
  Tensor q_mem, k_mem;     // infini: q and k before RoPE (the memory's)
  Tensor k_conv_in;        // moba key convolution: its input, the keys before it and RoPE
  MobaResult dense;        // full and moba (selection empty for full)
  SparseResult sparse;     // topk, threshold; decode over a KV cache
  NsaResult nsa;
  NsaWeights<float> nsa_w;  // the weights nsa ran with
  InfiniResult infini;
  Tensor out;              // [T, Hq, d]: alias of the result of the kind that ran
};

// Packed varlen batch (training and logits()) with the layer's spec as it runs now (full when a
// sparse approximation is forced full). Takes q/k/v by value and keeps them in `a`.
void forward(const AttentionSpec& s, const ModelConfig& cfg, const std::vector<Param*>& kp, const nn::Rope* rope,
             const std::vector<int64_t>& pos, const Varlen& varlen, Tensor q, Tensor k, Tensor v, const Tensor& h1,
             Acts& a);

// Gradients with respect to the raw (pre-RoPE) q, k and v; dh1 is the gate input's gradient (nsa
// only, else empty). Adds the kind parameters' gradients into their Param::grad.
struct Grads {
  Tensor dq, dk, dv, dh1;
};
Grads backward(const ModelConfig& cfg, const std::vector<Param*>& kp, const nn::Rope* rope,
               const std::vector<int64_t>& pos, const Varlen& varlen, const Acts& a, const Tensor& dout,
               const Tensor& h1);

// Decode state of one layer (see DecodeState in transformer.hpp); the KV cache keeps block
// statistics only for a kind that reads them.
LayerDecodeState new_state(const AttentionSpec& s, const ModelConfig& cfg, const std::vector<Param*>& kp,
                           int64_t capacity, KVDType cache_dtype);

// Appends n tokens (positions pos) of one sequence to the layer's state and attends from them
// with spec `s` (the layer's, or full when forced); a.out holds their outputs [n, Hq, d], equal to
// the rows of forward() over the whole sequence.
void decode(const AttentionSpec& s, const nn::Rope* rope, const std::vector<int64_t>& pos, LayerDecodeState& st,
            Tensor q, Tensor k, Tensor v, const Tensor& h1, Acts& a);

}  // namespace longctx::attention_layer
