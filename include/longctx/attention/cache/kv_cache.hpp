// KV cache of one attention layer for decode and chunked prefill: keys and values stored as
// [capacity, kv_heads, head_dim] in fp32 or bf16 (the layout every kernel reads), plus the
// per-block key sums and min/max (BlockStats) kept up to date as tokens are appended, so
// MoBA's block means and Quest's bounds cost O(blocks * d) per query, not O(n * d).
// Block statistics are computed from the stored (possibly bf16-rounded) keys, so they equal
// what a prefill over the same stored keys computes.
#pragma once
#include <longctx/attention/sparse/block_stats.hpp>
#include <longctx/core/tensor.hpp>

#include <cstdint>

namespace longctx {

struct KVCacheOptions {
  int64_t capacity = 0;   // most tokens the cache can hold
  int kv_heads = 0;
  int head_dim = 0;
  int64_t block_size = 64;  // block of the statistics (MoBA and Quest block)
  DType dtype = DType::bf16;
  bool block_stats = true;  // keep them (AttentionSpec::stats_block_size() says who reads them)
};

class KVCache {
 public:
  explicit KVCache(const KVCacheOptions& opts);

  // Appends new tokens: k and v are [n, kv_heads, head_dim] (fp32 or bf16). Throws
  // std::invalid_argument on a shape mismatch or when size() + n would exceed the capacity.
  void append(const Tensor& k, const Tensor& v);
  void clear();

  int64_t size() const { return size_; }
  int64_t capacity() const { return opts_.capacity; }
  int kv_heads() const { return opts_.kv_heads; }
  int head_dim() const { return opts_.head_dim; }
  int64_t block_size() const { return opts_.block_size; }
  DType dtype() const { return opts_.dtype; }
  const Tensor& keys() const { return k_; }    // rows [0, size()) are valid
  const Tensor& values() const { return v_; }
  bool has_stats() const { return opts_.block_stats; }
  const BlockStats& stats() const { return stats_; }  // empty without block_stats
  // Bytes held: K and V storage for the full capacity plus the block statistics.
  size_t memory_bytes() const { return k_.nbytes() + v_.nbytes() + stats_.memory_bytes(); }

 private:
  KVCacheOptions opts_;
  Tensor k_, v_;
  BlockStats stats_;
  int64_t size_ = 0;
};

}  // namespace longctx
