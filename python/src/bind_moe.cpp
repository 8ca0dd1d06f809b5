// The sparse MoE FFN for Python: forward returns a result object holding the C++ Forward (kept
// for the backward) and the config it ran with; the weights are borrowed zero-copy each call.
#include <longctx/core/error.hpp>
#include <longctx/model/config.hpp>
#include <longctx/moe/moe.hpp>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <memory>
#include <string>

#include "arrays.hpp"
#include "bindings.hpp"
#include "options.hpp"

namespace longctx::python {

namespace {

constexpr const char* kWeightNames[] = {"w_gate", "w_noise",   "w1",        "w3",         "w2",
                                        "shared_w1", "shared_w3", "shared_w2", "expert_bias"};

// The members of moe::Weights in kWeightNames order.
std::array<Tensor*, std::size(kWeightNames)> slots_of(moe::Weights& w) {
  return {&w.w_gate, &w.w_noise, &w.w1, &w.w3, &w.w2, &w.shared_w1, &w.shared_w3, &w.shared_w2, &w.expert_bias};
}

// The weights of one call, borrowed from a dict {name: tensor} (absent or None: empty).
struct BorrowedWeights {
  Borrowed b[std::size(kWeightNames)];
  moe::Weights w;
};

std::unique_ptr<BorrowedWeights> weights_of(py::handle weights, const std::string& who) {
  if (!py::isinstance<py::dict>(weights))
    throw py::type_error(concat("longctx: ", who, ": weights must be a dict {name: tensor}"));
  const py::dict d = py::reinterpret_borrow<py::dict>(weights);
  for (auto [key, value] : d) {
    const std::string k = py::str(key);
    bool known = false;
    for (const char* n : kWeightNames) known |= k == n;
    LONGCTX_CHECK(known, who, ": unknown weight '", k,
                  "' (weights: w_gate, w_noise, w1, w3, w2, shared_w1, shared_w3, shared_w2, expert_bias)");
  }
  auto r = std::make_unique<BorrowedWeights>();
  for (size_t i = 0; i < std::size(kWeightNames); ++i)
    if (d.contains(kWeightNames[i])) r->b[i] = borrow_optional(d[kWeightNames[i]], who, kWeightNames[i], false);
  const auto slots = slots_of(r->w);
  for (size_t i = 0; i < slots.size(); ++i) *slots[i] = r->b[i].tensor.alias();
  return r;
}

struct MoeState {
  moe::Config cfg;
  moe::Forward fwd;
};

py::dict stats_dict(const moe::Stats& s) {
  py::dict d;
  d["tokens_per_expert"] = s.tokens_per_expert;
  d["routed_per_expert"] = s.routed_per_expert;
  d["dropped_assignments"] = s.dropped_assignments;
  d["dropped_tokens"] = s.dropped_tokens;
  d["importance_loss"] = s.importance_loss;
  d["load_balance_loss"] = s.load_balance_loss;
  d["z_loss"] = s.z_loss;
  d["aux_loss"] = s.aux_loss;
  d["router_entropy"] = s.router_entropy;
  return d;
}

}  // namespace

void bind_moe(py::module_& m) {
  using S = std::shared_ptr<MoeState>;
  py::class_<MoeState, S>(m, "MoeForward")
      .def_property_readonly("out", [](S s) { return view(s, s->fwd.out); })
      .def_property_readonly("aux_loss", [](const MoeState& s) { return s.fwd.stats.aux_loss; })
      .def_property_readonly("stats", [](const MoeState& s) { return stats_dict(s.fwd.stats); })
      .def_property_readonly("expert", [](S s) {
        return view(s, s->fwd.expert, {s->fwd.out.dim(0), s->cfg.top_k});
      }, "[tokens, top_k] int32: the chosen experts, by descending selection score")
      .def_property_readonly("gate", [](S s) { return view(s, s->fwd.gate, {s->fwd.out.dim(0), s->cfg.top_k}); })
      .def_property_readonly("logits", [](S s) { return view(s, s->fwd.logits); })
      .def_property_readonly("probs", [](S s) { return view(s, s->fwd.probs); })
      .def_property_readonly("noise", [](S s) { return view(s, s->fwd.noise); },
                             "[tokens, E]: the noisy router's N(0, 1) draws (empty otherwise)");

  m.def(
      "moe_forward",
      [](py::handle x, py::handle weights, py::handle options, bool training, uint64_t noise_seed) {
        const std::string who = "moe_ffn";
        Borrowed bx = borrow(x, who, "x", false);
        auto w = weights_of(weights, who);
        LONGCTX_CHECK(w->w.w1.ndim() == 3, who, ": w1 must be [experts, d_model, d_ff], got ", w->w.w1.shape_str());
        LONGCTX_CHECK(bx.tensor.ndim() == 2, who, ": x must be [tokens, d_model], got ", bx.tensor.shape_str());
        auto s = std::make_shared<MoeState>();
        s->cfg = moe_config(ffn_spec(options, who), bx.tensor.dim(1), w->w.w1.dim(2));
        py::gil_scoped_release release;
        s->fwd = moe::forward(s->cfg, w->w, bx.tensor, {training, noise_seed});
        return s;
      },
      py::arg("x"), py::arg("weights"), py::arg("options"), py::arg("training"), py::arg("noise_seed"));
  m.def(
      "moe_backward",
      [](py::handle x, py::handle weights, const MoeState& s, py::handle dy, double aux_grad) {
        const std::string who = "moe_ffn backward";
        // The aux loss is linear in its weights, so scaling them by d(loss)/d(aux_loss) gives the
        // gradient of <out, dy> + aux_grad * aux_loss (moe::backward adds the aux loss with weight 1).
        LONGCTX_CHECK(std::isfinite(aux_grad) && aux_grad >= 0, who,
                      ": the gradient reaching aux_loss must be finite and >= 0, got ", aux_grad);
        Borrowed bx = borrow(x, who, "x", false), bd = borrow(dy, who, "grad_out", false);
        auto w = weights_of(weights, who);
        moe::Config cfg = s.cfg;
        cfg.importance_weight *= float(aux_grad);
        cfg.load_balance_weight *= float(aux_grad);
        cfg.z_loss_weight *= float(aux_grad);
        moe::Grads g;
        {
          py::gil_scoped_release release;
          g = moe::backward(cfg, w->w, bx.tensor, s.fwd, bd.tensor);
        }
        py::dict out;
        out["x"] = own(std::move(g.dx));
        const std::pair<const char*, Tensor*> grads[] = {{"w_gate", &g.dw_gate},        {"w_noise", &g.dw_noise},
                                                         {"w1", &g.dw1},                {"w3", &g.dw3},
                                                         {"w2", &g.dw2},                {"shared_w1", &g.dshared_w1},
                                                         {"shared_w3", &g.dshared_w3}, {"shared_w2", &g.dshared_w2}};
        for (auto [name, t] : grads)
          if (!t->empty()) out[name] = own(std::move(*t));
        return out;
      },
      py::arg("x"), py::arg("weights"), py::arg("fwd"), py::arg("grad_out"), py::arg("aux_grad"));
  m.def(
      "moe_update_expert_bias",
      [](py::handle expert_bias, const MoeState& s) {
        Borrowed b = borrow(expert_bias, "moe update_expert_bias", "expert_bias", false);
        moe::Weights w;
        w.expert_bias = b.tensor.alias();
        moe::update_expert_bias(s.cfg, w, s.fwd.stats);
      },
      py::arg("expert_bias"), py::arg("fwd"),
      "Bias-free router: expert_bias (float32 [E], changed in place) += rate * sign(mean load - load) from fwd's loads.");
  m.def(
      "moe_init_weights",
      [](py::handle options, int64_t d_model, int64_t d_ff, uint64_t seed) {
        const moe::Config cfg = moe_config(ffn_spec(options, "moe_init_weights"), d_model, d_ff);
        moe::Weights w = moe::init_weights(cfg, seed);
        py::dict out;
        const auto slots = slots_of(w);
        for (size_t i = 0; i < slots.size(); ++i)
          if (!slots[i]->empty()) out[kWeightNames[i]] = own(std::move(*slots[i]));
        return out;
      },
      py::arg("options"), py::arg("d_model"), py::arg("d_ff"), py::arg("seed"),
      "The C++ model's initial MoE weights: N(0, 1/fan_in), w_noise and expert_bias zero.");
}

}  // namespace longctx::python
