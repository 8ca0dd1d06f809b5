#include "arrays.hpp"

#include <longctx/core/error.hpp>
#include <pybind11/stl.h>

#include <cstring>
#include <utility>

namespace longctx::python {

namespace {

constexpr DLDataType kF32{kDLFloat, 32, 1}, kBf16{kDLBfloat, 16, 1}, kI32{kDLInt, 32, 1}, kI64{kDLInt, 64, 1};

bool same(DLDataType a, DLDataType b) { return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes; }

std::string dtype_str(DLDataType t) {
  const char* code = t.code == kDLFloat ? "float" : t.code == kDLBfloat ? "bfloat" : t.code == kDLInt ? "int"
                     : t.code == kDLUInt ? "uint" : t.code == kDLComplex ? "complex" : "dlpack-code-";
  return concat(code, t.code <= kDLComplex ? "" : std::to_string(t.code), int(t.bits), t.lanes > 1 ? "x" : "",
                t.lanes > 1 ? std::to_string(t.lanes) : "");
}

[[noreturn]] void type_error(const std::string& msg) { throw py::type_error("longctx: " + msg); }

// The DLPack capsule of obj (its own __dlpack__, or obj itself when it is one), not consumed: we
// only read it while holding it, and its producer frees it when it dies.
py::object capsule_of(py::handle obj, const std::string& who, const char* name) {
  py::object cap;
  if (PyCapsule_CheckExact(obj.ptr())) {
    cap = py::reinterpret_borrow<py::object>(obj);
  } else if (py::hasattr(obj, "__dlpack__")) {
    cap = obj.attr("__dlpack__")();
  } else {
    type_error(concat(who, ": ", name, " must be a torch tensor or NumPy array (an object with __dlpack__), got ",
                      std::string(py::str(py::type::of(obj).attr("__name__")))));
  }
  if (!PyCapsule_IsValid(cap.ptr(), "dltensor"))
    type_error(concat(who, ": ", name, " gave no unused DLPack capsule (a capsule can be read only once)"));
  return cap;
}

const DLTensor& dl_of(const py::object& cap) {
  return static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"))->dl_tensor;
}

std::vector<int64_t> shape_of(const DLTensor& t) { return std::vector<int64_t>(t.shape, t.shape + t.ndim); }

// Checks device and layout; returns the first element's address.
void* checked_data(const DLTensor& t, const std::string& who, const char* name) {
  LONGCTX_CHECK(t.device.device_type == kDLCPU, who, ": ", name, " must be on the CPU, got DLPack device type ",
                int(t.device.device_type));
  const std::vector<int64_t> shape = shape_of(t);
  if (t.strides) {
    int64_t expect = 1;
    bool empty = false;
    for (int64_t s : shape) empty |= s == 0;
    for (int i = t.ndim - 1; i >= 0 && !empty; --i) {
      LONGCTX_CHECK(shape[size_t(i)] == 1 || t.strides[i] == expect, who, ": ", name,
                    " must be contiguous (row-major), got shape ", shape_str(shape), " with strides ",
                    shape_str(std::vector<int64_t>(t.strides, t.strides + t.ndim)), "; call .contiguous() first");
      expect *= shape[size_t(i)];
    }
  }
  char* data = static_cast<char*>(t.data) + t.byte_offset;
  const size_t align = (t.dtype.bits + 7) / 8;
  LONGCTX_CHECK(reinterpret_cast<uintptr_t>(data) % align == 0, who, ": ", name, " is not aligned to its ", align,
                "-byte elements");
  return data;
}

void capsule_destructor(PyObject* cap) {
  if (!PyCapsule_IsValid(cap, "dltensor")) return;  // consumed: the consumer calls the deleter
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  m->deleter(m);
}

// What an exported DLManagedTensor points into, freed by its deleter.
struct Export {
  Array array;
  std::vector<int64_t> strides;
  DLManagedTensor managed{};
};

py::capsule to_dlpack(const Array& a) {
  auto* e = new Export{a, std::vector<int64_t>(a.shape.size()), {}};
  int64_t s = 1;
  for (size_t i = a.shape.size(); i-- > 0;) e->strides[i] = s, s *= a.shape[i];
  e->managed.dl_tensor = {a.data, {kDLCPU, 0}, int(a.shape.size()), a.dtype, e->array.shape.data(),
                          e->strides.data(), 0};
  e->managed.manager_ctx = e;
  e->managed.deleter = [](DLManagedTensor* m) { delete static_cast<Export*>(m->manager_ctx); };
  PyObject* cap = PyCapsule_New(&e->managed, "dltensor", capsule_destructor);
  if (!cap) {
    delete e;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// A non-null address for empty results (DLPack consumers may refuse a null pointer).
void* non_null(const void* p) {
  static int64_t dummy = 0;
  return p ? const_cast<void*>(p) : &dummy;
}

}  // namespace

Borrowed borrow(py::handle obj, const std::string& who, const char* name, bool allow_bf16) {
  py::object cap = capsule_of(obj, who, name);
  const DLTensor& t = dl_of(cap);
  DType dtype = DType::f32;
  if (same(t.dtype, kBf16) && allow_bf16) dtype = DType::bf16;
  else if (!same(t.dtype, kF32))
    type_error(concat(who, ": ", name, " must be float32", allow_bf16 ? " or bfloat16" : "", ", got ",
                      dtype_str(t.dtype)));
  void* data = checked_data(t, who, name);
  return {std::move(cap), Tensor::borrow(data, shape_of(t), dtype)};
}

Borrowed borrow_optional(py::handle obj, const std::string& who, const char* name, bool allow_bf16) {
  if (obj.is_none()) return {};
  return borrow(obj, who, name, allow_bf16);
}

std::vector<int64_t> int_list(py::handle obj, const std::string& who, const char* name) {
  if (obj.is_none()) return {};
  if (!py::hasattr(obj, "__dlpack__") && !PyCapsule_CheckExact(obj.ptr())) {
    try {
      return obj.cast<std::vector<int64_t>>();
    } catch (const py::cast_error&) {
      type_error(concat(who, ": ", name, " must be None, a sequence of ints or an int32/int64 array, got ",
                        std::string(py::str(py::type::of(obj).attr("__name__")))));
    }
  }
  py::object cap = capsule_of(obj, who, name);
  const DLTensor& t = dl_of(cap);
  const void* data = checked_data(t, who, name);
  LONGCTX_CHECK(t.ndim == 1, who, ": ", name, " must be one-dimensional, got shape ", shape_str(shape_of(t)));
  std::vector<int64_t> out(size_t(t.shape[0]));
  if (same(t.dtype, kI32)) {
    const int32_t* p = static_cast<const int32_t*>(data);
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  } else if (same(t.dtype, kI64)) {
    std::memcpy(out.data(), data, out.size() * sizeof(int64_t));
  } else {
    type_error(concat(who, ": ", name, " must be int32 or int64, got ", dtype_str(t.dtype)));
  }
  return out;
}

std::vector<float> float_list(py::handle obj, const std::string& who, const char* name) {
  const Borrowed b = borrow(obj, who, name, false);
  return std::vector<float>(b.tensor.f32(), b.tensor.f32() + b.tensor.numel());
}

Array view(std::shared_ptr<const void> owner, const Tensor& t) {
  return {std::move(owner), non_null(t.raw()), t.shape(), t.dtype() == DType::f32 ? kF32 : kBf16};
}

template <class T>
Array view(std::shared_ptr<const void> owner, const std::vector<T>& v, std::vector<int64_t> shape) {
  LONGCTX_CHECK(numel(shape) == int64_t(v.size()), "array view: ", v.size(), " values for shape ", shape_str(shape));
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>);
  const DLDataType dtype = std::is_same_v<T, float> ? kF32 : std::is_same_v<T, int32_t> ? kI32 : kI64;
  return {std::move(owner), non_null(v.data()), std::move(shape), dtype};
}
template Array view(std::shared_ptr<const void>, const std::vector<float>&, std::vector<int64_t>);
template Array view(std::shared_ptr<const void>, const std::vector<int32_t>&, std::vector<int64_t>);
template Array view(std::shared_ptr<const void>, const std::vector<int64_t>&, std::vector<int64_t>);

Array own(Tensor t) {
  auto held = std::make_shared<Tensor>(std::move(t));
  const Tensor& ref = *held;
  return view(std::move(held), ref);
}

void bind_arrays(py::module_& m) {
  m.def(
      "address_of", [](py::handle obj) { return reinterpret_cast<uintptr_t>(borrow(obj, "address_of", "array").tensor.raw()); },
      py::arg("array"), "The address longctx reads an input array at (tests: inputs are borrowed, not copied).");
  py::class_<Array>(m, "Array", py::buffer_protocol(),
                    "A result of a longctx kernel, viewed without a copy: torch.from_dlpack(a), "
                    "numpy.from_dlpack(a) or numpy.asarray(a) (not bf16).")
      .def("__dlpack__", [](const Array& a, py::object /*stream*/) { return to_dlpack(a); }, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const Array&) { return py::make_tuple(int(kDLCPU), 0); })
      .def_property_readonly("shape", [](const Array& a) { return py::tuple(py::cast(a.shape)); })
      .def_property_readonly("dtype", [](const Array& a) { return dtype_str(a.dtype); })
      .def("__repr__", [](const Array& a) { return concat("longctx.Array(shape=", shape_str(a.shape), ", dtype=", dtype_str(a.dtype), ")"); })
      .def_buffer([](const Array& a) {
        if (same(a.dtype, kBf16)) throw py::buffer_error("longctx: a bfloat16 Array has no buffer format; use torch.from_dlpack");
        const py::ssize_t item = a.dtype.bits / 8;
        std::vector<py::ssize_t> shape(a.shape.begin(), a.shape.end()), strides(a.shape.size());
        py::ssize_t s = item;
        for (size_t i = shape.size(); i-- > 0;) strides[i] = s, s *= shape[i];
        const std::string format = same(a.dtype, kF32) ? py::format_descriptor<float>::format()
                                   : same(a.dtype, kI32) ? py::format_descriptor<int32_t>::format()
                                                         : py::format_descriptor<int64_t>::format();
        return py::buffer_info(a.data, item, format, py::ssize_t(shape.size()), shape, strides);
      });
}

}  // namespace longctx::python
