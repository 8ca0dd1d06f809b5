// MoBA against its naive reference (dense mask from a brute-force gate), plus the properties
// docs/DESIGN.md fixes: top_k = 1 is block-diagonal, k*B >= N is dense causal, ties go to the later
// block, varlen blocks start at each sequence, bottom-right alignment, determinism, bad input.
#include <longctx/attention/dense/flash.hpp>
#include <longctx/attention/moba/moba.hpp>
#include <longctx/core/error.hpp>
#include <longctx/attention/moba/reference.hpp>

#include <algorithm>
#include <limits>
#include <set>
#include <vector>

#include "helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vec;

struct MobaCase {
  std::vector<int64_t> q_lens, k_lens;
  int hq, hkv, d;
  int64_t block, top_k;
  DType dtype;
  bool group_select = false;
};

std::string name_of(const MobaCase& c) {
  std::string s = "q";
  for (auto l : c.q_lens) s += "_" + std::to_string(l);
  s += "_k";
  for (auto l : c.k_lens) s += "_" + std::to_string(l);
  return s + "_h" + std::to_string(c.hq) + "x" + std::to_string(c.hkv) + "_d" + std::to_string(c.d) + "_B" +
         std::to_string(c.block) + "_top" + std::to_string(c.top_k) + "_" + dtype_name(c.dtype) +
         (c.group_select ? "_group" : "");
}

void PrintTo(const MobaCase& c, std::ostream* os) { *os << name_of(c); }

class MobaVsReference : public ::testing::TestWithParam<MobaCase> {};

TEST_P(MobaVsReference, SelectionForwardAndBackwardMatch) {
  const MobaCase& c = GetParam();
  const Varlen vl = c.q_lens.size() == 1 && c.q_lens == c.k_lens ? Varlen{} : Varlen::from_lengths(c.q_lens, c.k_lens);
  int64_t tq = 0, tk = 0;
  for (size_t i = 0; i < c.q_lens.size(); ++i) tq += c.q_lens[i], tk += c.k_lens[i];
  const Tensor q = random_tensor({tq, c.hq, c.d}, 11, 1.0f, c.dtype);
  const Tensor k = random_tensor({tk, c.hkv, c.d}, 12, 1.0f, c.dtype);
  const Tensor v = random_tensor({tk, c.hkv, c.d}, 13, 1.0f, c.dtype);
  const Tensor dout = random_tensor({tq, c.hq, c.d}, 14);
  const MobaOptions opts{c.block, c.top_k, 0.0f, c.group_select};

  const MobaResult r = moba_attention_forward(q, k, v, vl, opts);
  const AttentionGrads g = moba_attention_backward(q, k, v, r, dout, vl);

  const reference::Shape s = testing::shape_of(q, k);
  const auto qd = to_vec<double>(q), kd = to_vec<double>(k), vd = to_vec<double>(v);
  std::vector<int32_t> ref_sel;
  const auto mask = reference::moba_mask<double>(s, qd, kd, vl, c.block, c.top_k, &ref_sel, c.group_select);
  // Same blocks chosen by every (head, query) (as sets: the reference lists them by score).
  // slots: top_k - 1, or fewer when no sequence has that many past blocks (the reference pads to top_k - 1)
  const size_t ref_slots = size_t(c.top_k - 1), rows = ref_slots == 0 ? 0 : ref_sel.size() / ref_slots;
  ASSERT_LE(r.slots, c.top_k - 1);
  ASSERT_EQ(r.selected.size(), rows * size_t(r.slots));
  for (size_t i = 0; i < rows; ++i) {
    std::multiset<int32_t> a, b;
    for (int64_t j = 0; j < r.slots; ++j) a.insert(r.selected[i * size_t(r.slots) + size_t(j)]);
    for (size_t j = 0; j < ref_slots; ++j) b.insert(ref_sel[i * ref_slots + j]);
    a.erase(-1), b.erase(-1);
    ASSERT_EQ(a, b) << "selection of (head, row) #" << i;
  }
  testing::expect_matches_reference(q, k, v, dout, mask, 1.0 / std::sqrt(double(c.d)), r, g);
}

const MobaCase kCases[] = {
    {{300}, {300}, 2, 2, 64, 32, 3, DType::f32},                        // one sequence, partial last block
    {{512}, {512}, 1, 1, 128, 64, 2, DType::f32},                       // d = 128, exact blocks
    {{333}, {333}, 4, 1, 64, 40, 4, DType::f32},                        // MQA 4/1
    {{260}, {260}, 8, 2, 64, 16, 5, DType::f32},                        // GQA 8/2, many blocks
    {{1, 37, 300, 16, 5}, {1, 37, 300, 16, 5}, 4, 2, 64, 16, 3, DType::f32},  // varlen: 1 token, < 1 block, ragged
    {{300}, {300}, 2, 1, 64, 300, 2, DType::f32},                       // block longer than... exactly the sequence
    {{300}, {300}, 2, 1, 64, 32, 1, DType::f32},                        // top_k = 1: own block only
    {{40, 1, 77}, {300, 64, 200}, 4, 2, 64, 32, 3, DType::f32},         // q_len < kv_len: bottom-right
    {{60, 100}, {40, 100}, 2, 1, 32, 16, 3, DType::f32},                // q_len > kv_len: 20 queries see no key
    {{300}, {300}, 4, 2, 128, 32, 3, DType::bf16},                      // bf16 storage
    {{260}, {260}, 2, 1, 64, 16, 50, DType::f32},                       // top_k past the block count
    {{300}, {300}, 2, 1, 64, 512, 3, DType::f32},                       // block longer than the sequence
    {{260}, {260}, 8, 2, 64, 16, 5, DType::f32, true},                  // group-shared selection, GQA 8/2
    {{1, 37, 300, 16, 5}, {1, 37, 300, 16, 5}, 3, 1, 64, 16, 3, DType::f32, true},  // group of 3, varlen
};

INSTANTIATE_TEST_SUITE_P(Shapes, MobaVsReference, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return name_of(info.param); });

TEST(Moba, CoveringTopKEqualsDenseCausal) {
  // top_k * B >= N: every past block is selected, so MoBA is dense causal attention.
  const Tensor q = random_tensor({250, 4, 64}, 1), k = random_tensor({250, 2, 64}, 2), v = random_tensor({250, 2, 64}, 3);
  const Tensor dout = random_tensor({250, 4, 64}, 4);
  const MobaOptions opts{32, 8, 0.0f};
  const MobaResult m = moba_attention_forward(q, k, v, {}, opts);
  // a top_k far past the 8 blocks holds only their 7 past-block slots, and chooses the same
  const MobaResult huge = moba_attention_forward(q, k, v, {}, {32, int64_t(1) << 40, 0.0f});
  EXPECT_EQ(huge.slots, 7);
  EXPECT_EQ(huge.selected, m.selected);
  const AttentionResult d = flash_attention_forward(q, k, v);
  EXPECT_LT(rel_error(m.out, to_vec<float>(d.out)), 1e-6);
  EXPECT_LT(rel_error(m.lse, to_vec<float>(d.lse)), 1e-6);
  const AttentionGrads gm = moba_attention_backward(q, k, v, m, dout, {});
  const AttentionGrads gd = flash_attention_backward(q, k, v, d, dout);
  EXPECT_LT(rel_error(gm.dq, to_vec<float>(gd.dq)), 1e-5);
  EXPECT_LT(rel_error(gm.dk, to_vec<float>(gd.dk)), 1e-5);
  EXPECT_LT(rel_error(gm.dv, to_vec<float>(gd.dv)), 1e-5);
}

TEST(Moba, TopOneIsBlockDiagonalCausal) {
  const Tensor q = random_tensor({100, 2, 32}, 1), k = random_tensor({100, 2, 32}, 2), v = random_tensor({100, 2, 32}, 3);
  const MobaResult m = moba_attention_forward(q, k, v, {}, {25, 1, 0.0f});
  // Same as dense causal attention run on each block as its own sequence.
  const AttentionResult d = flash_attention_forward(q, k, v, Varlen::same({25, 25, 25, 25}));
  EXPECT_LT(rel_error(m.out, to_vec<float>(d.out)), 1e-6);
  EXPECT_TRUE(m.selected.empty());
}

TEST(Moba, TiesGoToTheLaterBlock) {
  // Blocks 0 and 2 hold identical keys (identical means), block 1 the opposite; a query in block 3
  // with one slot must pick block 2 over block 0.
  const int64_t B = 4, d = 8;
  Tensor q({16, 1, d}), k({16, 1, d}), v = random_tensor({16, 1, d}, 5);
  for (int64_t t = 0; t < 16; ++t) {
    q.f32()[t * d] = 1.0f;
    const int64_t block = t / B;
    k.f32()[t * d] = block == 1 ? -1.0f : 1.0f;
    k.f32()[t * d + 1 + (t % B)] = 0.5f;  // varies within a block, same pattern in blocks 0 and 2
  }
  const MobaResult m = moba_attention_forward(q, k, v, {}, {B, 2, 0.0f});
  for (int64_t t = 12; t < 16; ++t) EXPECT_EQ(m.selected[size_t(t)], 2) << "query " << t;
  std::vector<int32_t> ref_sel;
  reference::moba_mask<double>(testing::shape_of(q, k), to_vec<double>(q), to_vec<double>(k), {}, B, 2, &ref_sel);
  for (int64_t t = 12; t < 16; ++t) EXPECT_EQ(ref_sel[size_t(t)], 2) << "reference, query " << t;
}

TEST(Moba, BlocksAreAnchoredAtEachSequenceStart) {
  // Two sequences packed: the second's blocks must be its own; it may never select keys of the first.
  const Tensor q = random_tensor({70, 2, 16}, 1), k = random_tensor({70, 1, 16}, 2), v = random_tensor({70, 1, 16}, 3);
  const Varlen vl = Varlen::same({30, 40});
  const MobaResult packed = moba_attention_forward(q, k, v, vl, {8, 3, 0.0f});
  // Run the second sequence alone: identical rows.
  Tensor q2({40, 2, 16}), k2({40, 1, 16}), v2({40, 1, 16});
  std::copy_n(q.f32() + 30 * 32, 40 * 32, q2.f32());
  std::copy_n(k.f32() + 30 * 16, 40 * 16, k2.f32());
  std::copy_n(v.f32() + 30 * 16, 40 * 16, v2.f32());
  const MobaResult alone = moba_attention_forward(q2, k2, v2, {}, {8, 3, 0.0f});
  for (int64_t i = 0; i < 40 * 32; ++i) ASSERT_EQ(packed.out.at(30 * 32 + i), alone.out.at(i)) << i;
}

// The forward does not zero its output first (Tensor::uninitialized): every row is written,
// whatever the allocator hands back, including queries that see no key (they get 0).
TEST(Moba, OutputIgnoresWhatTheAllocatorLeft) {
  const Varlen vl = Varlen::from_lengths({60, 100}, {40, 100});
  const Tensor q = random_tensor({160, 2, 32}, 1), k = random_tensor({140, 1, 32}, 2), v = random_tensor({140, 1, 32}, 3);
  const MobaOptions opts{16, 3, 0.0f};
  const MobaResult clean = moba_attention_forward(q, k, v, vl, opts);
  for (int64_t i = 0; i < 20 * 2 * 32; ++i) ASSERT_EQ(clean.out.at(i), 0.0f) << i;
  for (int trial = 0; trial < 3; ++trial) {
    {  // freed full of NaNs: the next buffers of this size are likely among these blocks
      std::vector<Tensor> junk;
      for (int i = 0; i < 64; ++i) {
        junk.push_back(Tensor::uninitialized({160, 2, 32}));
        std::fill_n(junk.back().f32(), junk.back().numel(), std::numeric_limits<float>::quiet_NaN());
      }
    }
    const MobaResult again = moba_attention_forward(q, k, v, vl, opts);
    EXPECT_TRUE(testing::bitwise_equal(again.out, clean.out));
  }
}

TEST(Moba, DeterministicAcrossRuns) {
  const Tensor q = random_tensor({900, 4, 64}, 1), k = random_tensor({900, 2, 64}, 2), v = random_tensor({900, 2, 64}, 3);
  const Tensor dout = random_tensor({900, 4, 64}, 4);
  const MobaOptions opts{64, 3, 0.0f};
  const MobaResult a = moba_attention_forward(q, k, v, {}, opts), b = moba_attention_forward(q, k, v, {}, opts);
  EXPECT_TRUE(testing::bitwise_equal(a.out, b.out));
  const AttentionGrads ga = moba_attention_backward(q, k, v, a, dout, {});
  const AttentionGrads gb = moba_attention_backward(q, k, v, a, dout, {});
  EXPECT_TRUE(testing::bitwise_equal(ga.dq, gb.dq));
  EXPECT_TRUE(testing::bitwise_equal(ga.dk, gb.dk));
  EXPECT_TRUE(testing::bitwise_equal(ga.dv, gb.dv));
}

TEST(Moba, BadInputThrowsClearErrors) {
  const Tensor q = random_tensor({10, 4, 16}, 1), k = random_tensor({10, 2, 16}, 2), v = random_tensor({10, 2, 16}, 3);
  using testing::expect_error;
  expect_error([&] { moba_attention_forward(q, k, v, {}, {0, 3, 0.0f}); }, "block_size must be > 0, got 0");
  expect_error([&] { moba_attention_forward(q, k, v, {}, {4, 0, 0.0f}); }, "top_k must be > 0, got 0");
  const Tensor q3 = random_tensor({10, 3, 16}, 1);
  expect_error([&] { moba_attention_forward(q3, k, v, {}, {4, 2, 0.0f}); }, "must be a multiple of kv heads");
  expect_error([&] { moba_attention_forward(q, k, v, Varlen{{0, 7, 5, 10}, {0, 7, 5, 10}}, {4, 2, 0.0f}); },
               "cu_seqlens_q must be non-decreasing");
  MobaResult r = moba_attention_forward(q, k, v, {}, {4, 2, 0.0f});
  r.moba.top_k = 3;  // a result whose selection does not match its options
  expect_error([&] { moba_attention_backward(q, k, v, r, random_tensor({10, 4, 16}, 5), {}); },
               "does not match top_k = 3");
}

}  // namespace
}  // namespace longctx
