// A KV cache's keys and values as the attention kernels read them (engine/varlen.hpp StoredRows):
// the fp32 / bf16 tensors, or the int8 rows with their head-major scales.
#pragma once
#include <longctx/attention/cache/kv_cache.hpp>

#include "attention/engine/varlen.hpp"

namespace longctx::attn {

inline StoredRows int8_rows(const KVCache& c, const int8_t* codes, const float* scale) {
  StoredRows r;
  r.i8 = codes, r.scale = scale, r.scale_ld = c.capacity(), r.heads = c.kv_heads(), r.d = c.head_dim();
  return r;
}
inline StoredRows stored_keys(const KVCache& c) {
  return c.dtype() == KVDType::int8 ? int8_rows(c, c.keys_int8(), c.key_scales()) : StoredRows(c.keys());
}
inline StoredRows stored_values(const KVCache& c) {
  return c.dtype() == KVDType::int8 ? int8_rows(c, c.values_int8(), c.value_scales()) : StoredRows(c.values());
}

}  // namespace longctx::attn
