// Cascade token pruning over per-layer KV caches (CascadePruner + attention_over_cache) against the
// naive reference that evicts by the same rule: outputs, kept tokens and importance at every step
// of a multi-layer decode (prompt chunks, then single tokens), awkward shapes and GQA; the cascade
// property (nested token sets, a pruned token stays pruned in the later layers); the attention
// mass; option and misuse errors.
#include <longctx/attention/cache/cascade_pruning.hpp>
#include <longctx/attention/cache/decode.hpp>
#include <longctx/attention/cache/reference.hpp>

#include <algorithm>
#include <cmath>

#include "sparse_helpers.hpp"

namespace longctx {
namespace {

using testing::message_of;
using testing::random_tensor;
using testing::rows_of;
using testing::to_vec;

struct Shape {
  int hq, hkv, d;
};

// Feeds `total` tokens through `layers` layers of random q/k/v (per layer), steps of `chunks`
// then single tokens, into both the caches + pruner and the reference; compares everything after
// every step and checks the cascade property.
void run_against_reference(const Shape& sh, const CascadePruningOptions& o, int layers, int64_t total,
                           const std::vector<int64_t>& chunks, uint64_t seed) {
  std::vector<Tensor> q, k, v;
  for (int l = 0; l < layers; ++l) {
    q.push_back(random_tensor({total, sh.hq, sh.d}, seed + 10 * l, 2.0f));
    k.push_back(random_tensor({total, sh.hkv, sh.d}, seed + 10 * l + 1));
    v.push_back(random_tensor({total, sh.hkv, sh.d}, seed + 10 * l + 2));
  }
  CascadePruner pruner(o, layers);
  std::vector<KVCache> caches;
  for (int l = 0; l < layers; ++l)
    caches.emplace_back(KVCacheOptions{pruner.cache_capacity(l, total), sh.hkv, sh.d, 64, KVDType::f32, false});
  std::vector<KVCache*> ptrs;
  for (KVCache& c : caches) ptrs.push_back(&c);
  reference::CascadeDecode ref(o, layers, sh.hq, sh.hkv, sh.d);
  const float scale = 1.0f / std::sqrt(float(sh.d));
  int64_t pruned_somewhere = 0;
  for (int64_t t = 0, step = 0; t < total; ++step) {
    const int64_t n = std::min(step < int64_t(chunks.size()) ? chunks[size_t(step)] : 1, total - t);
    for (int l = 0; l < layers; ++l) {
      const Tensor qs = rows_of(q[size_t(l)], t, n), ks = rows_of(k[size_t(l)], t, n), vs = rows_of(v[size_t(l)], t, n);
      caches[size_t(l)].append(ks, vs);
      const SparseResult r = attention_over_cache(qs, caches[size_t(l)], {});
      pruner.after_attention(l, qs, r.lse, scale, ptrs);
      const std::vector<double> want = ref.step(l, to_vec<double>(qs), to_vec<double>(ks), to_vec<double>(vs), n);
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(r.out.f32()[i], want[i], 2e-5) << "step at " << t << " layer " << l;
      std::vector<int64_t> kept = caches[size_t(l)].positions();
      std::sort(kept.begin(), kept.end());
      ASSERT_EQ(kept, ref.kept(l)) << "step at " << t << " layer " << l;
      ASSERT_LE(caches[size_t(l)].size(), o.budget_of(l));
    }
    t += n;
    for (int64_t p = 0; p < t; ++p) {
      ASSERT_NEAR(pruner.importance(p), ref.importance(p), 1e-5 * (1 + ref.importance(p))) << "position " << p;
      // Cascade: the token is in exactly the layers before the first that pruned it.
      for (int l = 0; l < layers; ++l) {
        const auto& pos = caches[size_t(l)].positions();
        const bool held = std::find(pos.begin(), pos.end(), p) != pos.end();
        ASSERT_EQ(held, l < pruner.pruned_at(p)) << "position " << p << " layer " << l << " at " << t;
      }
      pruned_somewhere += pruner.pruned_at(p) < layers;
    }
  }
  EXPECT_GT(pruned_somewhere, 0);
  // Budgets that shrink with depth make deeper layers prune tokens the earlier layers keep.
  if (o.budget.size() > 1 && o.budget.front() > o.budget.back()) {
    int64_t deep = 0;
    for (int64_t p = 0; p < total; ++p) deep += pruner.pruned_at(p) > 0 && pruner.pruned_at(p) < layers;
    EXPECT_GT(deep, 0) << "no token was pruned below layer 0";
  }
}

TEST(CascadePruning, MatchesTheNaiveReferenceStepByStep) {
  CascadePruningOptions o;
  o.window = 5, o.sink = 2, o.chunk = 7;
  o.budget = {30, 24, 16};  // pruned at every depth
  run_against_reference({4, 2, 16}, o, 3, 90, {7, 7, 3}, 1);
  run_against_reference({3, 1, 24}, o, 3, 70, {5}, 2);  // d off the AVX-512 path, GQA 3
  o.budget = {20};  // uniform: layer 0 decides for all
  o.sink = 0, o.window = 1, o.chunk = 0;  // chunk: a quarter of the budget
  run_against_reference({2, 2, 32}, o, 2, 60, {5, 3}, 3);
}

// A budget at least the sequence length prunes nothing: the outputs are the plain cache's, bit
// for bit, and the importance still adds up (every step's probabilities sum to Hq * n).
TEST(CascadePruning, BudgetAboveTheLengthChangesNothing) {
  const int hq = 4, hkv = 2, d = 16;
  const int64_t total = 50;
  CascadePruningOptions o;
  o.budget = {total};
  o.chunk = 8;
  CascadePruner pruner(o, 1);
  KVCache pruned({total, hkv, d, 64, KVDType::bf16, false}), plain({total, hkv, d, 64, KVDType::bf16, false});
  const Tensor q = random_tensor({total, hq, d}, 5), k = random_tensor({total, hkv, d}, 6), v = random_tensor({total, hkv, d}, 7);
  for (int64_t t = 0; t < total;) {
    const int64_t n = std::min<int64_t>(t == 0 ? 8 : 1, total - t);
    for (KVCache* c : {&pruned, &plain}) c->append(rows_of(k, t, n), rows_of(v, t, n));
    const SparseResult a = attention_over_cache(rows_of(q, t, n), pruned, {}), b = attention_over_cache(rows_of(q, t, n), plain, {});
    pruner.after_attention(0, rows_of(q, t, n), a.lse, 1.0f / std::sqrt(float(d)), {&pruned});
    ASSERT_EQ(0, std::memcmp(a.out.raw(), b.out.raw(), a.out.nbytes()));
    t += n;
  }
  EXPECT_EQ(pruned.size(), total);
  double sum = 0;
  for (int64_t p = 0; p < total; ++p) {
    sum += pruner.importance(p);
    EXPECT_EQ(pruner.pruned_at(p), 1);
  }
  EXPECT_NEAR(sum, double(hq) * total, 1e-3);
}

// The attention mass of an int8 cache is the one of an fp32 cache holding its dequantised rows.
TEST(CascadePruning, AttentionMassOfEveryStorage) {
  const int hq = 6, hkv = 2, d = 64;
  const int64_t n = 300, q_len = 3;
  const Tensor k = random_tensor({n, hkv, d}, 8), v = random_tensor({n, hkv, d}, 9), q = random_tensor({q_len, hq, d}, 10, 2.0f);
  KVCache i8({n, hkv, d, 64, KVDType::int8, false}), f32({n, hkv, d, 64, KVDType::f32, false});
  i8.append(k, v);
  f32.append(i8.keys_f32(), i8.values_f32());
  const float scale = 0.125f;
  std::vector<double> ma(size_t(n), 0.0), mb(size_t(n), 0.0);
  add_attention_mass(q, attention_over_cache(q, i8, {}).lse, i8, scale, ma);
  add_attention_mass(q, attention_over_cache(q, f32, {}).lse, f32, scale, mb);
  double total = 0;
  for (int64_t j = 0; j < n; ++j) {
    ASSERT_NEAR(ma[size_t(j)], mb[size_t(j)], 1e-3 * (1e-3 + mb[size_t(j)])) << j;
    total += mb[size_t(j)];
  }
  EXPECT_NEAR(total, double(hq * q_len), 1e-3);
  // Causal: the last row is seen by the last query only.
  std::vector<double> last(size_t(n), 0.0);
  add_attention_mass(rows_of(q, q_len - 1, 1), attention_over_cache(rows_of(q, q_len - 1, 1), f32, {}).lse, f32, scale, last);
  EXPECT_GT(mb[size_t(n - 1)], 0.0);
  EXPECT_NEAR(mb[size_t(n - 1)], last[size_t(n - 1)], 1e-6);
}

TEST(CascadePruning, BadOptionsAndMisuseThrowClearly) {
  auto opts = [](std::vector<int64_t> b, int64_t window, int64_t sink, int64_t chunk) {
    CascadePruningOptions o;
    o.budget = std::move(b), o.window = window, o.sink = sink, o.chunk = chunk;
    return o;
  };
  EXPECT_NE(message_of([&] { opts({10}, 8, 4, 0).validate(2); }).find("budget 10 must be >= sink 4 + max(window 8"),
            std::string::npos);
  EXPECT_NE(message_of([&] { opts({100, 200}, 8, 4, 0).validate(2); }).find("must not grow with depth"), std::string::npos);
  EXPECT_NE(message_of([&] { opts({100, 90, 80}, 8, 4, 0).validate(2); }).find("one value or one per layer (2), got 3"),
            std::string::npos);
  EXPECT_NE(message_of([&] { opts({100}, 0, 4, 0).validate(2); }).find("window must be >= 1, got 0"), std::string::npos);
  EXPECT_EQ(opts({100}, 8, 4, 0).step_chunk(), 25);
  EXPECT_EQ(opts({2000}, 8, 4, 0).step_chunk(), 256);
  KVCache stats({16, 1, 8, 4, KVDType::f32, true});
  stats.append(random_tensor({4, 1, 8}, 1), random_tensor({4, 1, 8}, 2));
  EXPECT_NE(message_of([&] { stats.remove_rows({1}); }).find("cannot evict rows"), std::string::npos);
  KVCache plain({16, 1, 8, 4, KVDType::int8, false});
  plain.append(random_tensor({4, 1, 8}, 1), random_tensor({4, 1, 8}, 2));
  EXPECT_NE(message_of([&] { plain.remove_rows({4}); }).find("rows must be in [0, 4), got 4"), std::string::npos);
  const Tensor before = plain.keys_f32();
  plain.remove_rows({0, 2});  // highest first: row 2 <- row 3, then row 0 <- row 2 (now the last)
  ASSERT_EQ(plain.size(), 2);
  const Tensor after = plain.keys_f32();
  for (int64_t r = 0; r < 2; ++r)
    for (int c = 0; c < 8; ++c) EXPECT_EQ(after.f32()[r * 8 + c], before.f32()[plain.positions()[size_t(r)] * 8 + c]);
  EXPECT_EQ(plain.positions(), (std::vector<int64_t>{3, 1}));
}

}  // namespace
}  // namespace longctx
