// The block-sparse engine (attention/engine/block_sparse) at sizes where its waves, chunks and tall
// gathered tiles come into play, against the per-row engine (attention_over_cache runs every query
// of a chunk one row at a time, itself checked against the naive references in test_decode) and
// against dense attention when every block is selected; the counting sort that groups the
// selection block-major.
#include <longctx/attention/cache/decode.hpp>
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/moba/moba.hpp>
#include <longctx/attention/sparse/threshold.hpp>
#include <longctx/core/threads.hpp>

#include "attention/engine/block_sparse.hpp"
#include "sparse_helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vec;

constexpr int kHq = 4, kHkv = 2, kD = 16;
constexpr int64_t kN = 3000, kB = 8;  // 375 blocks; 3000 x 4 queries x 8 blocks = 12 waves of selections

// The blocks of (head h, query t), sorted.
std::vector<int32_t> blocks_of(const SparseResult& r, int h, int64_t t, int64_t tq) {
  const size_t i = size_t(h) * size_t(tq) + size_t(t);
  std::vector<int32_t> b(r.visited.begin() + r.row_offset[i], r.visited.begin() + r.row_offset[i + 1]);
  std::sort(b.begin(), b.end());
  return b;
}

// The same sequence through the per-row engine: all of it as one chunk over a cache.
SparseResult row_engine_result(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionSpec& spec) {
  KVCache cache({k.dim(0), kHkv, kD, spec.stats_block_size(), KVDType::f32});
  cache.append(k, v);
  return attention_over_cache(q, cache, spec);
}

void expect_same(const SparseResult& engine, const Tensor& out, const Tensor& lse, const SparseResult& rows) {
  const int64_t n = out.dim(0);
  for (int h = 0; h < kHq; ++h)
    for (int64_t t = 0; t < n; ++t)
      ASSERT_EQ(blocks_of(engine, h, t, n), blocks_of(rows, h, t, n)) << "head " << h << " token " << t;
  EXPECT_LT(rel_error(out, to_vec<float>(rows.out)), 1e-5);
  EXPECT_LT(rel_error(lse, to_vec<float>(rows.lse)), 1e-5);
}

TEST(BlockSparse, TopkAndMobaEqualTheRowEngineOverManyWaves) {
  const testing::Structured src = testing::structured_source(kN, kHq, kHkv, kD, kB, 2, 2.0f, 3);
  for (bool group : {false, true}) {
    const TopkOptions opts{kB, 9, false, 0.0f, group};
    const SparseResult r = topk_attention_forward(src.q, src.k, src.v, {}, opts);
    expect_same(r, r.out, r.lse, row_engine_result(src.q, src.k, src.v, AttentionSpec(opts)));
  }
  const MobaOptions opts{kB, 9};
  const MobaResult m = moba_attention_forward(src.q, src.k, src.v, {}, opts);
  SparseResult as_sparse;  // MoBA's slots as a CSR
  as_sparse.row_offset = {0};
  for (size_t i = 0; i < size_t(kHq * kN); ++i) {
    for (int64_t c = 0; c < m.slots; ++c)
      if (const int32_t j = m.selected[i * size_t(m.slots) + size_t(c)]; j >= 0) as_sparse.visited.push_back(j);
    as_sparse.row_offset.push_back(int64_t(as_sparse.visited.size()));
  }
  expect_same(as_sparse, m.out, m.lse, row_engine_result(src.q, src.k, src.v, AttentionSpec(opts)));
}

// The rounds (1, 2, 4, ... blocks per query, partial states merged in descending score) visit
// what the serial rule visits, across two chunks of queries (1500 x 4 queries x up to 375 scores)
// and several waves per round.
TEST(BlockSparse, ThresholdRoundsEqualTheSerialRule) {
  const int64_t n = 1500, B = 4;
  const testing::Structured src = testing::structured_source(n, kHq, kHkv, kD, B, 2, 3.0f, 4);
  for (StopRule rule : {StopRule::bound, StopRule::heuristic}) {
    const ThresholdOptions opts{B, 0.9f, rule};
    const SparseResult r = threshold_attention_forward(src.q, src.k, src.v, {}, opts);
    expect_same(r, r.out, r.lse, row_engine_result(src.q, src.k, src.v, AttentionSpec(opts)));
    EXPECT_GT(r.mean_keys, 32.0 * B) << enum_name(rule);        // visits many blocks: several rounds
    EXPECT_LT(r.mean_keys, double(n + 1) / 2 / 2) << enum_name(rule);  // and skips most
  }
}

// Every block selected, with lists longer than a gathered tile: the engine is dense attention,
// forward and backward, in fp32 and with bf16 storage.
TEST(BlockSparse, SelectingEveryBlockIsDenseForwardAndBackward) {
  const int64_t n = 1200;
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor q = random_tensor({n, kHq, kD}, 1, 1.0f, dt), k = random_tensor({n, kHkv, kD}, 2, 1.0f, dt);
    const Tensor v = random_tensor({n, kHkv, kD}, 3, 1.0f, dt), dout = random_tensor({n, kHq, kD}, 4);
    const AttentionResult d = flash_attention_forward(q, k, v);
    const AttentionGrads gd = flash_attention_backward(q, k, v, d, dout);
    const double tol = testing::products_tol(k, 1e-5);
    auto check = [&](const AttentionResult& r, const AttentionGrads& g, const char* what) {
      EXPECT_LT(rel_error(r.out, to_vec<float>(d.out)), tol) << what;
      EXPECT_LT(rel_error(r.lse, to_vec<float>(d.lse)), tol) << what;
      EXPECT_LT(rel_error(g.dq, to_vec<float>(gd.dq)), 5 * tol) << what;
      EXPECT_LT(rel_error(g.dk, to_vec<float>(gd.dk)), 5 * tol) << what;
      EXPECT_LT(rel_error(g.dv, to_vec<float>(gd.dv)), 5 * tol) << what;
    };
    const SparseResult t = topk_attention_forward(q, k, v, {}, {16, n, false, 0.0f, true});
    check(t, sparse_attention_backward(q, k, v, t, dout), "topk");
    const MobaResult m = moba_attention_forward(q, k, v, {}, {16, n});
    check(m, moba_attention_backward(q, k, v, m, dout), "moba");
    const SparseResult th = threshold_attention_forward(q, k, v, {}, {16, 1.0f});
    check(th, sparse_attention_backward(q, k, v, th, dout), "threshold");
  }
}

TEST(BlockSparse, SameBitsOnEveryRun) {
  const testing::Structured src = testing::structured_source(900, kHq, kHkv, kD, kB, 3, 1.5f, 9);
  const Tensor dout = random_tensor({900, kHq, kD}, 10);
  const ThresholdOptions opts{kB, 0.9f};
  const SparseResult a = threshold_attention_forward(src.q, src.k, src.v, {}, opts);
  const SparseResult b = threshold_attention_forward(src.q, src.k, src.v, {}, opts);
  EXPECT_TRUE(testing::bitwise_equal(a.out, b.out));
  EXPECT_EQ(a.visited, b.visited);
  const AttentionGrads ga = sparse_attention_backward(src.q, src.k, src.v, a, dout);
  const AttentionGrads gb = sparse_attention_backward(src.q, src.k, src.v, b, dout);
  EXPECT_TRUE(testing::bitwise_equal(ga.dq, gb.dq));
  EXPECT_TRUE(testing::bitwise_equal(ga.dk, gb.dk));
  EXPECT_TRUE(testing::bitwise_equal(ga.dv, gb.dv));
}

// The selected blocks run per thread over its own range of queries, so the ranges (and the
// gathered tiles they cut) change with the thread count, and a smaller team than asked (a call from
// inside a parallel region) runs several ranges on one thread: the bits must not change. Varlen
// with partial last blocks, GQA, and a sequence shorter than a block.
TEST(BlockSparse, ForwardHasTheSameBitsWhateverTheThreads) {
  const std::vector<int64_t> lens{700, 5, 1300};
  const Varlen vl = Varlen::from_lengths(lens, lens);
  const Tensor q = random_tensor({2005, kHq, kD}, 21), k = random_tensor({2005, kHkv, kD}, 22);
  const Tensor v = random_tensor({2005, kHkv, kD}, 23);
  const MobaOptions moba{kB, 6};
  const TopkOptions topk{kB, 6, false, 0.0f, true};
  const int threads = parallel::max_threads();
  auto run = [&](int t, bool nested) {
    parallel::set_threads(t);
    std::pair<MobaResult, SparseResult> r;
#pragma omp parallel num_threads(2) if (nested)
#pragma omp single
    r = {moba_attention_forward(q, k, v, vl, moba), topk_attention_forward(q, k, v, vl, topk)};
    return r;
  };
  const auto one = run(1, false);
  for (const auto& [t, nested] : {std::pair{2, false}, {3, false}, {2, true}}) {
    const auto other = run(t, nested);
    EXPECT_TRUE(testing::bitwise_equal(one.first.out, other.first.out)) << t << " threads, nested " << nested;
    EXPECT_TRUE(testing::bitwise_equal(one.first.lse, other.first.lse)) << t << " threads, nested " << nested;
    EXPECT_TRUE(testing::bitwise_equal(one.second.out, other.second.out)) << t << " threads, nested " << nested;
  }
  parallel::set_threads(threads);
}

// The counting sort behind the block-major grouping: each list holds its rows in unit order, and
// `at` points every entry at its row, with one thread or several.
TEST(BlockSparse, SelectorsKeepUnitOrderWhateverTheThreads) {
  const int64_t lists = 37, units = 9000;
  auto entries = [](int64_t u, auto&& emit) {
    for (int64_t e = 0; e < u % 4; ++e) emit((u * 7 + e * 11) % lists, u * 10 + e);
  };
  std::vector<int64_t> first{0};
  for (int64_t u = 0; u < units; ++u) first.push_back(first.back() + u % 4);
  const int threads = parallel::max_threads();
  for (int t : {1, 2}) {
    parallel::set_threads(t);
    attn::Selectors s;
    std::vector<int64_t> at(size_t(first.back()), -1);
    attn::build_selectors(s, lists, units, entries, first.data(), at.data());
    ASSERT_EQ(s.offset.back(), first.back());
    for (int64_t list = 0; list < lists; ++list)
      for (int64_t pos = s.offset[size_t(list)] + 1; pos < s.offset[size_t(list) + 1]; ++pos)
        ASSERT_LT(s.rows[size_t(pos - 1)], s.rows[size_t(pos)]) << "list " << list;
    for (int64_t u = 0; u < units; ++u)
      for (int64_t e = 0; e < u % 4; ++e) {
        const int64_t pos = at[size_t(first[size_t(u)] + e)], list = (u * 7 + e * 11) % lists;
        ASSERT_EQ(s.rows[size_t(pos)], u * 10 + e);
        ASSERT_TRUE(pos >= s.offset[size_t(list)] && pos < s.offset[size_t(list) + 1]);
      }
  }
  parallel::set_threads(threads);
}

}  // namespace
}  // namespace longctx
