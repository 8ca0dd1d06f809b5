// The C++ kernels timed from inside C++, for bench/python_bench.py's binding-overhead target: the
// same borrowed inputs, the same kernels as the Python functions call, timed with no Python in
// between, so (Python call time) / (this time) - 1 is what the binding adds.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/moba/moba.hpp>
#include <longctx/attention/sparse/threshold.hpp>
#include <longctx/attention/sparse/topk.hpp>
#include <longctx/core/error.hpp>
#include <pybind11/stl.h>

#include <chrono>
#include <type_traits>
#include <vector>

#include "arrays.hpp"
#include "bindings.hpp"
#include "options.hpp"

namespace longctx::python {

namespace {

// One forward (and, when dout is given, its backward) of the kind `spec` holds.
void run_once(const AttentionSpec& spec, const Tensor& q, const Tensor& k, const Tensor& v, const Varlen& vl,
              const Tensor* dout) {
  spec.visit([&](const auto& o) {
    using O = std::decay_t<decltype(o)>;
    if constexpr (std::is_same_v<O, AttentionOptions>) {
      const AttentionResult r = flash_attention_forward(q, k, v, vl, o);
      if (dout) flash_attention_backward(q, k, v, r, *dout, vl);
    } else if constexpr (std::is_same_v<O, MobaOptions>) {
      const MobaResult r = moba_attention_forward(q, k, v, vl, o);
      if (dout) moba_attention_backward(q, k, v, r, *dout, vl);
    } else if constexpr (std::is_same_v<O, TopkOptions>) {
      const SparseResult r = topk_attention_forward(q, k, v, vl, o);
      if (dout) sparse_attention_backward(q, k, v, r, *dout, vl);
    } else if constexpr (std::is_same_v<O, ThresholdOptions>) {
      const SparseResult r = threshold_attention_forward(q, k, v, vl, o);
      if (dout) sparse_attention_backward(q, k, v, r, *dout, vl);
    } else {
      LONGCTX_CHECK(false, "time_attention: kind ", spec.name(), " is not timed here (full, moba, topk, threshold)");
    }
  });
}

}  // namespace

void bind_timing(py::module_& m) {
  m.def(
      "time_attention",
      [](const std::string& kind, py::handle options, py::handle q, py::handle k, py::handle v, py::handle cu,
         py::handle dout, int reps) {
        const std::string who = "time_attention";
        LONGCTX_CHECK(reps >= 1, who, ": reps must be >= 1, got ", reps);
        const AttentionSpec spec = attention_spec(kind, options, py::none(), who);
        Borrowed bq = borrow(q, who, "q"), bk = borrow(k, who, "k"), bv = borrow(v, who, "v");
        Borrowed bd = borrow_optional(dout, who, "grad_out", false);
        const std::vector<int64_t> c = int_list(cu, who, "cu_seqlens");
        const Varlen vl{c, c};
        std::vector<double> seconds;
        py::gil_scoped_release release;
        for (int i = 0; i < reps; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          run_once(spec, bq.tensor, bk.tensor, bv.tensor, vl, dout.is_none() ? nullptr : &bd.tensor);
          seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return seconds;
      },
      py::arg("kind"), py::arg("options"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens"),
      py::arg("grad_out"), py::arg("reps"),
      "Seconds of each of `reps` calls of the kind's C++ forward (and backward, given grad_out), timed in C++.");
}

}  // namespace longctx::python
