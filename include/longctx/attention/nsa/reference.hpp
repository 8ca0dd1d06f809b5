// Naive NSA (nsa/nsa.hpp): every rule written out from its definition, one dense mask per branch,
// reference::attention_forward / attention_backward for each branch, in float or double.
#pragma once
#include <longctx/attention/engine/reference.hpp>
#include <longctx/attention/nsa/nsa.hpp>

namespace longctx::reference {

// The naive NSA: plain loops, one dense [Hq, Tq, Tk] (or [Hq, Tq, Tc]) mask per branch, the
// generic reference attention per branch. `fixed_selection` (layout of NsaResult::selected)
// replaces the top-n choice (finite differences hold it fixed).
template <class T>
struct NsaForward {
  std::vector<T> kc, vc;              // [Tc, Hkv, d]
  std::vector<int64_t> cu_c;          // compressed rows per sequence, prefix sums
  std::vector<T> out_c, lse_c, out_s, lse_s, out_w, lse_w;
  std::vector<T> importance;          // [Tq, Hkv, max blocks]: summed over the group's heads
  std::vector<int32_t> selected;      // [Tq, Hkv, top_n]
  std::vector<T> gates;               // [Tq, Hq, 3]
  std::vector<T> out;                 // [Tq, Hq, d]
  Mask mask_c, mask_s, mask_w;
  int64_t max_blocks = 0;             // selection blocks of the longest sequence
};

template <class T>
NsaForward<T> nsa_forward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                          const std::vector<T>& v, const std::vector<T>& x, int gate_in,
                          const NsaWeights<T>& w, const NsaConfig& cfg, const Varlen& varlen,
                          const std::vector<int32_t>* fixed_selection = nullptr);

template <class T>
struct NsaGradsRef {
  std::vector<T> dq, dk, dv, dx;
  NsaWeights<T> dw;
};

template <class T>
NsaGradsRef<T> nsa_backward(const Shape& s, const std::vector<T>& q, const std::vector<T>& k,
                            const std::vector<T>& v, const std::vector<T>& x, int gate_in,
                            const NsaWeights<T>& w, const NsaConfig& cfg, const Varlen& varlen,
                            const NsaForward<T>& fwd, const std::vector<T>& dout);

}  // namespace longctx::reference
