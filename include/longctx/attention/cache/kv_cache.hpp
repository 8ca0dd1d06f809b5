// KV cache of one attention layer for decode and chunked prefill: keys and values stored as
// [capacity, kv_heads, head_dim] in fp32, bf16 or int8 (the layout every kernel reads), plus the
// per-block key sums and min/max (BlockStats) kept up to date as tokens are appended, so
// MoBA's block means and Quest's bounds cost O(blocks * d) per query, not O(n * d).
// Block statistics are computed from the stored (bf16-rounded, or int8-dequantised) keys, so they
// equal what a prefill over the same stored keys computes.
//
// int8 (docs/DESIGN.md "int8 KV cache"): each (token, KV head) row of head_dim values is quantised
// symmetrically with its own fp32 scale, max |x| / 127. A row is quantised once, when it is
// appended, and never again; the scale costs 4 bytes per head_dim (3% at d = 128). The kernels
// read the int8 rows in place and apply the scale to the score and to the probability.
#pragma once
#include <longctx/attention/sparse/block_stats.hpp>
#include <longctx/core/fields.hpp>
#include <longctx/core/tensor.hpp>

#include <array>
#include <cstdint>
#include <vector>

namespace longctx {

// How a KV cache stores its rows.
enum class KVDType : uint8_t { f32, bf16, int8 };
template <>
struct EnumNames<KVDType> {
  static constexpr std::array<const char*, 3> names{"f32", "bf16", "int8"};
};

// Bytes of one (token, KV head) row of head_dim keys (or values), an int8 row's scale included.
double kv_row_bytes(KVDType dtype, int64_t head_dim);

// Symmetric absmax int8 of x[0, n): returns scale = max |x| / 127 and writes out[i] = x[i] / scale
// rounded to nearest (even), in [-127, 127], so |x[i] - out[i] * scale| <= scale / 2. An all-zero
// row has scale 0; a row with a NaN or infinity gets scale NaN (its values read back as NaN, as an
// fp32 cache would carry them).
float quantize_int8(const float* x, int64_t n, int8_t* out);

struct KVCacheOptions {
  int64_t capacity = 0;   // most tokens the cache can hold
  int kv_heads = 0;
  int head_dim = 0;
  int64_t block_size = 64;  // block of the statistics (MoBA and Quest block)
  KVDType dtype = KVDType::bf16;
  bool block_stats = true;  // keep them (AttentionSpec::stats_block_size() says who reads them)
};

class KVCache {
 public:
  explicit KVCache(const KVCacheOptions& opts);

  // Appends new tokens: k and v are [n, kv_heads, head_dim] (fp32 or bf16). Throws
  // std::invalid_argument on a shape mismatch or when size() + n would exceed the capacity.
  void append(const Tensor& k, const Tensor& v);
  void clear();
  // Evicts the given rows (distinct, any order; a KV-cache eviction policy such as cascade
  // pruning, cascade_pruning.hpp): each, from the highest, is overwritten by the current last row,
  // so the kept rows change order but keep their keys, values and positions(). Refused for a cache
  // with block statistics (its blocks are runs of consecutive positions).
  void remove_rows(std::vector<int64_t> rows);
  // The sequence position of each row: the number of tokens appended before it (rows [0, size())).
  const std::vector<int64_t>& positions() const { return positions_; }
  int64_t appended() const { return appended_; }  // tokens appended since the last clear()

  int64_t size() const { return size_; }
  int64_t capacity() const { return opts_.capacity; }
  int kv_heads() const { return opts_.kv_heads; }
  int head_dim() const { return opts_.head_dim; }
  int64_t block_size() const { return opts_.block_size; }
  KVDType dtype() const { return opts_.dtype; }
  // The stored rows, [capacity, kv_heads, head_dim], rows [0, size()) valid. An f32 or bf16 cache:
  // keys() / values() (they throw for int8). An int8 cache: keys_int8() / values_int8() in the same
  // layout, with their scales key_scales() / value_scales() [kv_heads, capacity] (head-major: a
  // head's tokens have contiguous scales); value = int8 * scale.
  const Tensor& keys() const;
  const Tensor& values() const;
  const int8_t* keys_int8() const { return k8_.codes.get(); }
  const int8_t* values_int8() const { return v8_.codes.get(); }
  const float* key_scales() const { return k8_.scale.data(); }
  const float* value_scales() const { return v8_.scale.data(); }
  // Rows [0, size()) as fp32 [size(), kv_heads, head_dim] in any dtype (int8 dequantised): the
  // values the kernels compute with (for references and tests; O(size) copies).
  Tensor keys_f32() const;
  Tensor values_f32() const;
  bool has_stats() const { return opts_.block_stats; }
  const BlockStats& stats() const { return stats_; }  // empty without block_stats
  // Bytes held: K and V storage for the full capacity (int8: with the scales), the rows' positions
  // and the block statistics.
  size_t memory_bytes() const;

 private:
  struct AlignedFree {
    void operator()(int8_t* p) const;
  };
  struct Int8Rows {
    std::unique_ptr<int8_t[], AlignedFree> codes;
    std::vector<float> scale;
  };
  KVCacheOptions opts_;
  Tensor k_, v_;      // f32 / bf16
  Int8Rows k8_, v8_;  // int8
  BlockStats stats_;
  int64_t size_ = 0, appended_ = 0;
  std::vector<int64_t> positions_;
};

}  // namespace longctx
