// NSA: the fast kernels against the naive reference (each branch, the selection, the gated sum,
// all gradients), the reference against finite differences, the conventions of docs/DESIGN.md
// ("NSA"), decode against prefill, bad input.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/nsa/nsa.hpp>
#include <longctx/core/error.hpp>
#include <longctx/attention/nsa/reference.hpp>

#include <cstdio>
#include <sstream>

#include "helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vec;

// Small geometry so a few dozen tokens exercise every rule: l = 4, stride 2, l' = 8, n = 3.
NsaConfig small_config(NsaCompress compress = NsaCompress::mlp) {
  NsaConfig c;
  c.block_len = 4;
  c.stride = 2;
  c.select_len = 8;
  c.top_n = 3;
  c.local_blocks = 1;
  c.window = 5;
  c.compress = compress;
  return c;
}

struct NsaCase {
  std::vector<int64_t> q_lens, k_lens;
  int hq, hkv, d;
  NsaConfig cfg;
  DType dtype = DType::f32;
};

struct Inputs {
  Tensor q, k, v, x, dout;
  Varlen varlen;
  NsaWeights<float> w;
  reference::Shape shape;
};

constexpr int kGateIn = 3, kHidden = 5;

Inputs make_inputs(const NsaCase& c, uint64_t seed = 1) {
  int64_t tq = 0, tk = 0;
  for (size_t i = 0; i < c.q_lens.size(); ++i) tq += c.q_lens[i], tk += c.k_lens[i];
  Inputs in{random_tensor({tq, c.hq, c.d}, seed, 1.0f, c.dtype),
            random_tensor({tk, c.hkv, c.d}, seed + 1, 1.0f, c.dtype),
            random_tensor({tk, c.hkv, c.d}, seed + 2, 1.0f, c.dtype),
            random_tensor({tq, kGateIn}, seed + 3),
            random_tensor({tq, c.hq, c.d}, seed + 4),
            c.q_lens.size() == 1 && c.q_lens == c.k_lens ? Varlen{} : Varlen::from_lengths(c.q_lens, c.k_lens),
            nsa_init_weights(c.cfg, c.hq, c.d, kGateIn, kHidden, seed + 5),
            {tq, tk, c.hq, c.hkv, c.d}};
  // Spread the gates so every branch carries weight in the gradients.
  for (size_t i = 0; i < in.w.gate_b.size(); ++i) in.w.gate_b[i] = 0.5f * float(int(i % 3) - 1);
  return in;
}

template <class T>
double vec_error(const std::vector<float>& a, const std::vector<T>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return num / std::max(den, 1.0);
}

std::string name_of(const NsaCase& c) {
  std::string s = "q";
  for (auto l : c.q_lens) s.append("_").append(std::to_string(l));
  s += "_k";
  for (auto l : c.k_lens) s.append("_").append(std::to_string(l));
  return s + "_h" + std::to_string(c.hq) + "x" + std::to_string(c.hkv) + "_d" + std::to_string(c.d) + "_l" +
         std::to_string(c.cfg.block_len) + (c.cfg.compress == NsaCompress::mean ? "_mean" : "_mlp") + "_" +
         dtype_name(c.dtype);
}

void PrintTo(const NsaCase& c, std::ostream* os) { *os << name_of(c); }

class NsaVsReference : public ::testing::TestWithParam<NsaCase> {};

TEST_P(NsaVsReference, ForwardSelectionAndBackwardMatch) {
  const NsaCase& c = GetParam();
  const Inputs in = make_inputs(c);
  const NsaResult r = nsa_forward(in.q, in.k, in.v, in.x, in.w, c.cfg, in.varlen);
  const NsaGrads g = nsa_backward(in.q, in.k, in.v, in.x, in.w, r, in.dout, in.varlen);

  const auto qd = to_vec<double>(in.q), kd = to_vec<double>(in.k), vd = to_vec<double>(in.v),
             xd = to_vec<double>(in.x);
  const NsaWeights<double> wd = nsa_cast_weights<double>(in.w);
  const auto f = reference::nsa_forward(in.shape, qd, kd, vd, xd, kGateIn, wd, c.cfg, in.varlen);
  const auto rg = reference::nsa_backward(in.shape, qd, kd, vd, xd, kGateIn, wd, c.cfg, in.varlen, f,
                                          to_vec<double>(in.dout));

  EXPECT_EQ(r.selected, f.selected) << "selection differs from the brute-force recomputation";
  const double tol = testing::products_tol(in.k, 2e-5);
  EXPECT_LT(rel_error(r.compressed.k, f.kc), tol);
  EXPECT_LT(rel_error(r.compressed.v, f.vc), tol);
  EXPECT_LT(rel_error(r.cmp.out, f.out_c), tol);
  EXPECT_LT(rel_error(r.cmp.lse, f.lse_c), tol);
  EXPECT_LT(rel_error(r.slc.out, f.out_s), tol);
  EXPECT_LT(rel_error(r.slc.lse, f.lse_s), tol);
  EXPECT_LT(rel_error(r.win.out, f.out_w), tol);
  EXPECT_LT(rel_error(r.gates, f.gates), tol);
  EXPECT_LT(rel_error(r.out, f.out), tol);

  const double gtol = 5 * tol;
  EXPECT_LT(rel_error(g.dq, rg.dq), gtol);
  EXPECT_LT(rel_error(g.dk, rg.dk), gtol);
  EXPECT_LT(rel_error(g.dv, rg.dv), gtol);
  EXPECT_LT(rel_error(g.dx, rg.dx), gtol);
  EXPECT_LT(vec_error(g.dw.gate_w, rg.dw.gate_w), gtol);
  EXPECT_LT(vec_error(g.dw.gate_b, rg.dw.gate_b), gtol);
  for (auto [a, b] : {std::pair{&g.dw.ck, &rg.dw.ck}, {&g.dw.cv, &rg.dw.cv}}) {
    EXPECT_LT(vec_error(a->pos, b->pos), gtol);
    EXPECT_LT(vec_error(a->w1, b->w1), gtol);
    EXPECT_LT(vec_error(a->b1, b->b1), gtol);
    EXPECT_LT(vec_error(a->w2, b->w2), gtol);
    EXPECT_LT(vec_error(a->b2, b->b2), gtol);
  }
  for (const Tensor* t : {&r.out, &g.dq, &g.dk, &g.dv})
    for (int64_t i = 0; i < t->numel(); ++i) ASSERT_TRUE(std::isfinite(t->at(i))) << "non-finite value at " << i;
}

NsaConfig paper_config() {
  NsaConfig c;  // l = 32, d = 16, l' = 64, n = 16, w = 512, with a smaller window to matter here
  c.window = 100;
  return c;
}

NsaConfig with_n(NsaConfig c, int64_t n, int64_t local) {
  c.top_n = n;
  c.local_blocks = local;
  return c;
}

const NsaCase kCases[] = {
    {{70}, {70}, 4, 2, 8, small_config()},                                       // GQA 4/2, one sequence
    {{1, 37, 90}, {1, 37, 90}, 2, 1, 8, small_config(NsaCompress::mean)},        // varlen, one-token sequence
    {{5, 20}, {40, 20}, 4, 1, 8, small_config()},                                // q_len < kv_len: bottom-right
    {{64}, {64}, 2, 2, 16, with_n(small_config(), 4, 2)},                        // no GQA, 2 local blocks
    {{3}, {3}, 2, 1, 8, small_config()},                                         // no compressed block completes
    {{50}, {50}, 2, 1, 8, small_config(), DType::bf16},                          // bf16 storage
    {{300}, {300}, 4, 1, 16, paper_config()},                                    // the paper's geometry
};

INSTANTIATE_TEST_SUITE_P(Cases, NsaVsReference, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return name_of(info.param); });

// The reference's backward against central finite differences of its forward, in double, for
// every input and parameter; the selection is held fixed (no gradient through top-n).
void gradcheck(const NsaConfig& cfg, const std::vector<int64_t>& lens) {
  const NsaCase c{lens, lens, 2, 1, 3, cfg};
  const Inputs in = make_inputs(c, 11);
  auto q = to_vec<double>(in.q), k = to_vec<double>(in.k), v = to_vec<double>(in.v), x = to_vec<double>(in.x);
  NsaWeights<double> w = nsa_cast_weights<double>(in.w);
  const auto dout = to_vec<double>(in.dout);
  const auto f0 = reference::nsa_forward(in.shape, q, k, v, x, kGateIn, w, cfg, in.varlen);
  auto g = reference::nsa_backward(in.shape, q, k, v, x, kGateIn, w, cfg, in.varlen, f0, dout);
  auto loss = [&] {
    const auto f = reference::nsa_forward(in.shape, q, k, v, x, kGateIn, w, cfg, in.varlen, &f0.selected);
    double l = 0;
    for (size_t i = 0; i < f.out.size(); ++i) l += f.out[i] * dout[i];
    return l;
  };
  std::vector<testing::FdCheck> params{
      {&q, &g.dq, "q"}, {&k, &g.dk, "k"}, {&v, &g.dv, "v"}, {&x, &g.dx, "x"},
      {&w.gate_w, &g.dw.gate_w, "gate_w"}, {&w.gate_b, &g.dw.gate_b, "gate_b"}};
  for (auto [c, dc, name] : {std::tuple{&w.ck, &g.dw.ck, "k"}, {&w.cv, &g.dw.cv, "v"}}) {
    const std::string n = std::string("compressor_") + name;
    params.insert(params.end(), {{&c->pos, &dc->pos, n + ".pos"}, {&c->w1, &dc->w1, n + ".w1"},
                                 {&c->b1, &dc->b1, n + ".b1"}, {&c->w2, &dc->w2, n + ".w2"},
                                 {&c->b2, &dc->b2, n + ".b2"}});
  }
  testing::expect_gradients_match_differences(params, loss, 1e-6, 1e-7);
}

TEST(NsaReferenceGradcheck, MlpCompressorVarlen) {
  NsaConfig cfg = small_config();
  cfg.select_len = 3;  // 5 blocks in 13 tokens: a real top-3 choice
  gradcheck(cfg, {13, 6});
}

TEST(NsaReferenceGradcheck, MeanCompressor) { gradcheck(small_config(NsaCompress::mean), {12}); }

// Hand-computed overlap weighting: l = 4, stride 2, l' = 6, q = 0 (uniform compression
// probabilities). At t = 7 compressed blocks [0,4), [2,6), [4,8) are visible with p = 1/3 each;
// selection block 0 = [0,6) gets 1/3 + 1/3 + 1/3 * 2/4, block 1 = [6,12) gets 1/3 * 2/4; summed
// over the 2 heads of the group.
TEST(NsaConfigNames, CompressFromNameAcceptsMlpAndMeanOnly) {
  EXPECT_EQ(enum_from_name<NsaCompress>("mlp", "compress"), NsaCompress::mlp);
  EXPECT_EQ(enum_from_name<NsaCompress>("mean", "compress"), NsaCompress::mean);
  testing::expect_error([] { enum_from_name<NsaCompress>("Mean", "compress"); }, "compress must be 'mlp' or 'mean', got 'Mean'");
}

TEST(NsaSelection, OverlapWeightedImportanceHandComputed) {
  NsaConfig cfg = small_config();
  cfg.select_len = 6;
  const NsaCase c{{8}, {8}, 2, 1, 4, cfg};
  Inputs in = make_inputs(c);
  in.q.fill(0.0f);
  const auto f = reference::nsa_forward(in.shape, to_vec<double>(in.q), to_vec<double>(in.k), to_vec<double>(in.v),
                                        to_vec<double>(in.x), kGateIn, nsa_cast_weights<double>(in.w), cfg, in.varlen);
  ASSERT_EQ(f.max_blocks, 2);
  EXPECT_NEAR(f.importance[7 * 2 + 0], 2 * (5.0 / 6), 1e-12);
  EXPECT_NEAR(f.importance[7 * 2 + 1], 2 * (1.0 / 6), 1e-12);
  // t = 4: only [0,4) is visible (p = 1), inside block 0.
  EXPECT_NEAR(f.importance[4 * 2 + 0], 2.0, 1e-12);
  EXPECT_EQ(f.importance[4 * 2 + 1], 0.0);
  // t = 2: nothing visible yet.
  EXPECT_EQ(f.importance[2 * 2 + 0], 0.0);
}

// When n * l' covers the whole prefix, the selection branch is full causal attention.
TEST(NsaSelection, CoveringSelectionEqualsFullAttention) {
  NsaConfig cfg = small_config();
  cfg.top_n = 10;  // 10 blocks of 8 >= 75 tokens
  const NsaCase c{{75, 20}, {75, 20}, 4, 2, 8, cfg};
  const Inputs in = make_inputs(c);
  const NsaResult r = nsa_forward(in.q, in.k, in.v, in.x, in.w, cfg, in.varlen);
  const AttentionResult full = flash_attention_forward(in.q, in.k, in.v, in.varlen);
  EXPECT_LT(rel_error(r.slc.out, to_vec<double>(full.out)), 1e-5);
  EXPECT_LT(rel_error(r.slc.lse, to_vec<double>(full.lse)), 1e-5);
}

// The heads of a GQA group share one selection; it follows the group's summed importance, so
// permuting the query heads inside a group leaves it unchanged.
TEST(NsaSelection, GqaGroupSharesSelection) {
  const NsaCase c{{120}, {120}, 4, 2, 8, small_config()};
  const Inputs in = make_inputs(c);
  const NsaResult r = nsa_forward(in.q, in.k, in.v, in.x, in.w, c.cfg);
  Tensor swapped = in.q.clone();
  for (int64_t t = 0; t < 120; ++t)
    for (int e = 0; e < 8; ++e) std::swap(swapped.f32()[(t * 4 + 0) * 8 + e], swapped.f32()[(t * 4 + 1) * 8 + e]);
  const NsaResult r2 = nsa_forward(swapped, in.k, in.v, in.x, in.w, c.cfg);
  EXPECT_EQ(r.selected, r2.selected);
  EXPECT_EQ(r.selected.size(), size_t(120 * 2 * 3));
}

TEST(NsaDeterminism, SameBitsTwice) {
  const NsaCase c{{90, 33}, {90, 33}, 4, 1, 8, small_config()};
  const Inputs in = make_inputs(c);
  const NsaResult a = nsa_forward(in.q, in.k, in.v, in.x, in.w, c.cfg, in.varlen);
  const NsaResult b = nsa_forward(in.q, in.k, in.v, in.x, in.w, c.cfg, in.varlen);
  const NsaGrads ga = nsa_backward(in.q, in.k, in.v, in.x, in.w, a, in.dout, in.varlen);
  const NsaGrads gb = nsa_backward(in.q, in.k, in.v, in.x, in.w, b, in.dout, in.varlen);
  EXPECT_TRUE(testing::bitwise_equal(a.out, b.out));
  EXPECT_TRUE(testing::bitwise_equal(ga.dq, gb.dq));
  EXPECT_TRUE(testing::bitwise_equal(ga.dk, gb.dk));
  EXPECT_TRUE(testing::bitwise_equal(ga.dv, gb.dv));
  EXPECT_EQ(ga.dw.ck.w1, gb.dw.ck.w1);
}

Tensor first_rows(const Tensor& t, int64_t n) {
  std::vector<int64_t> shape = t.shape();
  shape[0] = n;
  Tensor out(shape);
  std::copy_n(t.f32(), out.numel(), out.f32());
  return out;
}

Tensor row_of(const Tensor& t, int64_t i) {
  std::vector<int64_t> shape = t.shape();
  shape[0] = 1;
  Tensor out(shape);
  const int64_t n = out.numel();
  std::copy_n(t.f32() + i * n, n, out.f32());
  return out;
}

// Decoding token by token over the growing prefix equals the prefill's rows.
TEST(NsaDecode, EqualsPrefillRows) {
  for (NsaCompress kind : {NsaCompress::mlp, NsaCompress::mean}) {
    const NsaCase c{{45}, {45}, 4, 2, 8, small_config(kind)};
    const Inputs in = make_inputs(c);
    const NsaResult full = nsa_forward(in.q, in.k, in.v, in.x, in.w, c.cfg);
    NsaDecodeCache cache;
    for (int64_t t = 0; t < 45; ++t) {
      const Tensor out = nsa_decode_step(row_of(in.q, t), first_rows(in.k, t + 1), first_rows(in.v, t + 1),
                                         row_of(in.x, t), in.w, c.cfg, cache);
      EXPECT_EQ(cache.blocks, t + 1 >= 4 ? (t + 1 - 4) / 2 + 1 : 0);
      const Tensor want = row_of(full.out, t);
      EXPECT_LT(rel_error(out, to_vec<double>(want)), 1e-5) << "token " << t;
    }
  }
}

// The gates start biased toward the sliding-window branch.
TEST(NsaGates, InitialBiasFavoursWindow) {
  const NsaCase c{{40}, {40}, 2, 1, 8, small_config()};
  const Inputs in = make_inputs(c);
  const NsaWeights<float> w = nsa_init_weights(c.cfg, 2, 8, kGateIn, kHidden, 3);
  const NsaResult r = nsa_forward(in.q, in.k, in.v, Tensor({40, kGateIn}), w, c.cfg);  // x = 0: gates = sigmoid(bias)
  for (int64_t i = 0; i < 40 * 2; ++i) {
    EXPECT_FLOAT_EQ(r.gates.f32()[i * 3 + 0], 0.5f);
    EXPECT_FLOAT_EQ(r.gates.f32()[i * 3 + 1], 0.5f);
    EXPECT_NEAR(r.gates.f32()[i * 3 + 2], 1.0 / (1.0 + std::exp(-2.0)), 1e-6);
  }
}

void expect_message(const std::function<void()>& fn, const std::string& part) {
  try {
    fn();
    FAIL() << "no exception, expected one mentioning: " << part;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(NsaBadInput, ClearErrors) {
  const NsaCase c{{20}, {20}, 2, 1, 8, small_config()};
  const Inputs in = make_inputs(c);
  auto run = [&](NsaConfig cfg) { return [&in, cfg] { nsa_forward(in.q, in.k, in.v, in.x, in.w, cfg); }; };
  NsaConfig l_bad = small_config();
  l_bad.block_len = 5;
  expect_message(run(l_bad), "nsa_forward: block_len must be a positive multiple of stride (2), got 5");
  NsaConfig n0 = small_config();
  n0.top_n = 0;
  expect_message(run(n0), "top_n must be >= 1 + local_blocks (2)");
  expect_message(run(n0), "got 0");
  NsaConfig w0 = small_config();
  w0.window = 0;
  expect_message(run(w0), "window must be > 0, got 0");
  const Tensor bad_x({19, kGateIn});
  expect_message([&] { nsa_forward(in.q, in.k, in.v, bad_x, in.w, c.cfg); }, "x must be f32 [20, gate_in]");
  NsaWeights<float> bad_w = in.w;
  bad_w.ck.w1.pop_back();
  expect_message([&] { nsa_forward(in.q, in.k, in.v, in.x, bad_w, c.cfg); }, "compressor weights must be");
  NsaDecodeCache cache;
  cache.update(in.k, in.v, in.w, c.cfg);
  expect_message([&] { cache.update(first_rows(in.k, 5), first_rows(in.v, 5), in.w, c.cfg); },
                 "cache has 9 compressed blocks but a prefix of 5 tokens completes only 1");
  const Tensor short_k({10, 1, 8}), short_v({10, 1, 8});
  expect_message([&] { nsa_forward(in.q, short_k, short_v, in.x, in.w, c.cfg, Varlen::from_lengths({20}, {10})); },
                 "a sequence has 20 queries but only 10 keys");
}

// `longctx bench attention --methods nsa` runs in every mode and prints its row.
TEST(NsaCli, BenchAttentionSmoke) {
  for (const char* mode : {"fwd", "fwdbwd", "decode"}) {
    const std::string cmd = std::string(LONGCTX_CLI_PATH) +
                            " bench attention --methods dense,nsa --lengths 300 --heads 4 --kv-heads 2 --head-dim 16"
                            " --nsa-window 64 --reps 1 --min-seconds 0 --threads 2 --mode " + mode + " 2>&1";
    FILE* pipe = popen(cmd.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string out;
    char buf[512];
    while (fgets(buf, sizeof buf, pipe)) out += buf;
    EXPECT_EQ(pclose(pipe), 0) << out;
    std::istringstream lines(out);
    bool row = false;
    for (std::string line; std::getline(lines, line);)
      row |= line.find(" nsa ") != std::string::npos && line.find(" 300 ") != std::string::npos;
    EXPECT_TRUE(row) << out;
  }
}

}  // namespace
}  // namespace longctx
