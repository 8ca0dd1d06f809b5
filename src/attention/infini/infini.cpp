// Infini-attention: the local part is the dense flash kernel run with every segment as its own
// varlen sequence; the memory part is attention/infini/memory.hpp.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/infini/infini.hpp>
#include <longctx/core/error.hpp>
#include <longctx/core/fields.hpp>

#include <algorithm>
#include <cmath>

#include "attention/infini/memory.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx {

using namespace attn;

void InfiniOptions::validate(const std::string& prefix) const {
  require(segment_len > 0, prefix, "segment_len", segment_len, "> 0");
  require(std::isfinite(beta_init), prefix, "beta_init", beta_init, "finite");
}

namespace {

void check_f32(const char* who, const char* name, const Tensor& t) {
  LONGCTX_CHECK(t.dtype() == DType::f32, who, ": ", name, " must be f32, got ", dtype_name(t.dtype()));
}

void check_options(const char* who, const InfiniOptions& opts) {
  opts.validate(std::string(who) + ": ");
  LONGCTX_CHECK(opts.softmax_scale >= 0.0f && std::isfinite(opts.softmax_scale), who,
                ": softmax_scale must be finite and >= 0 (0 = 1/sqrt(head_dim)), got ", opts.softmax_scale);
}

void check_beta(const char* who, const std::vector<float>& beta, int64_t hq) {
  LONGCTX_CHECK(int64_t(beta.size()) == hq, who, ": beta has ", beta.size(), " entries but q has ", hq,
                " heads (one beta per query head)");
  for (size_t h = 0; h < beta.size(); ++h)
    LONGCTX_CHECK(std::isfinite(beta[h]), who, ": beta[", h, "] is not finite (", beta[h], ")");
}

// Validates the inputs and returns the problem of the memory q/k/v (same layout rules as flash).
Problem make_infini_problem(const char* who, const InfiniInputs& in, const std::vector<float>& beta,
                            const std::vector<int64_t>& cu_seqlens, const InfiniOptions& opts) {
  check_options(who, opts);
  check_f32(who, "q", in.q);
  check_f32(who, "k", in.k);
  check_f32(who, "v", in.v);
  for (auto [t, ref, name] : {std::tuple{in.q_local, &in.q, "q_local"}, {in.k_local, &in.k, "k_local"}})
    if (t) {
      check_f32(who, name, *t);
      LONGCTX_CHECK(t->shape() == ref->shape(), who, ": ", name, " shape ", t->shape_str(), " differs from ",
                    name[0], " shape ", ref->shape_str());
    }
  LONGCTX_CHECK(in.q.ndim() == 3 && in.k.ndim() == 3 && in.q.dim(0) == in.k.dim(0), who,
                ": q and k must be [tokens, heads, head_dim] with the same tokens, got q ", in.q.shape_str(),
                " and k ", in.k.shape_str());
  AttentionOptions ao;
  ao.softmax_scale = opts.softmax_scale;
  const Problem p = make_problem(who, in.q, in.k, in.v, Varlen{cu_seqlens, cu_seqlens}, ao);
  check_beta(who, beta, p.hq);
  return p;
}

// Every segment of every sequence as one varlen sequence (segments start at sequence starts).
Varlen segment_varlen(const Problem& p, int64_t segment_len) {
  std::vector<int64_t> cu{0};
  for (const Seq& s : p.seqs)
    for (int64_t a = 0; a < s.lq; a += segment_len) cu.push_back(s.q0 + std::min(a + segment_len, s.lq));
  if (cu.size() == 1) cu.push_back(0);
  return {cu, cu};
}

AttentionOptions local_options(const InfiniOptions& opts) {
  AttentionOptions ao;
  ao.causal = true;
  ao.softmax_scale = opts.softmax_scale;
  return ao;
}

std::vector<float> gates(const std::vector<float>& beta) {
  std::vector<float> g;
  for (float b : beta) g.push_back(simd::sigmoid(b));
  return g;
}

}  // namespace

InfiniResult infini_forward(const InfiniInputs& in, const std::vector<float>& beta,
                            const std::vector<int64_t>& cu_seqlens, const InfiniOptions& opts) {
  const char* who = "infini_forward";
  const Problem p = make_infini_problem(who, in, beta, cu_seqlens, opts);
  const infini::MemoryPass mp{p, in.q, in.k, in.v, gates(beta), opts.segment_len, opts.update};
  const int64_t nseg = mp.total_segments();
  InfiniResult r{opts, Tensor({p.tq, p.hq, p.d}),
                 flash_attention_forward(in.q_local ? *in.q_local : in.q, in.k_local ? *in.k_local : in.k, in.v,
                                         segment_varlen(p, opts.segment_len), local_options(opts)),
                 Tensor({nseg, p.hkv, p.d, p.d}), Tensor({nseg, p.hkv, p.d})};
  infini::memory_forward(mp, r.local.out, r.out.f32(), r.memory.f32(), r.norm.f32());
  return r;
}

InfiniGrads infini_backward(const InfiniInputs& in, const std::vector<float>& beta, const InfiniResult& fwd,
                            const Tensor& dout, const std::vector<int64_t>& cu_seqlens) {
  const InfiniOptions& opts = fwd.opts;
  const char* who = "infini_backward";
  const Problem p = make_infini_problem(who, in, beta, cu_seqlens, opts);
  const infini::MemoryPass mp{p, in.q, in.k, in.v, gates(beta), opts.segment_len, opts.update};
  const int64_t nseg = mp.total_segments();
  check_f32_shape(who, "dout", dout, {p.tq, p.hq, p.d});
  check_f32_shape(who, "fwd.out", fwd.out, {p.tq, p.hq, p.d});
  check_f32_shape(who, "fwd.memory", fwd.memory, {nseg, p.hkv, p.d, p.d});
  check_f32_shape(who, "fwd.norm", fwd.norm, {nseg, p.hkv, p.d});

  // local part: flash backward with dA_dot = (1 - gate_h) dout
  Tensor dout_local({p.tq, p.hq, p.d});
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < p.tq; ++t)
    for (int h = 0; h < p.hq; ++h) {
      const float s = 1.0f - mp.gate[size_t(h)];
      const float* g = dout.f32() + (t * p.hq + h) * p.d;
      float* o = dout_local.f32() + (t * p.hq + h) * p.d;
      for (int c = 0; c < p.d; ++c) o[c] = s * g[c];
    }
  AttentionGrads lg = flash_attention_backward(in.q_local ? *in.q_local : in.q, in.k_local ? *in.k_local : in.k, in.v,
                                               fwd.local, dout_local, segment_varlen(p, opts.segment_len));
  InfiniGrads g;
  g.dv = std::move(lg.dv);
  if (in.q_local) {
    g.dq_local = std::move(lg.dq);
    g.dq = Tensor({p.tq, p.hq, p.d});
  } else {
    g.dq = std::move(lg.dq);
  }
  if (in.k_local) {
    g.dk_local = std::move(lg.dk);
    g.dk = Tensor({p.tk, p.hkv, p.d});
  } else {
    g.dk = std::move(lg.dk);
  }
  // memory part, added after the local part (a fixed order)
  g.dbeta = infini::memory_backward(mp, fwd.local.out, dout, fwd.memory.f32(), fwd.norm.f32(), g.dq.f32(),
                                    g.dk.f32(), g.dv.f32());
  return g;
}

InfiniStream::InfiniStream(int hq, int hkv, int head_dim, std::vector<float> beta, const InfiniOptions& opts)
    : hq_(hq), hkv_(hkv), d_(head_dim), beta_(std::move(beta)), opts_(opts) {
  const char* who = "InfiniStream";
  check_options(who, opts);
  LONGCTX_CHECK(hq > 0 && hkv > 0 && hq % hkv == 0, who, ": query heads (", hq,
                ") must be a positive multiple of kv heads (", hkv, ")");
  LONGCTX_CHECK(head_dim > 0, who, ": head_dim must be > 0, got ", head_dim);
  check_beta(who, beta_, hq);
  memory_ = Tensor({hkv, head_dim, head_dim});
  norm_ = Tensor({hkv, head_dim});
  for (Tensor* t : {&seg_k_, &seg_k_local_, &seg_v_}) *t = Tensor({opts.segment_len, hkv, head_dim});
}

namespace {

// Rows [t0, t0 + n) of a [T, H, d] tensor as a new tensor.
Tensor slice_rows(const Tensor& x, int64_t t0, int64_t n) {
  Tensor s({n, x.dim(1), x.dim(2)});
  const int64_t row = x.dim(1) * x.dim(2);
  std::copy_n(x.f32() + t0 * row, n * row, s.f32());
  return s;
}

}  // namespace

Tensor InfiniStream::feed(const InfiniInputs& in) {
  const char* who = "InfiniStream::feed";
  check_f32(who, "q", in.q);
  LONGCTX_CHECK(in.q.ndim() == 3 && in.q.dim(1) == hq_ && in.q.dim(2) == d_, who, ": q must be [tokens, ", hq_,
                ", ", d_, "], got ", in.q.shape_str());
  const int64_t n = in.q.dim(0);
  for (auto [t, name, heads] : {std::tuple{&in.k, "k", hkv_}, {&in.v, "v", hkv_}, {in.q_local, "q_local", hq_},
                                {in.k_local, "k_local", hkv_}})
    if (t) {
      check_f32(who, name, *t);
      LONGCTX_CHECK(t->ndim() == 3 && t->dim(0) == n && t->dim(1) == heads && t->dim(2) == d_, who, ": ", name,
                    " must be [", n, ", ", heads, ", ", d_, "], got ", t->shape_str());
    }

  Tensor out({n, hq_, d_});
  const int64_t N = opts_.segment_len, row_kv = int64_t(hkv_) * d_, ld_q = int64_t(hq_) * d_;
  const Tensor& q_loc = in.q_local ? *in.q_local : in.q;
  const Tensor& k_loc = in.k_local ? *in.k_local : in.k;
  const std::vector<float> gate = gates(beta_);
  const int group = hq_ / hkv_;
  for (int64_t pos = 0; pos < n;) {
    const int64_t take = std::min(n - pos, N - filled_);
    std::copy_n(in.k.f32() + pos * row_kv, take * row_kv, seg_k_.f32() + filled_ * row_kv);
    std::copy_n(k_loc.f32() + pos * row_kv, take * row_kv, seg_k_local_.f32() + filled_ * row_kv);
    std::copy_n(in.v.f32() + pos * row_kv, take * row_kv, seg_v_.f32() + filled_ * row_kv);
    filled_ += take;
    // local part: the new queries are the last `take` of the segment's `filled_` keys (bottom-right
    // causal); the segment buffer's unused rows form a second sequence without queries.
    const Tensor q_piece = take == n ? Tensor() : slice_rows(q_loc, pos, take);
    const AttentionResult local =
        flash_attention_forward(take == n ? q_loc : q_piece, seg_k_local_, seg_v_,
                                Varlen{{0, take, take}, {0, filled_, N}}, local_options(opts_));
    const bool segment_done = filled_ == N;
    parallel::run(
        hkv_, parallel::Schedule::dynamic,
        [&](int) { return infini::MemoryScratch(segment_done ? N : take, d_, false); },
        [&](int64_t g, infini::MemoryScratch& ws) {
          float* M = memory_.f32() + g * d_ * d_;
          float* z = norm_.f32() + g * d_;
          for (int h = int(g) * group; h < (int(g) + 1) * group; ++h)
            infini::read_and_mix(load_rows(in.q, pos, take, h, nullptr), take, d_, M, z, gate[size_t(h)],
                                 load_rows(local.out, 0, take, h, nullptr), out.f32() + pos * ld_q + h * d_, ld_q,
                                 ws);
          if (segment_done)
            infini::write_memory(load_rows(seg_k_, 0, N, int(g), nullptr), load_rows(seg_v_, 0, N, int(g), nullptr),
                                 N, d_, opts_.update, M, z, ws);
        });
    if (segment_done) filled_ = 0;
    pos += take;
    tokens_ += take;
  }
  return out;
}

}  // namespace longctx
