// Validated shape of an attention call: sequences, heads, scale, and row access into [T, H, d].
#pragma once
#include <longctx/attention/common.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/gemm.hpp"

namespace longctx::attn {

struct Seq {
  int64_t q0, lq;  // first query row and query count
  int64_t k0, lk;  // first key row and key count
  int64_t offset() const { return lk - lq; }  // key position of query 0 (bottom-right alignment)
};

struct Problem {
  int64_t tq = 0, tk = 0;
  int hq = 0, hkv = 0, d = 0;
  int group = 1;  // query heads per KV head
  float scale = 1.0f;
  bool causal = true;
  int64_t window = 0;
  // Inputs of the tile products: bf16 when K and V are stored in bf16 (Q and P are then rounded to
  // bf16 per tile, the products summed in fp32: vdpbf16ps), fp32 otherwise.
  gemm::Precision products = gemm::Precision::f32;
  std::vector<Seq> seqs;

  int kv_head(int h) const { return h / group; }
  // Visible key positions [lo, hi) of the query at position p (seq-local), clipped to [0, lk).
  int64_t key_hi(int64_t p, int64_t lk) const { return causal ? std::min(p + 1, lk) : lk; }
  int64_t key_lo(int64_t p) const { return window > 0 ? std::max<int64_t>(0, p - window + 1) : 0; }
};

// The sequences of `varlen` (one spanning tq queries and tk keys when it is empty), unchecked:
// make_problem validates, the naive references take them as given.
std::vector<Seq> sequences_of(const Varlen& varlen, int64_t tq, int64_t tk);

// Checks that `cu` (named `name` in errors) delimits packed sequences of `total` rows: at least 2
// entries, from 0, non-decreasing, ending at total.
void check_cu(const char* who, const char* name, const std::vector<int64_t>& cu, int64_t total);
// Checks shapes, dtypes, head counts and cu_seqlens; `who` names the calling kernel in errors.
Problem make_problem(const char* who, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Varlen& varlen, const AttentionOptions& opts);
// Checks that a tensor is fp32 with the given shape (for saved outputs and incoming gradients).
void check_f32_shape(const char* who, const char* name, const Tensor& t, const std::vector<int64_t>& shape);

// The work item of the tiled kernels: rows [start, start + len) (sequence-local query or key
// rows) of one head (a query head, or a KV head for kernels that tile a whole GQA group) of one
// sequence.
struct Tile {
  int32_t seq, head;
  int64_t start, len;
};

// fp32 view of `n` consecutive token rows of one head of a [T, H, d] tensor, or (bf16 set, p null)
// the rows as stored in bf16, for the tile products only (tile_rows).
struct Rows {
  const float* p;
  int64_t ld;
  const uint16_t* bf16 = nullptr;
  const int64_t* index = nullptr;  // fp32 only: row i is stored row index[i] (gathered in place)
  const float* row(int64_t i) const { return p + (index ? index[i] : i) * ld; }
  // The rows from row i on.
  Rows from(int64_t i) const {
    if (index) return {p, ld, nullptr, index + i};
    return {p ? p + i * ld : nullptr, ld, bf16 ? bf16 + i * ld : nullptr};
  }
  // The rows as a GEMM input (their transpose when `trans`; indexed rows only untransposed).
  gemm::Operand operand(bool trans) const { return {p, bf16, ld, trans, index}; }
};
// A [T, H, d] tensor as stored: fp32 or bf16 (any Tensor converts), or int8 with one fp32 scale
// per (token, head) row, value = int8 * scale (a KV cache's int8 storage, attention/cache/
// kv_cache.hpp). Exactly one of f32 / bf16 / i8 is set. The scales are head-major,
// scale[h * scale_ld + t], so the tokens of one head have contiguous scales.
struct StoredRows {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  const int8_t* i8 = nullptr;
  const float* scale = nullptr;
  int64_t scale_ld = 0;
  int64_t heads = 0, d = 0;
  StoredRows() = default;
  StoredRows(const Tensor& x);  // NOLINT: implicit, every kernel taking rows takes a Tensor too
  int64_t ld() const { return heads * d; }  // elements between a head's consecutive tokens
  const float* scales_of(int h) const { return scale + h * scale_ld; }  // int8: head h's scale by token
};
// Row `flat` (token * H + head) as fp32 into dst[0, d).
void copy_row(const StoredRows& x, int64_t flat, float* dst);
// fp32 rows point straight into the tensor; bf16 and int8 rows are converted into `scratch`
// (n * d floats).
Rows load_rows(const StoredRows& x, int64_t t0, int64_t n, int h, float* scratch);
// As load_rows, for rows that only feed the tile products: bf16 rows under bf16 products are
// viewed as stored (the GEMM reads bf16 directly), not converted.
Rows tile_rows(const Problem& p, const StoredRows& x, int64_t t0, int64_t n, int h, float* scratch);
// Software prefetch of a d-long fp32 row: gathered rows sit far apart, where the hardware
// prefetchers do not follow.
inline void prefetch_row(const float* p, int64_t d) {
  for (int64_t c = 0; c < d; c += 16) __builtin_prefetch(p + c);
}
// Gathers rows of a [T, H, d] tensor by flat (token * H + head) index into a dense [n x d]
// fp32 buffer.
void gather_rows(const StoredRows& x, const int64_t* flat_rows, int64_t n, float* dst);
// Gathers token rows `tokens[i]` of head h into a dense [n x d] fp32 buffer.
void gather_rows(const StoredRows& x, const int64_t* tokens, int64_t n, int h, float* dst);

}  // namespace longctx::attn
