// Option dicts from Python, read by the same field lists and JSON readers as the C++ model config
// (core/fields.hpp, model/config.hpp), so names, defaults and errors are spelt once.
#pragma once
#include <longctx/attention/kind/kind.hpp>
#include <longctx/model/config.hpp>
#include <nlohmann/json.hpp>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace longctx::python {

namespace py = pybind11;

// A dict of bools, ints, floats and strings (None: empty) as a JSON object.
nlohmann::json json_of(py::handle options, const std::string& who);
py::object py_of(const nlohmann::json& j);

// A softmax scale: None gives 0 (the kernels' 1/sqrt(head_dim)); else a finite number > 0.
float softmax_scale_of(py::handle softmax_scale, const std::string& who);
// The spec of `kind` with `options` over its defaults, and the softmax scale (None or 0: default).
AttentionSpec attention_spec(const std::string& kind, py::handle options, py::handle softmax_scale,
                             const std::string& who);
// An MoE FFN spec from a dict of FfnSpec fields.
FfnSpec ffn_spec(py::handle options, const std::string& who);

// Raises ValueError unless max_seqlen (an int, or None: unchecked) is at least the longest
// sequence of cu (or total when cu is empty), as FlashAttention's kernels assume.
void check_max_seqlen(const std::string& who, const char* name, py::handle max_seqlen,
                      const std::vector<int64_t>& cu, int64_t total);

void bind_options(py::module_& m);

}  // namespace longctx::python
