// Owned, 64-byte aligned, row-major buffers of fp32 or bf16 values.
#pragma once
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace longctx {

enum class DType : uint8_t { f32, bf16 };
const char* dtype_name(DType d);
std::string shape_str(const std::vector<int64_t>& shape);  // "[2, 3, 4]"
size_t dtype_size(DType d);

// bf16 is the top half of an fp32; conversion rounds to nearest even and keeps NaNs NaN.
inline uint16_t f32_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float bf16_to_f32(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

namespace detail {
// Frees a tensor's buffer unless the tensor is a non-owning alias; `bytes`: its allocated size
// (large buffers go back to a small cache of recently freed ones, tensor.cpp).
struct BufferFree {
  bool owning = true;
  size_t bytes = 0;
  void operator()(void* p) const;
};
}  // namespace detail

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled tensor of the given shape.
  explicit Tensor(std::vector<int64_t> shape, DType dtype = DType::f32);
  Tensor(std::initializer_list<int64_t> shape, DType dtype = DType::f32)
      : Tensor(std::vector<int64_t>(shape), dtype) {}
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;  // copies are explicit: clone()
  Tensor& operator=(const Tensor&) = delete;

  // A tensor whose values are whatever the allocator left (not zeroed): for outputs the caller
  // writes in full before reading them.
  static Tensor uninitialized(std::vector<int64_t> shape, DType dtype = DType::f32);
  Tensor clone() const;
  // A tensor over the same buffer that does not own it (it must not outlive this one): for
  // handing weights held elsewhere to an API that takes Tensors, without a copy.
  Tensor alias() const;
  // A non-owning alias of the first n rows (dim 0), e.g. the filled prefix of a KV cache.
  Tensor alias_rows(int64_t n) const;
  // A non-owning tensor over memory held elsewhere (a NumPy array or torch tensor handed in by the
  // Python binding, zero-copy): `data` holds numel(shape) contiguous row-major values of `dtype`,
  // aligned to the element size, and must outlive the tensor.
  static Tensor borrow(void* data, std::vector<int64_t> shape, DType dtype);
  Tensor to(DType dtype) const;  // converted copy

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const;
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return size_t(numel_) * dtype_size(dtype_); }
  bool empty() const { return numel_ == 0; }
  std::string shape_str() const;

  // Typed access; throws if the tensor holds another dtype.
  float* f32();
  const float* f32() const;
  uint16_t* bf16();
  const uint16_t* bf16() const;
  const void* raw() const { return data_.get(); }
  void* raw() { return data_.get(); }

  void fill(float value);
  float at(int64_t flat_index) const;  // any dtype, as fp32

 private:
  using Free = detail::BufferFree;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  std::unique_ptr<void, Free> data_;
};

// Tensor of N(0, stddev^2) samples from a seeded generator (same seed, same values), drawn in
// fp32 and then stored as `dtype`.
Tensor random_normal(std::vector<int64_t> shape, uint64_t seed, float stddev = 1.0f, DType dtype = DType::f32);

}  // namespace longctx
