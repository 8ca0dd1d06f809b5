// Decode and chunked prefill over the KV cache equal the rows of the same method's prefill over
// the whole sequence, step by step across block boundaries: dense, MoBA (against
// moba_attention_forward, selection included), top-k (blocks and tokens), threshold (both rules).
#include <longctx/attention/cache/decode.hpp>
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/moba/moba.hpp>

#include "sparse_helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rows_of;

constexpr int kHq = 4, kHkv = 2, kD = 16;
constexpr int64_t kN = 70, kB = 16;  // 4 full blocks and a partial one
// An int8 cache against fp32 arithmetic on its dequantised rows: the AVX-512 kernel takes integer
// dot products, rounding q and the probabilities to int16 (1/65534 of their row's largest), so
// logits move by up to ~1e-5 of their size and outputs by up to ~1e-4, two orders below what the
// int8 rounding of the rows themselves does. LSE tolerances scale with 1 + |LSE|.
constexpr double kInt8Tol = 3e-4;

struct Prefill {
  Tensor out, lse;
  // visited blocks/tokens of (head, row), sorted (MoBA: from its selection)
  std::function<std::vector<int32_t>(int, int64_t)> visited;
};

// Max |a - b| over row `row` (all heads) of prefill out vs step result row `r_row`.
double row_error(const Tensor& full, int64_t row, const Tensor& step, int64_t r_row) {
  double e = 0;
  for (int64_t i = 0; i < kHq * kD; ++i)
    e = std::max(e, std::abs(double(full.f32()[row * kHq * kD + i]) - double(step.f32()[r_row * kHq * kD + i])));
  return e;
}

std::vector<int32_t> visited_of(const SparseResult& r, int h, int64_t row, int64_t tq) {
  const size_t i = size_t(h) * size_t(tq) + size_t(row);
  std::vector<int32_t> v(r.visited.begin() + r.row_offset[i], r.visited.begin() + r.row_offset[i + 1]);
  std::sort(v.begin(), v.end());
  return v;
}

// Feeds the sequence k/v into a cache of `dtype` in chunks of `chunk` tokens and checks every
// chunk's rows against `full`, a prefill over what the cache stores.
void check_against_prefill(const Tensor& q, const Tensor& k, const Tensor& v, KVDType dtype, const Prefill& full,
                           const AttentionSpec& spec, int64_t chunk) {
  KVCache cache({kN, kHkv, kD, kB, dtype});
  for (int64_t t = 0; t < kN; t += chunk) {
    const int64_t n = std::min(chunk, kN - t);
    cache.append(rows_of(k, t, n), rows_of(v, t, n));
    const SparseResult r = attention_over_cache(rows_of(q, t, n), cache, spec);
    // bf16 prefill runs bf16 tile products; decode sums fp32 over the same bf16 cache. int8 decode
    // applies a row's scale to its score instead of to its elements.
    const double tol = dtype == KVDType::bf16 ? 3e-3 : dtype == KVDType::int8 ? kInt8Tol : 2e-6;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_LT(row_error(full.out, t + i, r.out, i), tol) << "token " << t + i;
      for (int h = 0; h < kHq; ++h) {
        const double lse = full.lse.f32()[h * kN + t + i];
        ASSERT_NEAR(lse, r.lse.f32()[h * n + i], tol * (1 + std::abs(lse))) << "token " << t + i;
        if (spec.kind() != AttentionKind::full)
          ASSERT_EQ(full.visited(h, t + i), visited_of(r, h, i, n)) << "token " << t + i << " head " << h;
      }
    }
  }
}

struct DecodeCase {
  AttentionKind method;
  bool token_level;
  StopRule rule;
  KVDType dtype;
};
void PrintTo(const DecodeCase& c, std::ostream* os) {
  *os << enum_name(c.method) << (c.token_level ? "_tokens_" : "_") << enum_name(c.rule) << "_" << enum_name(c.dtype);
}

class DecodeVsPrefill : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeVsPrefill, EveryStepAndChunkMatchesThePrefillRow) {
  const DecodeCase& c = GetParam();
  const testing::Structured src = testing::structured_source(kN, kHq, kHkv, kD, kB, 1, 2.0f, 5);
  // The prefill runs over what the cache stores: bf16 rows, or int8 rows read back as fp32 (the
  // int8 cache quantises the fp32 rows appended to it the same way).
  const DType in = c.dtype == KVDType::bf16 ? DType::bf16 : DType::f32;
  const Tensor q = src.q.to(in), k = src.k.to(in), v = src.v.to(in);
  const Tensor ks = c.dtype == KVDType::int8 ? testing::stored(k, c.dtype) : k.clone();
  const Tensor vs = c.dtype == KVDType::int8 ? testing::stored(v, c.dtype) : v.clone();
  const int64_t top_k = c.token_level ? 9 : 3;
  const float tau = 0.9f;
  const AttentionSpec spec = c.method == AttentionKind::moba        ? AttentionSpec(MobaOptions{kB, top_k})
                             : c.method == AttentionKind::topk      ? AttentionSpec(TopkOptions{kB, top_k, c.token_level})
                             : c.method == AttentionKind::threshold ? AttentionSpec(ThresholdOptions{kB, tau, c.rule})
                                                                    : AttentionSpec{};
  Prefill full;
  if (c.method == AttentionKind::full) {
    AttentionResult r = flash_attention_forward(q, ks, vs);
    full = {std::move(r.out), std::move(r.lse), {}};
  } else if (c.method == AttentionKind::moba) {
    auto r = std::make_shared<MobaResult>(moba_attention_forward(q, ks, vs, {}, {kB, top_k, 0.0f}));
    full = {r->out.clone(), r->lse.clone(), [r](int h, int64_t row) {
              std::vector<int32_t> sel;
              for (int64_t s = 0; s < r->slots; ++s)
                if (int32_t b = r->selected[size_t((h * kN + row) * r->slots + s)]; b >= 0) sel.push_back(b);
              std::sort(sel.begin(), sel.end());
              return sel;
            }};
  } else {
    auto r = std::make_shared<SparseResult>(
        c.method == AttentionKind::topk
            ? topk_attention_forward(q, ks, vs, {}, {kB, top_k, c.token_level, 0.0f})
            : threshold_attention_forward(q, ks, vs, {}, {kB, tau, c.rule, 0.0f}));
    full = {r->out.clone(), r->lse.clone(), [r](int h, int64_t row) { return visited_of(*r, h, row, kN); }};
  }
  check_against_prefill(q, k, v, c.dtype, full, spec, 1);   // decode, token by token
  check_against_prefill(q, k, v, c.dtype, full, spec, 13);  // chunked prefill
}

INSTANTIATE_TEST_SUITE_P(
    Methods, DecodeVsPrefill,
    ::testing::Values(DecodeCase{AttentionKind::full, false, StopRule::bound, KVDType::f32},
                      DecodeCase{AttentionKind::full, false, StopRule::bound, KVDType::bf16},
                      DecodeCase{AttentionKind::full, false, StopRule::bound, KVDType::int8},
                      DecodeCase{AttentionKind::moba, false, StopRule::bound, KVDType::f32},
                      DecodeCase{AttentionKind::moba, false, StopRule::bound, KVDType::bf16},
                      DecodeCase{AttentionKind::moba, false, StopRule::bound, KVDType::int8},
                      DecodeCase{AttentionKind::topk, false, StopRule::bound, KVDType::bf16},
                      DecodeCase{AttentionKind::topk, false, StopRule::bound, KVDType::int8},
                      DecodeCase{AttentionKind::topk, true, StopRule::bound, KVDType::f32},
                      DecodeCase{AttentionKind::topk, true, StopRule::bound, KVDType::int8},
                      DecodeCase{AttentionKind::threshold, false, StopRule::bound, KVDType::f32},
                      DecodeCase{AttentionKind::threshold, false, StopRule::bound, KVDType::int8},
                      DecodeCase{AttentionKind::threshold, false, StopRule::heuristic, KVDType::bf16},
                      DecodeCase{AttentionKind::threshold, false, StopRule::heuristic, KVDType::int8}));

// The rows a cache stores, as fp32 (bf16-rounded or int8-dequantised).
struct StoredF32 {
  Tensor k, v;
  explicit StoredF32(const KVCache& c) : k(c.keys_f32()), v(c.values_f32()) {}
};

// Softmax of query row t (position pos) of head h over the cached keys `sees(key)` accepts, in
// double from the stored rows: out [d] and lse.
template <class Sees>
std::pair<std::vector<double>, double> naive_row(const Tensor& q, int64_t t, int h, const StoredF32& cache, Sees sees) {
  const int d = int(cache.k.dim(2)), hkv = int(cache.k.dim(1)), g = h / (int(q.dim(1)) / hkv);
  const Tensor &k = cache.k, &v = cache.v, qf = q.to(DType::f32);
  const float* qr = qf.f32() + (t * q.dim(1) + h) * d;
  std::vector<double> score;
  std::vector<int64_t> keys;
  double mx = -INFINITY;
  for (int64_t j = 0; j < k.dim(0); ++j) {
    if (!sees(j)) continue;
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += double(qr[c]) * k.f32()[(j * hkv + g) * d + c];
    score.push_back(dot / std::sqrt(double(d)));
    keys.push_back(j);
    mx = std::max(mx, score.back());
  }
  std::vector<double> out(size_t(d), 0.0);
  double sum = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const double p = std::exp(score[i] - mx);
    sum += p;
    for (int c = 0; c < d; ++c) out[size_t(c)] += p * v.f32()[(keys[i] * hkv + g) * d + c];
  }
  for (double& o : out) o /= sum;
  return {out, mx + std::log(sum)};
}

// Dense decode over a cache long enough to be split across threads (LSE merge of the parts),
// with head dims on the AVX-512 path (16 | d) and off it, GQA ratios 4, 3 and 1, q_len 1 and 5,
// every storage.
TEST(Decode, DenseOverALongCacheMatchesTheNaiveSoftmax) {
  struct Shape {
    int hq, hkv, d;
    KVDType dtype;
  };
  for (const Shape& sh : {Shape{8, 2, 128, KVDType::bf16}, Shape{3, 1, 24, KVDType::f32}, Shape{4, 4, 16, KVDType::bf16},
                          Shape{8, 2, 128, KVDType::int8}, Shape{3, 1, 24, KVDType::int8}}) {
    const int64_t n = 9001;
    KVCache cache({n, sh.hkv, sh.d, 64, sh.dtype});
    cache.append(random_tensor({n, sh.hkv, sh.d}, 11), random_tensor({n, sh.hkv, sh.d}, 12));
    const StoredF32 stored(cache);
    for (const int64_t q_len : {1, 5}) {
      const Tensor q = random_tensor({q_len, sh.hq, sh.d}, 13, 2.0f);
      const SparseResult r = attention_over_cache(q, cache, {});
      for (int64_t t = 0; t < q_len; ++t)
        for (int h = 0; h < sh.hq; ++h) {
          const int64_t pos = n - q_len + t;
          const auto [out, lse] = naive_row(q, t, h, stored, [&](int64_t j) { return j <= pos; });
          const double tol = sh.dtype == KVDType::int8 ? kInt8Tol : 2e-5;
          for (int c = 0; c < sh.d; ++c)
            ASSERT_NEAR(r.out.f32()[(t * sh.hq + h) * sh.d + c], out[size_t(c)], tol) << "d " << sh.d << " head " << h;
          ASSERT_NEAR(r.lse.f32()[h * q_len + t], lse, tol * (1 + std::abs(lse))) << "d " << sh.d << " head " << h;
        }
    }
  }
}

// Group-shared selection: every head of a GQA group visits the same blocks, the top_k - 1 full
// past blocks by the gate score summed over the group's heads (checked against naive double
// scores up to float rounding), and its output is the exact softmax over its own block (causal)
// plus those blocks. Decode and q_len 5 chunks, cache length not a multiple of B, GQA 4 (bf16
// cache) and 3 (int8).
TEST(Decode, GroupSharedSelectionAttendsTheGroupsTopBlocks) {
  const int64_t n = 203, B = 16;
  for (const AttentionKind method : {AttentionKind::moba, AttentionKind::topk})
    for (const auto [hq, hkv] : {std::pair{8, 2}, std::pair{3, 1}}) {
      const int d = 32;
      KVCache cache({n, hkv, d, B, hq == 8 ? KVDType::bf16 : KVDType::int8});
      cache.append(random_tensor({n, hkv, d}, 21), random_tensor({n, hkv, d}, 22));
      const StoredF32 stored(cache);
      const Tensor& keys = stored.k;
      const int64_t top_k = 4;
      const AttentionSpec o = method == AttentionKind::moba ? AttentionSpec(MobaOptions{B, top_k, 0.0f, true})
                                                            : AttentionSpec(TopkOptions{B, top_k, false, 0.0f, true});
      for (const int64_t q_len : {1, 5}) {
        const Tensor q = random_tensor({q_len, hq, d}, 23, 2.0f);
        const Tensor qf = q.to(DType::f32);
        const SparseResult r = attention_over_cache(q, cache, o);
        const int group = hq / hkv;
        for (int64_t t = 0; t < q_len; ++t) {
          const int64_t pos = n - q_len + t, own = pos / B;
          for (int h = 0; h < hq; ++h) {
            const std::vector<int32_t> vis = visited_of(r, h, t, q_len);
            ASSERT_EQ(vis, visited_of(r, h / group * group, t, q_len)) << "heads of a group select alike";
            ASSERT_EQ(int64_t(vis.size()), std::min<int64_t>(top_k - 1, own));
            // naive group score of block j
            auto score = [&](int64_t j) {
              double sum = 0;
              for (int e = h / group * group; e < (h / group + 1) * group; ++e) {
                const float* qe = qf.f32() + (t * hq + e) * d;
                for (int c = 0; c < d; ++c) {
                  double mean = 0, mn = INFINITY, mx = -INFINITY;
                  for (int64_t i = j * B; i < (j + 1) * B; ++i) {
                    const double x = keys.f32()[(i * hkv + h / group) * d + c];
                    mean += x / B, mn = std::min(mn, x), mx = std::max(mx, x);
                  }
                  sum += method == AttentionKind::moba ? qe[c] * mean : std::max(qe[c] * mn, qe[c] * mx);
                }
              }
              return sum;
            };
            double worst_in = INFINITY, best_out = -INFINITY;
            for (int64_t j = 0; j < own; ++j) {
              const double sc = score(j);
              if (std::count(vis.begin(), vis.end(), int32_t(j))) worst_in = std::min(worst_in, sc);
              else best_out = std::max(best_out, sc);
            }
            ASSERT_GE(worst_in, best_out - 1e-4);
            const auto [out, lse] = naive_row(q, t, h, stored, [&](int64_t j) {
              return (j >= own * B && j <= pos) || std::count(vis.begin(), vis.end(), int32_t(j / B));
            });
            const double tol = cache.dtype() == KVDType::int8 ? kInt8Tol : 2e-5;
            for (int c = 0; c < d; ++c) ASSERT_NEAR(r.out.f32()[(t * hq + h) * d + c], out[size_t(c)], tol);
            ASSERT_NEAR(r.lse.f32()[h * q_len + t], lse, tol * (1 + std::abs(lse)));
          }
        }
      }
    }
}

// One query head per KV head: group selection is per-head selection. top_k * B >= n: dense.
TEST(Decode, GroupSharedSelectionEdgeCases) {
  const int64_t n = 77, B = 8;
  KVCache cache({n, 2, 16, B, KVDType::f32});
  cache.append(random_tensor({n, 2, 16}, 31), random_tensor({n, 2, 16}, 32));
  const Tensor q = random_tensor({3, 2, 16}, 33, 2.0f), q4 = random_tensor({3, 4, 16}, 34, 2.0f);
  for (const AttentionKind method : {AttentionKind::moba, AttentionKind::topk}) {
    auto spec = [&](int64_t top_k, bool group = false) {
      return method == AttentionKind::moba ? AttentionSpec(MobaOptions{B, top_k, 0.0f, group})
                                           : AttentionSpec(TopkOptions{B, top_k, false, 0.0f, group});
    };
    const SparseResult a = attention_over_cache(q, cache, spec(3)), b = attention_over_cache(q, cache, spec(3, true));
    EXPECT_EQ(a.visited, b.visited);
    for (int64_t i = 0; i < a.out.numel(); ++i) ASSERT_NEAR(a.out.f32()[i], b.out.f32()[i], 1e-6);
    const SparseResult all = attention_over_cache(q4, cache, spec(n / B + 1, true)),
                       dense = attention_over_cache(q4, cache, {});
    for (int64_t i = 0; i < all.out.numel(); ++i) ASSERT_NEAR(all.out.f32()[i], dense.out.f32()[i], 2e-6);
  }
  EXPECT_THROW(attention_over_cache(q, cache, TopkOptions{B, 3, true, 0.0f, true}), std::invalid_argument);  // token level
}

// Every method over an int8 cache equals the same method over an fp32 cache holding the int8
// cache's dequantised rows (itself tested against the naive references above): same blocks or
// tokens visited, outputs and LSE within kInt8Tol. Head dims on the
// AVX-512 path (64, 128) and off it (40), GQA 3, 4 and 1, a partial last block, q_len 1 and 7.
TEST(Decode, Int8EqualsDecodeOverTheDequantisedCache) {
  struct Shape {
    int hq, hkv, d;
  };
  const int64_t n = 211, B = 16;
  const std::vector<AttentionSpec> specs{AttentionSpec{},
                                         MobaOptions{B, 4},
                                         MobaOptions{B, 4, 0.0f, true},
                                         TopkOptions{B, 4},
                                         TopkOptions{B, 4, false, 0.0f, true},
                                         TopkOptions{B, 20, true},
                                         ThresholdOptions{B, 0.9f, StopRule::bound},
                                         ThresholdOptions{B, 0.9f, StopRule::heuristic}};
  for (const Shape& sh : {Shape{6, 2, 40}, Shape{8, 2, 128}, Shape{4, 4, 64}}) {
    const testing::Structured src = testing::structured_source(n, sh.hq, sh.hkv, sh.d, B, 1, 2.0f, 41);
    KVCache i8({n, sh.hkv, sh.d, B, KVDType::int8}), f32({n, sh.hkv, sh.d, B, KVDType::f32});
    i8.append(src.k, src.v);
    f32.append(i8.keys_f32(), i8.values_f32());
    for (const int64_t q_len : {1, 7}) {
      const Tensor q = rows_of(src.q, n - q_len, q_len);
      for (const AttentionSpec& spec : specs) {
        const SparseResult a = attention_over_cache(q, i8, spec), b = attention_over_cache(q, f32, spec);
        const std::string what = std::string(spec.name()) + " d " + std::to_string(sh.d) + " q_len " +
                                 std::to_string(q_len);
        EXPECT_EQ(a.visited, b.visited) << what;
        EXPECT_EQ(a.row_offset, b.row_offset) << what;
        for (int64_t i = 0; i < a.out.numel(); ++i) ASSERT_NEAR(a.out.f32()[i], b.out.f32()[i], kInt8Tol) << what;
        for (int64_t i = 0; i < a.lse.numel(); ++i)
          ASSERT_NEAR(a.lse.f32()[i], b.lse.f32()[i], kInt8Tol * (1 + std::abs(b.lse.f32()[i]))) << what;
      }
    }
  }
}

// The int8 cache's error against an fp32 cache of the same rows: half a quantisation step per
// element (rows of max |x| ~ 3.5 at d = 128: a step of ~1/36) moves each logit and each value a
// little; on this source, whose attention is peaked (queries aimed at two key clusters), the
// output moves by ~2% (relative, Frobenius) for dense and MoBA: bounded here at 3%.
TEST(Decode, Int8ErrorAgainstFp32IsBounded) {
  const int64_t n = 3000, B = 64;
  const int hq = 8, hkv = 2, d = 128;
  const testing::Structured src = testing::structured_source(n, hq, hkv, d, B, 2, 3.0f, 51);
  KVCache i8({n, hkv, d, B, KVDType::int8}), f32({n, hkv, d, B, KVDType::f32});
  i8.append(src.k, src.v);
  f32.append(src.k, src.v);
  const Tensor q = rows_of(src.q, n - 1, 1);
  for (const AttentionSpec& spec : {AttentionSpec{}, AttentionSpec(MobaOptions{B, 8})}) {
    const SparseResult a = attention_over_cache(q, i8, spec), b = attention_over_cache(q, f32, spec);
    double num = 0, den = 0;
    for (int64_t i = 0; i < a.out.numel(); ++i) {
      num += std::pow(double(a.out.f32()[i]) - b.out.f32()[i], 2);
      den += std::pow(double(b.out.f32()[i]), 2);
    }
    EXPECT_LT(std::sqrt(num / den), 0.03) << spec.name();
    EXPECT_GT(std::sqrt(num / den), 0.0) << spec.name() << ": int8 rows are not exact";
  }
}

TEST(Decode, BadInputThrowsClearly) {
  KVCache cache({16, 2, 8, 4, KVDType::f32});
  cache.append(random_tensor({4, 2, 8}, 1), random_tensor({4, 2, 8}, 2));
  auto msg = [&](const Tensor& q, const AttentionSpec& o) {
    try {
      attention_over_cache(q, cache, o);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no throw");
  };
  const Tensor q = random_tensor({1, 4, 8}, 3);
  EXPECT_NE(msg(random_tensor({1, 3, 8}, 3), {}).find("query heads (3) must be a positive multiple of the cache's kv_heads (2)"),
            std::string::npos);
  EXPECT_NE(msg(random_tensor({5, 4, 8}, 3), {}).find("q_len must be in [1, cache size 4], got 5"), std::string::npos);
  EXPECT_NE(msg(random_tensor({1, 4, 4}, 3), {}).find("q head_dim 4 differs from the cache's 8"), std::string::npos);
  EXPECT_NE(msg(q, TopkOptions{4, 0}).find("top_k must be > 0, got 0"), std::string::npos);
  EXPECT_NE(msg(q, ThresholdOptions{4, 0.0f}).find("tau must be in (0, 1], got 0"), std::string::npos);
  EXPECT_THROW(attention_kind_from_name("sparse"), std::invalid_argument);
}

}  // namespace
}  // namespace longctx
