// The attention kernels for Python: forward functions return a result object that holds the C++
// result (kept for the backward; its tensors viewed zero-copy as Arrays), backward functions
// take it back with the same inputs and return the gradients. No autograd here: python/longctx
// wraps these in torch.autograd.Functions.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/infini/infini.hpp>
#include <longctx/attention/moba/key_conv.hpp>
#include <longctx/attention/moba/moba.hpp>
#include <longctx/attention/nsa/nsa.hpp>
#include <longctx/attention/sparse/threshold.hpp>
#include <longctx/attention/sparse/topk.hpp>
#include <longctx/core/error.hpp>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "arrays.hpp"
#include "bindings.hpp"
#include "options.hpp"

namespace longctx::python {

namespace {

using Ptr = std::shared_ptr<const void>;

py::tuple grads_tuple(AttentionGrads g) {
  return py::make_tuple(own(std::move(g.dq)), own(std::move(g.dk)), own(std::move(g.dv)));
}

// Runs f with the GIL released (the inputs stay alive: the caller's Borrowed hold them).
template <class F>
auto nogil(F&& f) {
  py::gil_scoped_release release;
  return f();
}

// q, k, v borrowed, with the varlen boundaries checked against max_seqlen.
struct Qkv {
  Borrowed q, k, v;
  Varlen varlen;
};

Qkv qkv_of(const std::string& who, py::handle q, py::handle k, py::handle v, py::handle cu, py::handle max_seqlen) {
  Qkv r{borrow(q, who, "q"), borrow(k, who, "k"), borrow(v, who, "v"), {}};
  const std::vector<int64_t> c = int_list(cu, who, "cu_seqlens");
  r.varlen = Varlen{c, c};
  check_max_seqlen(who, "max_seqlen", max_seqlen, c, r.q.tensor.ndim() > 0 ? r.q.tensor.dim(0) : 0);
  return r;
}

Borrowed dout_of(const std::string& who, py::handle dout) { return borrow(dout, who, "grad_out", false); }

// Registers name(q, k, v, fwd, grad_out, cu_seqlens) -> (dq, dk, dv) for a kernel whose backward
// takes (q, k, v, its forward result R, dout, varlen).
template <class R, class Backward>
void def_backward(py::module_& m, const char* name, const std::string& who, Backward backward) {
  m.def(
      name,
      [who, backward](py::handle q, py::handle k, py::handle v, const R& fwd, py::handle dout, py::handle cu) {
        Qkv in = qkv_of(who, q, k, v, cu, py::none());
        Borrowed bd = dout_of(who, dout);
        return grads_tuple(nogil([&] { return backward(in.q.tensor, in.k.tensor, in.v.tensor, fwd, bd.tensor, in.varlen); }));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("fwd"), py::arg("grad_out"), py::arg("cu_seqlens"));
}

// What the NSA backward needs besides the inputs: the result and the weights it ran with.
struct NsaState {
  NsaResult result;
  NsaWeights<float> weights;
};

// Infini's result and the gate logits it ran with.
struct InfiniState {
  InfiniResult result;
  std::vector<float> beta;
};

NsaCompressor<float> compressor_of(py::handle parts, const std::string& who, const char* name) {
  if (parts.is_none()) return {};
  const py::tuple t = py::tuple(py::reinterpret_borrow<py::object>(parts));
  LONGCTX_CHECK(t.size() == 5, who, ": ", name, " must be (pos, w1, b1, w2, b2), got ", t.size(), " entries");
  return {float_list(t[0], who, name), float_list(t[1], who, name), float_list(t[2], who, name),
          float_list(t[3], who, name), float_list(t[4], who, name)};
}

py::dict compressor_grads(const Ptr& owner, const NsaCompressor<float>& c, int64_t l, int64_t d, const char* prefix) {
  py::dict out;
  if (c.b1.empty()) return out;
  const int64_t h = int64_t(c.b1.size());
  out[py::str(std::string(prefix) + "pos")] = view(owner, c.pos, {l, d});
  out[py::str(std::string(prefix) + "w1")] = view(owner, c.w1, {h, l * d});
  out[py::str(std::string(prefix) + "b1")] = view(owner, c.b1, {h});
  out[py::str(std::string(prefix) + "w2")] = view(owner, c.w2, {d, h});
  out[py::str(std::string(prefix) + "b2")] = view(owner, c.b2, {d});
  return out;
}

}  // namespace

void bind_attention(py::module_& m) {
  py::class_<AttentionResult, std::shared_ptr<AttentionResult>>(m, "FlashForward")
      .def_property_readonly("out", [](std::shared_ptr<AttentionResult> r) { return view(r, r->out); })
      .def_property_readonly("lse", [](std::shared_ptr<AttentionResult> r) { return view(r, r->lse); });

  m.def(
      "flash_forward",
      [](py::handle q, py::handle k, py::handle v, py::handle cu_q, py::handle cu_k, py::handle max_q,
         py::handle max_k, bool causal, py::handle scale, int64_t window) {
        const std::string who = "flash_attn_varlen_func";
        Borrowed bq = borrow(q, who, "q"), bk = borrow(k, who, "k"), bv = borrow(v, who, "v");
        const Varlen vl{int_list(cu_q, who, "cu_seqlens_q"), int_list(cu_k, who, "cu_seqlens_k")};
        check_max_seqlen(who, "max_seqlen_q", max_q, vl.cu_q, bq.tensor.ndim() > 0 ? bq.tensor.dim(0) : 0);
        check_max_seqlen(who, "max_seqlen_k", max_k, vl.cu_k, bk.tensor.ndim() > 0 ? bk.tensor.dim(0) : 0);
        const AttentionOptions o{causal, softmax_scale_of(scale, who), window};
        return std::make_shared<AttentionResult>(
            nogil([&] { return flash_attention_forward(bq.tensor, bk.tensor, bv.tensor, vl, o); }));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"),
      py::arg("max_seqlen_q"), py::arg("max_seqlen_k"), py::arg("causal"), py::arg("softmax_scale"),
      py::arg("window"), "Dense flash attention (softmax_scale None: 1/sqrt(d); window 0: none).");
  m.def(
      "flash_backward",
      [](py::handle q, py::handle k, py::handle v, const AttentionResult& fwd, py::handle dout, py::handle cu_q,
         py::handle cu_k) {
        const std::string who = "flash_attn_varlen_func backward";
        Borrowed bq = borrow(q, who, "q"), bk = borrow(k, who, "k"), bv = borrow(v, who, "v"), bd = dout_of(who, dout);
        const Varlen vl{int_list(cu_q, who, "cu_seqlens_q"), int_list(cu_k, who, "cu_seqlens_k")};
        return grads_tuple(nogil([&] { return flash_attention_backward(bq.tensor, bk.tensor, bv.tensor, fwd, bd.tensor, vl); }));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("fwd"), py::arg("grad_out"), py::arg("cu_seqlens_q"),
      py::arg("cu_seqlens_k"));

  py::class_<MobaResult, std::shared_ptr<MobaResult>>(m, "MobaForward")
      .def_property_readonly("out", [](std::shared_ptr<MobaResult> r) { return view(r, r->out); })
      .def_property_readonly("lse", [](std::shared_ptr<MobaResult> r) { return view(r, r->lse); })
      .def_property_readonly("selected", [](std::shared_ptr<MobaResult> r) {
        return view(r, r->selected, {r->lse.dim(0), r->lse.dim(1), r->slots});
      }, "[Hq, total_q, slots] int32: the past blocks each query chose (sequence-local, ascending, -1 padded)");

  m.def(
      "moba_forward",
      [](py::handle q, py::handle k, py::handle v, py::handle cu, py::handle max_seqlen, py::handle options,
         py::handle scale) {
        const std::string who = "moba_attn_varlen";
        const MobaOptions o = attention_spec("moba", options, scale, who).get<MobaOptions>();
        Qkv in = qkv_of(who, q, k, v, cu, max_seqlen);
        return std::make_shared<MobaResult>(
            nogil([&] { return moba_attention_forward(in.q.tensor, in.k.tensor, in.v.tensor, in.varlen, o); }));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens"), py::arg("max_seqlen"), py::arg("options"),
      py::arg("softmax_scale"));
  def_backward<MobaResult>(m, "moba_backward", "moba_attn_varlen backward", moba_attention_backward);

  py::class_<SparseResult, std::shared_ptr<SparseResult>>(m, "SparseForward")
      .def_property_readonly("out", [](std::shared_ptr<SparseResult> r) { return view(r, r->out); })
      .def_property_readonly("lse", [](std::shared_ptr<SparseResult> r) { return view(r, r->lse); })
      .def_property_readonly("row_offset", [](std::shared_ptr<SparseResult> r) {
        return view(r, r->row_offset, {int64_t(r->row_offset.size())});
      }, "[Hq * total_q + 1] int64: CSR offsets of each (head, query) row into visited")
      .def_property_readonly("visited", [](std::shared_ptr<SparseResult> r) {
        return view(r, r->visited, {int64_t(r->visited.size())});
      }, "int32: the extra past blocks (block level) or all attended keys (token level), sequence-local")
      .def_property_readonly("token_level", [](const SparseResult& r) { return r.token_level; })
      .def_property_readonly("block_size", [](const SparseResult& r) { return r.block_size; })
      .def_property_readonly("mean_keys", [](const SparseResult& r) { return r.mean_keys; })
      .def_property_readonly("max_keys", [](const SparseResult& r) { return r.max_keys; })
      .def_property_readonly("stop_rule", [](const SparseResult& r) { return r.stop_rule; });

  m.def(
      "sparse_forward",
      [](const std::string& kind, py::handle q, py::handle k, py::handle v, py::handle cu, py::handle max_seqlen,
         py::handle options, py::handle scale) {
        LONGCTX_CHECK(kind == "topk" || kind == "threshold", "sparse_forward: kind must be 'topk' or 'threshold', got '",
                      kind, "'");
        const std::string who = kind + "_attn_varlen";
        const AttentionSpec spec = attention_spec(kind, options, scale, who);
        Qkv in = qkv_of(who, q, k, v, cu, max_seqlen);
        return std::make_shared<SparseResult>(nogil([&] {
          return kind == "topk"
                     ? topk_attention_forward(in.q.tensor, in.k.tensor, in.v.tensor, in.varlen, spec.get<TopkOptions>())
                     : threshold_attention_forward(in.q.tensor, in.k.tensor, in.v.tensor, in.varlen,
                                                   spec.get<ThresholdOptions>());
        }));
      },
      py::arg("kind"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens"), py::arg("max_seqlen"),
      py::arg("options"), py::arg("softmax_scale"));
  def_backward<SparseResult>(m, "sparse_backward", "sparse attention backward", sparse_attention_backward);

  py::class_<NsaState, std::shared_ptr<NsaState>>(m, "NsaForward")
      .def_property_readonly("out", [](std::shared_ptr<NsaState> s) { return view(s, s->result.out); })
      .def_property_readonly("gates", [](std::shared_ptr<NsaState> s) { return view(s, s->result.gates); },
                             "[total_q, Hq, 3] float32: sigmoid gates of the (cmp, slc, win) branches")
      .def_property_readonly("selected", [](std::shared_ptr<NsaState> s) {
        const NsaResult& r = s->result;
        const int64_t tq = r.out.dim(0), hkv = tq > 0 ? int64_t(r.selected.size()) / (tq * r.cfg.top_n) : 0;
        return view(s, r.selected, {tq, hkv, r.cfg.top_n});
      }, "[total_q, Hkv, top_n] int32: selected blocks (sequence-local, ascending, -1 padded)")
      .def_property_readonly("compressed_k", [](std::shared_ptr<NsaState> s) { return view(s, s->result.compressed.k); })
      .def_property_readonly("compressed_v", [](std::shared_ptr<NsaState> s) { return view(s, s->result.compressed.v); })
      .def_property_readonly("compressed_cu_seqlens", [](std::shared_ptr<NsaState> s) {
        return view(s, s->result.compressed.cu, {int64_t(s->result.compressed.cu.size())});
      });

  m.def(
      "nsa_forward",
      [](py::handle q, py::handle k, py::handle v, py::handle x, py::handle gate_w, py::handle gate_b,
         py::handle compress_k, py::handle compress_v, py::handle cu, py::handle max_seqlen, py::handle options,
         py::handle scale) {
        const std::string who = "nsa_attn_varlen";
        const NsaConfig cfg = attention_spec("nsa", options, scale, who).get<NsaConfig>();
        Qkv in = qkv_of(who, q, k, v, cu, max_seqlen);
        Borrowed bx = borrow(x, who, "x", false);
        auto s = std::make_shared<NsaState>();
        s->weights = {compressor_of(compress_k, who, "compress_k"), compressor_of(compress_v, who, "compress_v"),
                      float_list(gate_w, who, "gate_w"), float_list(gate_b, who, "gate_b")};
        s->result = nogil([&] { return nsa_forward(in.q.tensor, in.k.tensor, in.v.tensor, bx.tensor, s->weights, cfg, in.varlen); });
        return s;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("x"), py::arg("gate_w"), py::arg("gate_b"),
      py::arg("compress_k"), py::arg("compress_v"), py::arg("cu_seqlens"), py::arg("max_seqlen"), py::arg("options"),
      py::arg("softmax_scale"));
  m.def(
      "nsa_backward",
      [](py::handle q, py::handle k, py::handle v, py::handle x, const NsaState& s, py::handle dout, py::handle cu) {
        const std::string who = "nsa_attn_varlen backward";
        Qkv in = qkv_of(who, q, k, v, cu, py::none());
        Borrowed bx = borrow(x, who, "x", false), bd = dout_of(who, dout);
        auto g = std::make_shared<NsaGrads>(nogil(
            [&] { return nsa_backward(in.q.tensor, in.k.tensor, in.v.tensor, bx.tensor, s.weights, s.result, bd.tensor, in.varlen); }));
        const int64_t d = in.q.tensor.dim(2), l = s.result.cfg.block_len;
        py::dict out;
        out["q"] = own(std::move(g->dq));
        out["k"] = own(std::move(g->dk));
        out["v"] = own(std::move(g->dv));
        out["x"] = own(std::move(g->dx));
        out["gate_w"] = view(g, g->dw.gate_w, {int64_t(s.weights.gate_b.size()), bx.tensor.dim(1)});
        out["gate_b"] = view(g, g->dw.gate_b, {int64_t(s.weights.gate_b.size())});
        for (auto [c, prefix] : {std::pair{&g->dw.ck, "compress_k."}, std::pair{&g->dw.cv, "compress_v."}})
          for (auto item : compressor_grads(g, *c, l, d, prefix)) out[item.first] = item.second;
        return out;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("x"), py::arg("fwd"), py::arg("grad_out"), py::arg("cu_seqlens"));
  m.def(
      "nsa_init_weights",
      [](py::handle options, int hq, int head_dim, int gate_in, uint64_t seed) {
        const NsaConfig cfg = attention_spec("nsa", options, py::none(), "nsa_init_weights").get<NsaConfig>();
        auto w = std::make_shared<NsaWeights<float>>(nsa_init_weights(cfg, hq, head_dim, gate_in, int(cfg.hidden), seed));
        py::dict out;
        out["gate_w"] = view(w, w->gate_w, {3 * int64_t(hq), gate_in});
        out["gate_b"] = view(w, w->gate_b, {3 * int64_t(hq)});
        for (auto [c, prefix] : {std::pair{&w->ck, "compress_k."}, std::pair{&w->cv, "compress_v."}})
          for (auto item : compressor_grads(w, *c, cfg.block_len, head_dim, prefix)) out[item.first] = item.second;
        return out;
      },
      py::arg("options"), py::arg("heads"), py::arg("head_dim"), py::arg("gate_in"), py::arg("seed"),
      "The C++ model's initial NSA weights (compressors of width options['hidden'], gate biased to the window).");

  py::class_<InfiniState, std::shared_ptr<InfiniState>>(m, "InfiniForward")
      .def_property_readonly("out", [](std::shared_ptr<InfiniState> s) { return view(s, s->result.out); })
      .def_property_readonly("local_out", [](std::shared_ptr<InfiniState> s) { return view(s, s->result.local.out); },
                             "[T, Hq, d]: the local (segment) attention A_dot")
      .def_property_readonly("memory", [](std::shared_ptr<InfiniState> s) { return view(s, s->result.memory); },
                             "[segments, Hkv, d, d]: the memory M before each segment")
      .def_property_readonly("norm", [](std::shared_ptr<InfiniState> s) { return view(s, s->result.norm); },
                             "[segments, Hkv, d]: z before each segment");

  m.def(
      "infini_forward",
      [](py::handle q, py::handle k, py::handle v, py::handle q_local, py::handle k_local, py::handle beta,
         py::handle cu, py::handle max_seqlen, py::handle options, py::handle scale) {
        const std::string who = "infini_attn_varlen";
        const InfiniOptions o = attention_spec("infini", options, scale, who).get<InfiniOptions>();
        Qkv in = qkv_of(who, q, k, v, cu, max_seqlen);
        Borrowed ql = borrow_optional(q_local, who, "q_local"), kl = borrow_optional(k_local, who, "k_local");
        auto s = std::make_shared<InfiniState>();
        s->beta = float_list(beta, who, "beta");
        const InfiniInputs ii{in.q.tensor, in.k.tensor, in.v.tensor, q_local.is_none() ? nullptr : &ql.tensor,
                              k_local.is_none() ? nullptr : &kl.tensor};
        s->result = nogil([&] { return infini_forward(ii, s->beta, in.varlen.cu_q, o); });
        return s;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("q_local"), py::arg("k_local"), py::arg("beta"),
      py::arg("cu_seqlens"), py::arg("max_seqlen"), py::arg("options"), py::arg("softmax_scale"));
  m.def(
      "infini_backward",
      [](py::handle q, py::handle k, py::handle v, py::handle q_local, py::handle k_local, const InfiniState& s,
         py::handle dout, py::handle cu) {
        const std::string who = "infini_attn_varlen backward";
        Qkv in = qkv_of(who, q, k, v, cu, py::none());
        Borrowed ql = borrow_optional(q_local, who, "q_local"), kl = borrow_optional(k_local, who, "k_local");
        Borrowed bd = dout_of(who, dout);
        const InfiniInputs ii{in.q.tensor, in.k.tensor, in.v.tensor, q_local.is_none() ? nullptr : &ql.tensor,
                              k_local.is_none() ? nullptr : &kl.tensor};
        auto g = std::make_shared<InfiniGrads>(nogil([&] { return infini_backward(ii, s.beta, s.result, bd.tensor, in.varlen.cu_q); }));
        py::dict out;
        out["q"] = own(std::move(g->dq));
        out["k"] = own(std::move(g->dk));
        out["v"] = own(std::move(g->dv));
        if (!g->dq_local.empty()) out["q_local"] = own(std::move(g->dq_local));
        if (!g->dk_local.empty()) out["k_local"] = own(std::move(g->dk_local));
        out["beta"] = view(g, g->dbeta, {int64_t(g->dbeta.size())});
        return out;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("q_local"), py::arg("k_local"), py::arg("fwd"),
      py::arg("grad_out"), py::arg("cu_seqlens"));

  m.def(
      "key_conv_forward",
      [](py::handle x, py::handle w, py::handle b, py::handle cu) {
        const std::string who = "key_conv";
        Borrowed bx = borrow(x, who, "x", false), bw = borrow(w, who, "weight", false);
        Borrowed bb = borrow_optional(b, who, "bias", false);
        const std::vector<int64_t> c = int_list(cu, who, "cu_seqlens");
        return own(nogil([&] { return key_conv_forward(bx.tensor, bw.tensor, bb.tensor, c); }));
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("cu_seqlens"),
      "MoBA's causal depthwise key convolution (float32; bias None: none).");
  m.def(
      "key_conv_backward",
      [](py::handle x, py::handle w, bool bias, py::handle dy, py::handle cu) {
        const std::string who = "key_conv backward";
        Borrowed bx = borrow(x, who, "x", false), bw = borrow(w, who, "weight", false), bd = dout_of(who, dy);
        const std::vector<int64_t> c = int_list(cu, who, "cu_seqlens");
        KeyConvGrads g = nogil([&] { return key_conv_backward(bx.tensor, bw.tensor, bias, bd.tensor, c); });
        return py::make_tuple(own(std::move(g.dx)), own(std::move(g.dw)),
                              bias ? py::object(py::cast(own(std::move(g.db)))) : py::object(py::none()));
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("grad_out"), py::arg("cu_seqlens"));
}

}  // namespace longctx::python
