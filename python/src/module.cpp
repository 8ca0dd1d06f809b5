// longctx._core: the C++ kernels for Python (docs/PYTHON.md). Arrays cross by DLPack without
// copies (arrays.hpp); std::invalid_argument becomes ValueError (pybind11's translation), with the
// C++ message.
#include <longctx/core/threads.hpp>

#include "arrays.hpp"
#include "bindings.hpp"
#include "options.hpp"

PYBIND11_MODULE(_core, m) {
  using namespace longctx::python;
  m.doc() = "longctx C++ kernels (forward and backward without autograd; longctx wraps them in torch)";
  bind_arrays(m);
  bind_options(m);
  bind_attention(m);
  bind_moe(m);
  bind_timing(m);
  m.def("set_threads", &longctx::parallel::set_threads, py::arg("n"),
        "OpenMP threads of the calling thread's kernels (shared with torch.set_num_threads: one libgomp).");
  m.def("get_threads", &longctx::parallel::max_threads);
}
