// The parts of the longctx._core extension module, each registering its functions and classes.
#pragma once
#include <pybind11/pybind11.h>

namespace longctx::python {

namespace py = pybind11;

void bind_attention(py::module_& m);  // bind_attention.cpp
void bind_moe(py::module_& m);        // bind_moe.cpp
void bind_timing(py::module_& m);     // timing.cpp

}  // namespace longctx::python
