// NSA: argument checks, the compression of K/V, the gates and the gated sum (paper eq. 5),
// forward / backward over the three branches, and decode over the compressed-key cache.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/nsa/nsa.hpp>
#include <longctx/core/error.hpp>
#include <longctx/core/fields.hpp>

#include <cmath>
#include <random>

#include "attention/nsa/internal.hpp"
#include "attention/engine/tile_kernels.hpp"
#include "core/gemm.hpp"
#include "core/simd.hpp"

namespace longctx {

using namespace attn;
using namespace attn::nsa;

namespace attn::nsa {

void validate(const char* who, const NsaConfig& cfg, const NsaWeights<float>& w, const Problem& p, const Tensor& x) {
  cfg.validate(std::string(who) + ": ");
  for (const Seq& s : p.seqs)
    LONGCTX_CHECK(s.lq <= s.lk, who, ": a sequence has ", s.lq, " queries but only ", s.lk,
                  " keys (NSA queries are the last tokens of their sequence)");
  const int64_t G = int64_t(w.gate_b.size());
  LONGCTX_CHECK(G == 3 * int64_t(p.hq), who, ": gate_b must have 3 * heads = ", 3 * p.hq, " entries, got ", G);
  LONGCTX_CHECK(x.dtype() == DType::f32 && x.ndim() == 2 && x.dim(0) == p.tq && x.dim(1) > 0, who,
                ": x must be f32 [", p.tq, ", gate_in], got ", dtype_name(x.dtype()), " ", x.shape_str());
  LONGCTX_CHECK(int64_t(w.gate_w.size()) == G * x.dim(1), who, ": gate_w must have ", G, " x ", x.dim(1),
                " entries, got ", w.gate_w.size());
  if (cfg.compress == NsaCompress::mean) return;
  const int64_t L = cfg.block_len * p.d;
  for (const auto* c : {&w.ck, &w.cv}) {
    const int64_t H = int64_t(c->b1.size());
    LONGCTX_CHECK(H > 0 && int64_t(c->pos.size()) == L && int64_t(c->w1.size()) == H * L &&
                      int64_t(c->w2.size()) == p.d * H && int64_t(c->b2.size()) == p.d,
                  who, ": compressor weights must be pos [", cfg.block_len, ", ", p.d, "], w1 [hidden, ", L,
                  "], b1 [hidden], w2 [", p.d, ", hidden], b2 [", p.d, "]; got sizes ", c->pos.size(), ", ",
                  c->w1.size(), ", ", c->b1.size(), ", ", c->w2.size(), ", ", c->b2.size());
  }
}

}  // namespace attn::nsa

void NsaConfig::validate(const std::string& prefix) const {
  require(stride > 0, prefix, "stride", stride, "> 0");
  require(block_len > 0 && block_len % stride == 0, prefix, "block_len", block_len,
          concat("a positive multiple of stride (", stride, ")"));
  require(select_len > 0, prefix, "select_len", select_len, "> 0");
  require(local_blocks >= 0, prefix, "local_blocks", local_blocks, ">= 0");
  require(top_n >= 1 + local_blocks, prefix, "top_n", top_n,
          concat(">= 1 + local_blocks (", 1 + local_blocks, "): block 0 and the local blocks are always selected"));
  require(window > 0, prefix, "window", window, "> 0");
  if (compress == NsaCompress::mlp) require(hidden > 0, prefix, "hidden", hidden, "> 0");
}

namespace {

AttentionOptions window_options(const NsaConfig& cfg) {
  AttentionOptions o;
  o.softmax_scale = cfg.softmax_scale;
  o.window = cfg.window;
  return o;
}

Problem checked_problem(const char* who, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x,
                        const NsaWeights<float>& w, const NsaConfig& cfg, const Varlen& varlen) {
  AttentionOptions o;
  o.softmax_scale = cfg.softmax_scale;
  const Problem p = make_problem(who, q, k, v, varlen, o);
  validate(who, cfg, w, p, x);
  return p;
}

NsaCompressedKV compress_all(const Problem& p, const Tensor& k, const Tensor& v, const NsaWeights<float>& w,
                             const NsaConfig& cfg) {
  const Geometry geo(cfg);
  NsaCompressedKV c;
  c.cu.push_back(0);
  for (const Seq& s : p.seqs) c.cu.push_back(c.cu.back() + geo.compressed_blocks(s.lk));
  c.k = Tensor({c.cu.back(), p.hkv, p.d});
  c.v = Tensor({c.cu.back(), p.hkv, p.d});
  const int64_t ld = int64_t(p.hkv) * p.d;
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int g = 0; g < p.hkv; ++g) {
      const int64_t nc = c.cu[si + 1] - c.cu[si], off = (c.cu[si] * p.hkv + g) * p.d;
      compress_blocks(k, p.seqs[si].k0, g, 0, nc, w.ck, cfg, c.k.f32() + off, ld);
      compress_blocks(v, p.seqs[si].k0, g, 0, nc, w.cv, cfg, c.v.f32() + off, ld);
    }
  return c;
}

// The three branches, the gates and the gated sum, given the compressed keys.
void forward_branches(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x,
                      const NsaWeights<float>& w, const NsaConfig& cfg, const Varlen& varlen,
                      const CompressedView& view, NsaResult& r) {
  const Geometry geo(cfg);
  r.cmp = compressed_forward(p, q, view, geo, r.selected);
  r.slc = selected_forward(p, q, k, v, geo, r.selected);
  r.win = flash_attention_forward(q, k, v, varlen, window_options(cfg));

  const int64_t gate_in = x.dim(1), G = 3 * int64_t(p.hq);
  r.gates = Tensor({p.tq, p.hq, 3});
  float* gates = r.gates.f32();
  gemm::sgemm(false, true, p.tq, G, gate_in, 1.0f, x.f32(), gate_in, w.gate_w.data(), gate_in, 0.0f, gates, G);
  r.out = Tensor({p.tq, p.hq, p.d});
  const float* outs[3] = {r.cmp.out.f32(), r.slc.out.f32(), r.win.out.f32()};
#pragma omp parallel for schedule(static) if (p.tq > 16)
  for (int64_t t = 0; t < p.tq; ++t)
    for (int64_t h = 0; h < p.hq; ++h) {
      float* o = r.out.f32() + (t * p.hq + h) * p.d;
      for (int b = 0; b < 3; ++b) {
        float& g = gates[t * G + h * 3 + b];
        g = simd::sigmoid(g + w.gate_b[size_t(h * 3 + b)]);
        const float* ob = outs[b] + (t * p.hq + h) * p.d;
        for (int e = 0; e < p.d; ++e) o[e] += g * ob[e];
      }
    }
}

NsaCompressor<float> zeros_like(const NsaCompressor<float>& c) {
  auto z = [](const std::vector<float>& x) { return std::vector<float>(x.size(), 0.0f); };
  return {z(c.pos), z(c.w1), z(c.b1), z(c.w2), z(c.b2)};
}

}  // namespace

NsaWeights<float> nsa_init_weights(const NsaConfig& cfg, int hq, int head_dim, int gate_in, int hidden, uint64_t seed) {
  LONGCTX_CHECK(hq > 0 && head_dim > 0 && gate_in > 0, "nsa_init_weights: heads, head_dim and gate_in must be > 0, got ",
                hq, ", ", head_dim, ", ", gate_in);
  std::mt19937_64 rng(seed);
  auto normal = [&](size_t n, double sd) {
    std::normal_distribution<float> dist(0.0f, float(sd));
    std::vector<float> x(n);
    for (float& e : x) e = dist(rng);
    return x;
  };
  NsaWeights<float> w;
  if (cfg.compress == NsaCompress::mlp) {
    LONGCTX_CHECK(hidden > 0, "nsa_init_weights: hidden must be > 0 for the MLP compressor, got ", hidden);
    const size_t L = size_t(cfg.block_len) * head_dim;
    for (NsaCompressor<float>* c : {&w.ck, &w.cv})
      *c = {normal(L, 0.1), normal(size_t(hidden) * L, 1.0 / std::sqrt(double(L))), normal(size_t(hidden), 0.1),
            normal(size_t(head_dim) * hidden, 1.0 / std::sqrt(double(hidden))), std::vector<float>(size_t(head_dim))};
  }
  w.gate_w = normal(size_t(3) * hq * gate_in, 1.0 / std::sqrt(double(gate_in)));
  w.gate_b.assign(size_t(3) * hq, 0.0f);
  for (int h = 0; h < hq; ++h) w.gate_b[size_t(h * 3 + 2)] = 2.0f;  // favour the window branch
  return w;
}

NsaResult nsa_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const NsaWeights<float>& w,
                      const NsaConfig& cfg, const Varlen& varlen) {
  const Problem p = checked_problem("nsa_forward", q, k, v, x, w, cfg, varlen);
  NsaResult r;
  r.cfg = cfg;
  r.compressed = compress_all(p, k, v, w, cfg);
  forward_branches(p, q, k, v, x, w, cfg, varlen, {r.compressed.k.f32(), r.compressed.v.f32(), r.compressed.cu}, r);
  return r;
}

NsaGrads nsa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const NsaWeights<float>& w,
                      const NsaResult& fwd, const Tensor& dout, const Varlen& varlen) {
  const char* who = "nsa_backward";
  const NsaConfig& cfg = fwd.cfg;
  const Problem p = checked_problem(who, q, k, v, x, w, cfg, varlen);
  check_f32_shape(who, "dout", dout, {p.tq, p.hq, p.d});
  check_f32_shape(who, "gates", fwd.gates, {p.tq, p.hq, 3});
  for (const AttentionResult* b : {&fwd.cmp, &fwd.slc, &fwd.win}) {
    check_f32_shape(who, "branch out", b->out, {p.tq, p.hq, p.d});
    check_f32_shape(who, "branch lse", b->lse, {p.hq, p.tq});
  }
  LONGCTX_CHECK(fwd.selected.size() == size_t(p.tq * p.hkv * cfg.top_n), who, ": selected has ",
                fwd.selected.size(), " entries, expected ", p.tq * p.hkv * cfg.top_n);
  const Geometry geo(cfg);
  const int64_t G = 3 * int64_t(p.hq), gate_in = x.dim(1);

  // Gates: dg_b = dout . O_b, dlogit = dg g (1 - g); each branch sees dout scaled by its gate.
  Tensor dout_b[3] = {Tensor({p.tq, p.hq, p.d}), Tensor({p.tq, p.hq, p.d}), Tensor({p.tq, p.hq, p.d})};
  std::vector<float> dlogit(size_t(p.tq * G));
  const float* outs[3] = {fwd.cmp.out.f32(), fwd.slc.out.f32(), fwd.win.out.f32()};
#pragma omp parallel for schedule(static) if (p.tq > 16)
  for (int64_t t = 0; t < p.tq; ++t)
    for (int64_t h = 0; h < p.hq; ++h) {
      const int64_t row = (t * p.hq + h) * p.d;
      for (int b = 0; b < 3; ++b) {
        const float g = fwd.gates.f32()[(t * p.hq + h) * 3 + b];
        dlogit[size_t(t * G + h * 3 + b)] = simd::dot(dout.f32() + row, outs[b] + row, p.d) * g * (1.0f - g);
        float* db = dout_b[b].f32() + row;
        for (int e = 0; e < p.d; ++e) db[e] = g * dout.f32()[row + e];
      }
    }
  NsaGrads gr{Tensor({p.tq, p.hq, p.d}), {}, {}, Tensor({p.tq, gate_in}), {}};
  gr.dw = {zeros_like(w.ck), zeros_like(w.cv), std::vector<float>(w.gate_w.size()), std::vector<float>(size_t(G))};
  gemm::sgemm(true, false, G, gate_in, p.tq, 1.0f, dlogit.data(), G, x.f32(), gate_in, 0.0f, gr.dw.gate_w.data(),
              gate_in);
  gemm::sgemm(false, false, p.tq, gate_in, G, 1.0f, dlogit.data(), G, w.gate_w.data(), gate_in, 0.0f, gr.dx.f32(),
              gate_in);
  for (int64_t t = 0; t < p.tq; ++t)
    for (int64_t j = 0; j < G; ++j) gr.dw.gate_b[size_t(j)] += dlogit[size_t(t * G + j)];

  // Branches: compression (into dq, dkc, dvc), selection, window.
  const CompressedView view{fwd.compressed.k.f32(), fwd.compressed.v.f32(), fwd.compressed.cu};
  Tensor dkc({view.cu.back(), p.hkv, p.d}), dvc({view.cu.back(), p.hkv, p.d});
  compressed_backward(p, q, view, geo, fwd.cmp, dout_b[0], gr.dq, dkc.f32(), dvc.f32());
  AttentionGrads gs;
  selected_backward(p, q, k, v, geo, fwd.selected, fwd.slc, dout_b[1], gs);
  const AttentionGrads gw = flash_attention_backward(q, k, v, fwd.win, dout_b[2], varlen);
  gr.dk = std::move(gs.dk);
  gr.dv = std::move(gs.dv);
  simd::add_inplace(gr.dq.f32(), gs.dq.f32(), gr.dq.numel());
  simd::add_inplace(gr.dq.f32(), gw.dq.f32(), gr.dq.numel());
  simd::add_inplace(gr.dk.f32(), gw.dk.f32(), gr.dk.numel());
  simd::add_inplace(gr.dv.f32(), gw.dv.f32(), gr.dv.numel());

  // Through the compression MLP into dk, dv and its weights.
  const int64_t ld = int64_t(p.hkv) * p.d;
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int g = 0; g < p.hkv; ++g) {
      const int64_t nc = view.cu[si + 1] - view.cu[si], off = (view.cu[si] * p.hkv + g) * p.d;
      compress_blocks_backward(k, p.seqs[si].k0, g, 0, nc, w.ck, cfg, dkc.f32() + off, ld, gr.dk.f32(), gr.dw.ck);
      compress_blocks_backward(v, p.seqs[si].k0, g, 0, nc, w.cv, cfg, dvc.f32() + off, ld, gr.dv.f32(), gr.dw.cv);
    }
  return gr;
}

void NsaDecodeCache::update(const Tensor& k, const Tensor& v, const NsaWeights<float>& w, const NsaConfig& cfg) {
  LONGCTX_CHECK(k.ndim() == 3 && v.shape() == k.shape(), "NsaDecodeCache::update: k and v must be [len, kv_heads, d] "
                "of one shape, got ", k.shape_str(), " and ", v.shape_str());
  if (blocks == 0) hkv = int(k.dim(1)), head_dim = int(k.dim(2));
  LONGCTX_CHECK(k.dim(1) == hkv && k.dim(2) == head_dim, "NsaDecodeCache::update: cache holds ", hkv, " kv heads of ",
                head_dim, ", got k ", k.shape_str());
  const Geometry geo(cfg);
  const int64_t nc = geo.compressed_blocks(k.dim(0)), ld = int64_t(hkv) * head_dim;
  LONGCTX_CHECK(nc >= blocks, "NsaDecodeCache::update: cache has ", blocks, " compressed blocks but a prefix of ",
                k.dim(0), " tokens completes only ", nc);
  if (nc == blocks) return;
  this->k.resize(size_t(nc * ld));
  this->v.resize(size_t(nc * ld));
  for (int g = 0; g < hkv; ++g) {
    compress_blocks(k, 0, g, blocks, nc, w.ck, cfg, this->k.data() + blocks * ld + int64_t(g) * head_dim, ld);
    compress_blocks(v, 0, g, blocks, nc, w.cv, cfg, this->v.data() + blocks * ld + int64_t(g) * head_dim, ld);
  }
  blocks = nc;
}

Tensor nsa_decode_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& x, const NsaWeights<float>& w,
                       const NsaConfig& cfg, NsaDecodeCache& cache) {
  LONGCTX_CHECK(q.ndim() == 3 && q.dim(0) == 1, "nsa_decode_step: q must be [1, heads, d], got ", q.shape_str());
  const Varlen varlen = Varlen::from_lengths({1}, {k.ndim() == 3 ? k.dim(0) : 0});
  const Problem p = checked_problem("nsa_decode_step", q, k, v, x, w, cfg, varlen);
  cache.update(k, v, w, cfg);
  NsaResult r;
  forward_branches(p, q, k, v, x, w, cfg, varlen, {cache.k.data(), cache.v.data(), {0, cache.blocks}}, r);
  return std::move(r.out);
}

}  // namespace longctx
