// Per-block key summaries shared by the block-sparse methods, in prefill and in the KV cache:
// the running key sum (MoBA's block mean = sum / block_size) and the elementwise key min/max
// (Quest, Tang et al., arXiv 2406.10774, section 3: max over the block of q . k <=
// sum_i max(q_i * min_i, q_i * max_i)).
// Blocks are `block_size` consecutive keys from the sequence start; fp32, per KV head.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace longctx {

class BlockStats {
 public:
  BlockStats() = default;
  BlockStats(int64_t block_size, int kv_heads, int head_dim);

  // Folds key `pos` (sequence position) of KV head g into its block; positions must arrive in
  // order (each head independently). The first key of a block starts its sum/min/max.
  void add_key(int64_t pos, int g, const float* key);
  void clear();

  int64_t block_size() const { return block_; }
  int64_t blocks() const { return blocks_; }  // blocks touched so far (the last may be partial)
  const float* sum(int64_t j, int g) const { return &sum_[index(j, g)]; }
  const float* key_min(int64_t j, int g) const { return &min_[index(j, g)]; }
  const float* key_max(int64_t j, int g) const { return &max_[index(j, g)]; }
  size_t memory_bytes() const { return (sum_.capacity() + min_.capacity() + max_.capacity()) * sizeof(float); }
  void reserve_blocks(int64_t blocks);

 private:
  size_t index(int64_t j, int g) const { return (size_t(j) * size_t(hkv_) + size_t(g)) * size_t(d_); }
  int64_t block_ = 1, blocks_ = 0;
  int hkv_ = 0, d_ = 0;
  std::vector<float> sum_, min_, max_;
};

// Quest upper bound of q . k over a block with elementwise key bounds [mn, mx].
float quest_bound(const float* q, const float* mn, const float* mx, int d);

}  // namespace longctx
