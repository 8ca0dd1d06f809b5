#include <longctx/attention/sparse/block_stats.hpp>
#include <longctx/core/error.hpp>

#include <algorithm>

#include "core/simd.hpp"

namespace longctx {

BlockStats::BlockStats(int64_t block_size, int kv_heads, int head_dim)
    : block_(block_size), hkv_(kv_heads), d_(head_dim) {
  LONGCTX_CHECK(block_size > 0, "BlockStats: block_size must be > 0, got ", block_size);
  LONGCTX_CHECK(kv_heads > 0 && head_dim > 0, "BlockStats: kv_heads and head_dim must be > 0, got ", kv_heads,
                " and ", head_dim);
}

void BlockStats::reserve_blocks(int64_t blocks) {
  const size_t n = size_t(blocks) * size_t(hkv_) * size_t(d_);
  sum_.reserve(n);
  min_.reserve(n);
  max_.reserve(n);
}

void BlockStats::add_key(int64_t pos, int g, const float* key) {
  const int64_t j = pos / block_;
  if (j >= blocks_) {
    blocks_ = j + 1;
    const size_t n = size_t(blocks_) * size_t(hkv_) * size_t(d_);
    sum_.resize(n);
    min_.resize(n);
    max_.resize(n);
  }
  float *s = &sum_[index(j, g)], *mn = &min_[index(j, g)], *mx = &max_[index(j, g)];
  if (pos % block_ == 0) {
    std::copy_n(key, d_, s);
    std::copy_n(key, d_, mn);
    std::copy_n(key, d_, mx);
    return;
  }
  simd::add_inplace(s, key, d_);
  for (int c = 0; c < d_; ++c) {
    mn[c] = std::min(mn[c], key[c]);
    mx[c] = std::max(mx[c], key[c]);
  }
}

void BlockStats::clear() {
  blocks_ = 0;
  sum_.clear();
  min_.clear();
  max_.clear();
}

float quest_bound(const float* q, const float* mn, const float* mx, int d) {
  float b = 0.0f;
  for (int c = 0; c < d; ++c) b += std::max(q[c] * mn[c], q[c] * mx[c]);
  return b;
}

}  // namespace longctx
