// Zero-copy exchange of arrays between Python and longctx through DLPack (docs/PYTHON.md
// "Zero-copy"): torch tensors and NumPy arrays both speak it (__dlpack__), it carries bf16, and it
// needs no link to torch. Inputs are borrowed as non-owning longctx Tensors over the caller's
// memory; results are handed out as Arrays that view the C++ buffers and keep them alive.
#pragma once
#include <dlpack/dlpack.h>
#include <longctx/core/tensor.hpp>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace longctx::python {

namespace py = pybind11;

// An input borrowed zero-copy: `tensor` views the memory of the producer's DLPack capsule, which
// `capsule` keeps alive (the producer frees it when the capsule dies).
struct Borrowed {
  py::object capsule;
  Tensor tensor;
};

// `obj` (anything with __dlpack__, or a "dltensor" capsule) as an f32 or bf16 tensor on the CPU,
// contiguous and row-major. Throws TypeError for another kind of object or dtype, ValueError for
// another device or a non-contiguous layout; `who` and `name` head the message.
Borrowed borrow(py::handle obj, const std::string& who, const char* name, bool allow_bf16 = true);
// As borrow, or an empty Borrowed for None.
Borrowed borrow_optional(py::handle obj, const std::string& who, const char* name, bool allow_bf16 = true);

// cu_seqlens and the like: None (empty), a sequence of ints, or an int32/int64 array.
std::vector<int64_t> int_list(py::handle obj, const std::string& who, const char* name);
// A float32 array's values, copied (small weights the C++ API holds in std::vector).
std::vector<float> float_list(py::handle obj, const std::string& who, const char* name);

// A result handed to Python: a view of `data` (contiguous, row-major) that keeps `owner` alive.
// Exposes __dlpack__ (torch.from_dlpack, numpy.from_dlpack) and the buffer protocol (np.asarray).
struct Array {
  std::shared_ptr<const void> owner;
  void* data = nullptr;
  std::vector<int64_t> shape;
  DLDataType dtype{};
};

// A view of t (f32 or bf16) kept alive by owner, which must own t's buffer.
Array view(std::shared_ptr<const void> owner, const Tensor& t);
// A view of v (float, int32 or int64) as an array of `shape` (numel must match).
template <class T>
Array view(std::shared_ptr<const void> owner, const std::vector<T>& v, std::vector<int64_t> shape);
// A tensor handed over whole: the Array owns it.
Array own(Tensor t);

// Registers the Array class on the module.
void bind_arrays(py::module_& m);

}  // namespace longctx::python
