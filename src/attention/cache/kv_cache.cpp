#include <longctx/core/error.hpp>
#include <longctx/attention/cache/kv_cache.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <vector>

#include "attention/cache/stored_rows.hpp"
#include "core/simd.hpp"

namespace longctx {

double kv_row_bytes(KVDType dtype, int64_t head_dim) {
  switch (dtype) {
    case KVDType::f32: return 4.0 * double(head_dim);
    case KVDType::bf16: return 2.0 * double(head_dim);
    case KVDType::int8: return double(head_dim) + 4.0;
  }
  return 0;
}

float quantize_int8(const float* x, int64_t n, int8_t* out) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    finite = finite && std::isfinite(x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  if (!finite || amax == 0.0f) {
    std::fill_n(out, n, int8_t(0));
    return finite ? 0.0f : std::nanf("");
  }
  const double inv = 127.0 / double(amax);  // finite even for a subnormal amax
  for (int64_t i = 0; i < n; ++i) out[i] = int8_t(std::clamp(std::nearbyint(double(x[i]) * inv), -127.0, 127.0));
  return amax / 127.0f;
}

void KVCache::AlignedFree::operator()(int8_t* p) const { std::free(p); }

KVCache::KVCache(const KVCacheOptions& opts) : opts_(opts) {
  LONGCTX_CHECK(opts.capacity > 0, "KVCache: capacity must be > 0, got ", opts.capacity);
  LONGCTX_CHECK(opts.kv_heads > 0, "KVCache: kv_heads must be > 0, got ", opts.kv_heads);
  LONGCTX_CHECK(opts.head_dim > 0, "KVCache: head_dim must be > 0, got ", opts.head_dim);
  LONGCTX_CHECK(opts.block_size > 0, "KVCache: block_size must be > 0, got ", opts.block_size);
  if (opts.dtype == KVDType::int8) {
    // 64-byte aligned rows, so a head's row of d = 64 or 128 codes spans whole cache lines.
    const size_t bytes = (size_t(opts.capacity) * size_t(opts.kv_heads) * size_t(opts.head_dim) + 63) / 64 * 64;
    for (Int8Rows* r : {&k8_, &v8_}) {
      r->codes.reset(static_cast<int8_t*>(std::aligned_alloc(64, bytes)));
      if (!r->codes) throw std::bad_alloc();
      r->scale.assign(size_t(opts.capacity) * size_t(opts.kv_heads), 0.0f);
    }
  } else {
    const DType dt = opts.dtype == KVDType::bf16 ? DType::bf16 : DType::f32;
    k_ = Tensor({opts.capacity, opts.kv_heads, opts.head_dim}, dt);
    v_ = Tensor({opts.capacity, opts.kv_heads, opts.head_dim}, dt);
  }
  positions_.reserve(size_t(opts.capacity));
  if (!opts.block_stats) return;
  stats_ = BlockStats(opts.block_size, opts.kv_heads, opts.head_dim);
  stats_.reserve_blocks((opts.capacity + opts.block_size - 1) / opts.block_size);
}

const Tensor& KVCache::keys() const {
  LONGCTX_CHECK(opts_.dtype != KVDType::int8, "KVCache::keys: an int8 cache holds int8 rows and scales "
                "(keys_int8, key_scales; keys_f32 dequantises)");
  return k_;
}

const Tensor& KVCache::values() const {
  LONGCTX_CHECK(opts_.dtype != KVDType::int8, "KVCache::values: an int8 cache holds int8 rows and scales "
                "(values_int8, value_scales; values_f32 dequantises)");
  return v_;
}

namespace {
Tensor as_f32(const attn::StoredRows& x, int64_t n) {
  Tensor out({n, x.heads, x.d});
  for (int64_t r = 0; r < n * x.heads; ++r) attn::copy_row(x, r, out.f32() + r * x.d);
  return out;
}
}  // namespace

Tensor KVCache::keys_f32() const { return as_f32(attn::stored_keys(*this), size_); }
Tensor KVCache::values_f32() const { return as_f32(attn::stored_values(*this), size_); }

size_t KVCache::memory_bytes() const {
  const double rows = 2.0 * double(opts_.capacity) * double(opts_.kv_heads);
  return size_t(rows * kv_row_bytes(opts_.dtype, opts_.head_dim)) + positions_.capacity() * sizeof(int64_t) +
         stats_.memory_bytes();
}

void KVCache::append(const Tensor& k, const Tensor& v) {
  LONGCTX_CHECK(k.ndim() == 3 && k.dim(1) == opts_.kv_heads && k.dim(2) == opts_.head_dim,
                "KVCache::append: k must be [n, ", opts_.kv_heads, ", ", opts_.head_dim, "], got ", k.shape_str());
  LONGCTX_CHECK(v.shape() == k.shape(), "KVCache::append: v shape ", v.shape_str(), " differs from k shape ",
                k.shape_str());
  const int64_t n = k.dim(0);
  LONGCTX_CHECK(size_ + n <= opts_.capacity, "KVCache::append: overflow: ", size_, " cached + ", n,
                " new tokens exceeds the capacity ", opts_.capacity);
  const int hkv = opts_.kv_heads, d = opts_.head_dim;
  const size_t row = size_t(hkv) * size_t(d);
  // Store (converting or quantising), then fold the stored keys into the block statistics.
  auto store = [&](const Tensor& src, Tensor& dst, Int8Rows& dst8) {
    if (opts_.dtype == KVDType::int8) {
      std::vector<float> x(static_cast<size_t>(d));
      for (int64_t i = 0; i < n; ++i)
        for (int g = 0; g < hkv; ++g) {
          attn::copy_row(src, i * hkv + g, x.data());
          const int64_t t = size_ + i;
          dst8.scale[size_t(g) * size_t(opts_.capacity) + size_t(t)] =
              quantize_int8(x.data(), d, dst8.codes.get() + (size_t(t) * hkv + size_t(g)) * size_t(d));
        }
      return;
    }
    const Tensor conv = src.dtype() == dst.dtype() ? Tensor() : src.to(dst.dtype());
    const Tensor& s = src.dtype() == dst.dtype() ? src : conv;
    std::memcpy(static_cast<char*>(dst.raw()) + size_t(size_) * row * dtype_size(dst.dtype()), s.raw(), s.nbytes());
  };
  store(k, k_, k8_);
  store(v, v_, v8_);
  const int64_t start = size_;
  size_ += n;
  for (int64_t i = 0; i < n; ++i) positions_.push_back(appended_++);
  if (!opts_.block_stats) return;
  std::vector<float> scratch(size_t(n) * d);
  const attn::StoredRows stored = attn::stored_keys(*this);
  for (int g = 0; g < hkv; ++g) {
    const attn::Rows kr = attn::load_rows(stored, start, n, g, scratch.data());
    for (int64_t i = 0; i < n; ++i) stats_.add_key(start + i, g, kr.row(i));
  }
}

void KVCache::clear() {
  size_ = appended_ = 0;
  positions_.clear();
  stats_.clear();
}

void KVCache::remove_rows(std::vector<int64_t> rows) {
  LONGCTX_CHECK(!opts_.block_stats, "KVCache::remove_rows: a cache with block statistics (blocks of ", opts_.block_size,
                " consecutive positions) cannot evict rows");
  std::sort(rows.begin(), rows.end(), std::greater<>());
  LONGCTX_CHECK(std::adjacent_find(rows.begin(), rows.end()) == rows.end(), "KVCache::remove_rows: a row is given twice");
  LONGCTX_CHECK(rows.empty() || (rows.front() < size_ && rows.back() >= 0), "KVCache::remove_rows: rows must be in [0, ",
                size_, "), got ", rows.empty() ? 0 : rows.front());
  const int64_t hkv = opts_.kv_heads, d = opts_.head_dim;
  auto move_row = [&](int64_t from, int64_t to) {
    if (opts_.dtype == KVDType::int8) {
      for (Int8Rows* r : {&k8_, &v8_}) {
        std::memcpy(r->codes.get() + to * hkv * d, r->codes.get() + from * hkv * d, size_t(hkv * d));
        for (int64_t g = 0; g < hkv; ++g) r->scale[size_t(g * opts_.capacity + to)] = r->scale[size_t(g * opts_.capacity + from)];
      }
    } else {
      const size_t bytes = size_t(hkv * d) * dtype_size(k_.dtype());
      for (Tensor* t : {&k_, &v_})
        std::memcpy(static_cast<char*>(t->raw()) + size_t(to) * bytes, static_cast<char*>(t->raw()) + size_t(from) * bytes,
                    bytes);
    }
    positions_[size_t(to)] = positions_[size_t(from)];
  };
  for (const int64_t r : rows) {  // highest first: the last row is never one still to be removed
    if (r != size_ - 1) move_row(size_ - 1, r);
    --size_;
    positions_.pop_back();
  }
}

}  // namespace longctx
