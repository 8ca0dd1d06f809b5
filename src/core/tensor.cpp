#include <longctx/core/error.hpp>
#include <longctx/core/tensor.hpp>

#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <random>
#include <sstream>
#include <utility>
#include <vector>

namespace longctx {

const char* dtype_name(DType d) { return d == DType::f32 ? "f32" : "bf16"; }
size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 2; }

namespace {

// Buffers of at least kLarge bytes come in 2 MB pages (madvise: advice only, nothing changes
// without transparent huge pages), and a few freed ones are kept for the next tensor of the same
// size. Each fresh mapping costs page faults and the kernel's zeroing on first touch: a 16 MB
// output took ~7 ms in 4 KB pages, ~1.5 ms in 2 MB pages, and nothing when reused (a forward
// or a training step allocates the same sizes every call).
constexpr size_t kHugePage = size_t(2) << 20, kLarge = 4 * kHugePage;
#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kCacheBytes = 0;  // AddressSanitizer must see every free (a use after free is reported)
#else
constexpr size_t kCacheBytes = size_t(256) << 20;
#endif

class LargeBufferCache {
 public:
  // The most recently freed buffer of this size (the likeliest still in cache), or null.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = free_.size(); i-- > 0;)
      if (free_[i].first == bytes) {
        void* p = free_[i].second;
        held_ -= bytes;
        free_.erase(free_.begin() + long(i));
        return p;
      }
    return nullptr;
  }
  // Keeps p, dropping the oldest buffers beyond kCacheBytes.
  void give(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back({bytes, p});
    held_ += bytes;
    while (held_ > kCacheBytes) {
      std::free(free_.front().second);
      held_ -= free_.front().first;
      free_.erase(free_.begin());
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;  // oldest first
  size_t held_ = 0;
};

LargeBufferCache& large_buffers() {
  static LargeBufferCache* cache = new LargeBufferCache;  // never destroyed: tensors may outlive statics
  return *cache;
}

}  // namespace

void detail::BufferFree::operator()(void* p) const {
  if (!owning) return;
  if (bytes >= kLarge)
    large_buffers().give(p, bytes);
  else
    std::free(p);
}

namespace {

int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    LONGCTX_CHECK(shape[i] >= 0, "tensor dimension ", i, " must be >= 0, got ", shape[i]);
    n *= shape[i];
  }
  return n;
}

}  // namespace

Tensor::Tensor(std::vector<int64_t> shape, DType dtype) : Tensor(uninitialized(std::move(shape), dtype)) {
  std::memset(data_.get(), 0, nbytes());
}

Tensor Tensor::uninitialized(std::vector<int64_t> shape, DType dtype) {
  Tensor t;
  t.numel_ = checked_numel(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  if (bytes == 0) bytes = 64;
  const bool large = bytes >= kLarge;
  if (large) bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = large ? large_buffers().take(bytes) : nullptr;
  if (!p) {
    p = std::aligned_alloc(large ? kHugePage : 64, bytes);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (large) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  }
  t.data_ = std::unique_ptr<void, Free>(p, Free{true, bytes});
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = uninitialized(shape_, dtype_);  // every element written below
  std::memcpy(t.data_.get(), data_.get(), nbytes());
  return t;
}

Tensor Tensor::alias() const {
  Tensor t;
  t.shape_ = shape_;
  t.numel_ = numel_;
  t.dtype_ = dtype_;
  t.data_ = std::unique_ptr<void, Free>(data_.get(), Free{false});
  return t;
}

Tensor Tensor::alias_rows(int64_t n) const {
  LONGCTX_CHECK(ndim() >= 1 && n >= 0 && n <= shape_[0], "Tensor::alias_rows: ", n, " rows of a ", shape_str(),
                " tensor");
  Tensor t = alias();
  t.shape_[0] = n;
  t.numel_ = shape_[0] == 0 ? 0 : numel_ / shape_[0] * n;
  return t;
}

Tensor Tensor::borrow(void* data, std::vector<int64_t> shape, DType dtype) {
  Tensor t;
  t.numel_ = checked_numel(shape);
  LONGCTX_CHECK(data != nullptr || t.numel_ == 0, "Tensor::borrow: null data for shape ", longctx::shape_str(shape));
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.data_ = std::unique_ptr<void, Free>(data, Free{false});
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  Tensor t = uninitialized(shape_, dtype);  // every element written below
  if (dtype == DType::bf16) {
    const float* s = f32();
    uint16_t* d = t.bf16();
    for (int64_t i = 0; i < numel_; ++i) d[i] = f32_to_bf16(s[i]);
  } else {
    const uint16_t* s = bf16();
    float* d = t.f32();
    for (int64_t i = 0; i < numel_; ++i) d[i] = bf16_to_f32(s[i]);
  }
  return t;
}

int64_t Tensor::dim(int i) const {
  LONGCTX_CHECK(i >= 0 && i < ndim(), "dimension index ", i, " out of range for shape ", shape_str());
  return shape_[size_t(i)];
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

std::string Tensor::shape_str() const { return longctx::shape_str(shape_); }

float* Tensor::f32() {
  LONGCTX_CHECK(dtype_ == DType::f32, "tensor holds ", dtype_name(dtype_), ", f32 access requested");
  return static_cast<float*>(data_.get());
}
const float* Tensor::f32() const { return const_cast<Tensor*>(this)->f32(); }
uint16_t* Tensor::bf16() {
  LONGCTX_CHECK(dtype_ == DType::bf16, "tensor holds ", dtype_name(dtype_), ", bf16 access requested");
  return static_cast<uint16_t*>(data_.get());
}
const uint16_t* Tensor::bf16() const { return const_cast<Tensor*>(this)->bf16(); }

void Tensor::fill(float value) {
  if (dtype_ == DType::f32) {
    std::fill(f32(), f32() + numel_, value);
  } else {
    std::fill(bf16(), bf16() + numel_, f32_to_bf16(value));
  }
}

float Tensor::at(int64_t i) const {
  LONGCTX_CHECK(i >= 0 && i < numel_, "flat index ", i, " out of range for shape ", shape_str());
  return dtype_ == DType::f32 ? f32()[i] : bf16_to_f32(bf16()[i]);
}

Tensor random_normal(std::vector<int64_t> shape, uint64_t seed, float stddev, DType dtype) {
  Tensor t(std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return dtype == DType::f32 ? std::move(t) : t.to(dtype);
}

}  // namespace longctx
