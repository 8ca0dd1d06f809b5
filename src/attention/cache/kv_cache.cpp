#include <longctx/core/error.hpp>
#include <longctx/attention/cache/kv_cache.hpp>

#include <vector>

#include "attention/engine/varlen.hpp"

namespace longctx {

KVCache::KVCache(const KVCacheOptions& opts) : opts_(opts) {
  LONGCTX_CHECK(opts.capacity > 0, "KVCache: capacity must be > 0, got ", opts.capacity);
  LONGCTX_CHECK(opts.kv_heads > 0, "KVCache: kv_heads must be > 0, got ", opts.kv_heads);
  LONGCTX_CHECK(opts.head_dim > 0, "KVCache: head_dim must be > 0, got ", opts.head_dim);
  LONGCTX_CHECK(opts.block_size > 0, "KVCache: block_size must be > 0, got ", opts.block_size);
  k_ = Tensor({opts.capacity, opts.kv_heads, opts.head_dim}, opts.dtype);
  v_ = Tensor({opts.capacity, opts.kv_heads, opts.head_dim}, opts.dtype);
  if (!opts.block_stats) return;
  stats_ = BlockStats(opts.block_size, opts.kv_heads, opts.head_dim);
  stats_.reserve_blocks((opts.capacity + opts.block_size - 1) / opts.block_size);
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
  // Store (converting dtype if needed), then fold the stored keys into the block statistics.
  auto store = [&](const Tensor& src, Tensor& dst) {
    const Tensor conv = src.dtype() == opts_.dtype ? Tensor() : src.to(opts_.dtype);
    const Tensor& s = src.dtype() == opts_.dtype ? src : conv;
    std::memcpy(static_cast<char*>(dst.raw()) + size_t(size_) * row * dtype_size(opts_.dtype), s.raw(), s.nbytes());
  };
  store(k, k_);
  store(v, v_);
  const int64_t start = size_;
  size_ += n;
  if (!opts_.block_stats) return;
  std::vector<float> scratch(size_t(n) * d);
  for (int g = 0; g < hkv; ++g) {
    const attn::Rows kr = attn::load_rows(k_, start, n, g, scratch.data());
    for (int64_t i = 0; i < n; ++i) stats_.add_key(start + i, g, kr.row(i));
  }
}

void KVCache::clear() {
  size_ = 0;
  stats_.clear();
}

}  // namespace longctx
