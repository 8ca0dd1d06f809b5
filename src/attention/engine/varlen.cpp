#include "attention/engine/varlen.hpp"

#include <longctx/core/error.hpp>

#include <cmath>

#include "core/simd.hpp"

namespace longctx {

Varlen Varlen::from_lengths(const std::vector<int64_t>& q_lens, const std::vector<int64_t>& k_lens) {
  LONGCTX_CHECK(q_lens.size() == k_lens.size(), "Varlen: ", q_lens.size(), " query lengths but ",
                k_lens.size(), " key lengths");
  Varlen v;
  v.cu_q.push_back(0);
  v.cu_k.push_back(0);
  for (size_t i = 0; i < q_lens.size(); ++i) {
    LONGCTX_CHECK(q_lens[i] >= 0 && k_lens[i] >= 0, "Varlen: negative length in sequence ", i);
    v.cu_q.push_back(v.cu_q.back() + q_lens[i]);
    v.cu_k.push_back(v.cu_k.back() + k_lens[i]);
  }
  return v;
}

namespace attn {

void check_cu(const char* who, const char* name, const std::vector<int64_t>& cu, int64_t total) {
  LONGCTX_CHECK(cu.size() >= 2, who, ": ", name, " needs at least 2 entries, got ", cu.size());
  LONGCTX_CHECK(cu.front() == 0, who, ": ", name, "[0] must be 0, got ", cu.front());
  for (size_t i = 1; i < cu.size(); ++i)
    LONGCTX_CHECK(cu[i] >= cu[i - 1], who, ": ", name, " must be non-decreasing, but ", name, "[", i,
                  "] = ", cu[i], " < ", name, "[", i - 1, "] = ", cu[i - 1]);
  LONGCTX_CHECK(cu.back() == total, who, ": ", name, " ends at ", cu.back(), " but the tensor has ",
                total, " rows");
}

std::vector<Seq> sequences_of(const Varlen& varlen, int64_t tq, int64_t tk) {
  if (varlen.cu_q.empty()) return {{0, tq, 0, tk}};
  std::vector<Seq> out;
  for (size_t i = 0; i + 1 < varlen.cu_q.size(); ++i)
    out.push_back({varlen.cu_q[i], varlen.cu_q[i + 1] - varlen.cu_q[i], varlen.cu_k[i], varlen.cu_k[i + 1] - varlen.cu_k[i]});
  return out;
}

Problem make_problem(const char* who, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Varlen& varlen, const AttentionOptions& opts) {
  LONGCTX_CHECK(q.ndim() == 3, who, ": q must be [tokens, heads, head_dim], got ", q.shape_str());
  LONGCTX_CHECK(k.ndim() == 3, who, ": k must be [tokens, kv_heads, head_dim], got ", k.shape_str());
  LONGCTX_CHECK(v.shape() == k.shape(), who, ": v shape ", v.shape_str(), " differs from k shape ",
                k.shape_str());
  LONGCTX_CHECK(q.dim(2) == k.dim(2), who, ": head_dim of q (", q.dim(2), ") differs from k (", k.dim(2), ")");
  LONGCTX_CHECK(q.dim(2) > 0, who, ": head_dim must be > 0");
  LONGCTX_CHECK(q.dim(1) > 0 && k.dim(1) > 0, who, ": head counts must be > 0, got q heads ", q.dim(1),
                ", kv heads ", k.dim(1));
  LONGCTX_CHECK(q.dim(1) % k.dim(1) == 0, who, ": query heads (", q.dim(1),
                ") must be a multiple of kv heads (", k.dim(1), ")");
  LONGCTX_CHECK(k.dtype() == v.dtype(), who, ": k is ", dtype_name(k.dtype()), " but v is ",
                dtype_name(v.dtype()));
  LONGCTX_CHECK(opts.softmax_scale >= 0.0f && std::isfinite(opts.softmax_scale), who,
                ": softmax_scale must be finite and >= 0 (0 = 1/sqrt(head_dim)), got ", opts.softmax_scale);
  LONGCTX_CHECK(opts.window >= 0, who, ": window must be >= 0 (0 = none), got ", opts.window);
  LONGCTX_CHECK(opts.window == 0 || opts.causal, who, ": a sliding window needs causal attention");

  Problem p;
  p.tq = q.dim(0);
  p.tk = k.dim(0);
  p.hq = int(q.dim(1));
  p.hkv = int(k.dim(1));
  p.d = int(q.dim(2));
  p.group = p.hq / p.hkv;
  p.scale = opts.softmax_scale > 0.0f ? opts.softmax_scale : 1.0f / std::sqrt(float(p.d));
  p.causal = opts.causal;
  p.window = opts.window;
  p.products = k.dtype() == DType::bf16 ? gemm::Precision::bf16 : gemm::Precision::f32;

  LONGCTX_CHECK(varlen.cu_q.empty() == varlen.cu_k.empty(), who,
                ": give both cu_seqlens_q and cu_seqlens_k, or neither");
  if (!varlen.cu_q.empty()) {
    check_cu(who, "cu_seqlens_q", varlen.cu_q, p.tq);
    check_cu(who, "cu_seqlens_k", varlen.cu_k, p.tk);
    LONGCTX_CHECK(varlen.cu_q.size() == varlen.cu_k.size(), who, ": cu_seqlens_q has ",
                  varlen.cu_q.size(), " entries but cu_seqlens_k has ", varlen.cu_k.size());
  }
  p.seqs = sequences_of(varlen, p.tq, p.tk);
  return p;
}

void check_f32_shape(const char* who, const char* name, const Tensor& t, const std::vector<int64_t>& shape) {
  LONGCTX_CHECK(t.dtype() == DType::f32, who, ": ", name, " must be f32, got ", dtype_name(t.dtype()));
  LONGCTX_CHECK(t.shape() == shape, who, ": ", name, " must have shape ", shape_str(shape), ", got ", t.shape_str());
}

StoredRows::StoredRows(const Tensor& x) : heads(x.dim(1)), d(x.dim(2)) {
  if (x.dtype() == DType::bf16)
    bf16 = x.bf16();
  else
    f32 = x.f32();
}

void copy_row(const StoredRows& x, int64_t flat, float* dst) {
  if (x.f32) {
    std::copy_n(x.f32 + flat * x.d, x.d, dst);
  } else if (x.bf16) {
    simd::bf16_to_f32(x.bf16 + flat * x.d, dst, x.d);
  } else {
    const int8_t* src = x.i8 + flat * x.d;
    const float s = x.scales_of(int(flat % x.heads))[flat / x.heads];
    for (int64_t c = 0; c < x.d; ++c) dst[c] = float(src[c]) * s;
  }
}

Rows load_rows(const StoredRows& x, int64_t t0, int64_t n, int h, float* scratch) {
  if (x.f32) return {x.f32 + (t0 * x.heads + h) * x.d, x.ld()};
  for (int64_t i = 0; i < n; ++i) copy_row(x, (t0 + i) * x.heads + h, scratch + i * x.d);
  return {scratch, x.d};
}

Rows tile_rows(const Problem& p, const StoredRows& x, int64_t t0, int64_t n, int h, float* scratch) {
  if (x.bf16 && p.products == gemm::Precision::bf16) return {nullptr, x.ld(), x.bf16 + (t0 * x.heads + h) * x.d};
  return load_rows(x, t0, n, h, scratch);
}

void gather_rows(const StoredRows& x, const int64_t* flat_rows, int64_t n, float* dst) {
  constexpr int64_t kAhead = 4;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n && x.f32) prefetch_row(x.f32 + flat_rows[i + kAhead] * x.d, x.d);
    copy_row(x, flat_rows[i], dst + i * x.d);
  }
}

void gather_rows(const StoredRows& x, const int64_t* tokens, int64_t n, int h, float* dst) {
  for (int64_t i = 0; i < n; ++i) copy_row(x, tokens[i] * x.heads + h, dst + i * x.d);
}

}  // namespace attn
}  // namespace longctx
