// MoBA's key convolution: the fast kernel against the naive reference on awkward shapes, the
// reference against finite differences, the stream against the whole-sequence forward.
#include <longctx/attention/moba/key_conv.hpp>
#include <longctx/attention/moba/reference.hpp>
#include <longctx/core/threads.hpp>

#include "helpers.hpp"

namespace longctx {
namespace {

using testing::random_tensor;
using testing::random_vec;
using testing::rel_error;
using testing::to_vec;

struct ConvCase {
  std::string name;
  std::vector<int64_t> lens;  // packed sequences
  int heads, head_dim;
  int64_t kernel;
  bool bias;
};
std::ostream& operator<<(std::ostream& os, const ConvCase& c) { return os << c.name; }

std::vector<int64_t> cu_of(const std::vector<int64_t>& lens) {
  std::vector<int64_t> cu{0};
  for (int64_t l : lens) cu.push_back(cu.back() + l);
  return cu;
}

class KeyConvVsReference : public ::testing::TestWithParam<ConvCase> {};

TEST_P(KeyConvVsReference, ForwardAndBackwardMatch) {
  const ConvCase& c = GetParam();
  const std::vector<int64_t> cu = cu_of(c.lens);
  const int64_t T = cu.back(), C = c.heads * c.head_dim;
  const Tensor x = random_tensor({T, c.heads, c.head_dim}, 1), w = random_tensor({c.kernel, C}, 2, 0.7f);
  const Tensor b = c.bias ? random_tensor({C}, 3) : Tensor(), dy = random_tensor({T, c.heads, c.head_dim}, 4);
  const std::vector<int64_t> given = c.lens.size() == 1 ? std::vector<int64_t>{} : cu;  // one sequence: none given
  const Tensor y = key_conv_forward(x, w, b, given);
  const KeyConvGrads g = key_conv_backward(x, w, c.bias, dy, given);

  const auto xd = to_vec<double>(x), wd = to_vec<double>(w), bd = to_vec<double>(b);
  EXPECT_LT(rel_error(y, reference::key_conv_forward(xd, C, wd, bd, cu)), 1e-6);
  std::vector<double> dx, dw, db;
  reference::key_conv_backward(xd, C, wd, c.bias, to_vec<double>(dy), cu, dx, dw, db);
  EXPECT_LT(rel_error(g.dx, dx), 1e-6);
  EXPECT_LT(rel_error(g.dw, dw), 1e-5);
  ASSERT_EQ(g.db.numel(), c.bias ? C : 0);
  if (c.bias) {
    EXPECT_LT(rel_error(g.db, db), 1e-5);
  }
}

const ConvCase kCases[] = {
    {"varlen_k3_bias", {1, 2, 7, 1, 300}, 2, 16, 3, true},   // 1-token sequences, one shorter than the kernel
    {"kernel_longer_than_sequences", {1, 3, 4, 2}, 1, 8, 5, false},
    {"one_token", {1}, 3, 4, 3, true},
    {"kernel_1", {5, 6}, 2, 8, 1, true},                     // a per-channel gain
    {"long_chunks_k5", {700, 333}, 2, 32, 5, true},          // several 256-row chunks of the weight gradient
    {"empty_sequence_between", {3, 0, 5}, 1, 16, 3, false},  // cu_seqlens may repeat an entry
    {"kernel_16", {40}, 1, 8, 16, true},
};

INSTANTIATE_TEST_SUITE_P(Shapes, KeyConvVsReference, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.name; });

// L = sum(y o r): the reference backward against central differences, in float64, for every
// element of x, w and b, across sequence boundaries and sequences shorter than the kernel.
TEST(KeyConvReference, GradientsMatchFiniteDifferences) {
  for (int64_t K : {3, 5}) {
    const std::vector<int64_t> cu{0, 1, 3, 9, 10};
    const int64_t C = 3, T = cu.back();
    auto x = random_vec(size_t(T * C), 1), w = random_vec(size_t(K * C), 2), b = random_vec(size_t(C), 3);
    const auto r = random_vec(size_t(T * C), 4);
    std::vector<double> dx, dw, db;
    reference::key_conv_backward(x, C, w, true, r, cu, dx, dw, db);
    auto loss = [&] {
      const auto y = reference::key_conv_forward(x, C, w, b, cu);
      double l = 0;
      for (size_t i = 0; i < y.size(); ++i) l += y[i] * r[i];
      return l;
    };
    testing::expect_gradients_match_differences({{&x, &dx, "x"}, {&w, &dw, "w"}, {&b, &db, "b"}}, loss, 1e-6, 1e-7);
  }
}

// A sequence's outputs are those of the sequence alone: packing never mixes sequences' keys.
TEST(KeyConv, SequencesNeverMix) {
  const Tensor x = random_tensor({9, 2, 4}, 1), w = random_tensor({5, 8}, 2), b = random_tensor({8}, 3);
  const Tensor y = key_conv_forward(x, w, b, {0, 2, 9});
  Tensor second({7, 2, 4});
  std::copy_n(x.f32() + 2 * 8, 7 * 8, second.f32());
  const Tensor alone = key_conv_forward(second, w, b);
  for (int64_t i = 0; i < 7 * 8; ++i) EXPECT_EQ(y.at(2 * 8 + i), alone.at(i)) << i;
}

TEST(KeyConv, IdentityTapsReturnTheKeys) {
  const Tensor x = random_tensor({6, 2, 4}, 1);
  Tensor w({3, 8});
  for (int64_t c = 0; c < 8; ++c) w.f32()[2 * 8 + c] = 1.0f;  // tap K - 1: the token itself
  EXPECT_TRUE(testing::bitwise_equal(key_conv_forward(x, w, Tensor(), {0, 1, 6}), x));
}

// Prefill in chunks, then one key at a time: the stream gives the whole forward's rows.
TEST(KeyConv, StreamEqualsWholeSequence) {
  for (auto [K, bias] : {std::pair{int64_t(1), true}, {int64_t(3), true}, {int64_t(5), false}}) {
    const Tensor x = random_tensor({12, 2, 4}, 1), w = random_tensor({K, 8}, 2), b = bias ? random_tensor({8}, 3) : Tensor();
    const Tensor whole = key_conv_forward(x, w, b);
    KeyConvStream stream(w, b);
    int64_t t = 0;
    for (int64_t n : {1, 4, 1, 2, 1, 3}) {
      Tensor piece({n, 2, 4});
      std::copy_n(x.f32() + t * 8, n * 8, piece.f32());
      const Tensor y = stream.feed(piece);
      for (int64_t i = 0; i < n * 8; ++i) EXPECT_EQ(y.at(i), whole.at(t * 8 + i)) << "K " << K << " row " << t + i / 8;
      t += n;
    }
  }
}

TEST(KeyConv, SameBitsForAnyThreadCount) {
  const Tensor x = random_tensor({3000, 2, 64}, 1), w = random_tensor({3, 128}, 2), dy = random_tensor({3000, 2, 64}, 3);
  const std::vector<int64_t> cu{0, 1000, 2999, 3000};
  const KeyConvGrads a = key_conv_backward(x, w, true, dy, cu);
  const int threads = parallel::max_threads();
  parallel::set_threads(1);
  const KeyConvGrads b = key_conv_backward(x, w, true, dy, cu);
  const Tensor y1 = key_conv_forward(x, w, Tensor(), cu);
  parallel::set_threads(threads);
  EXPECT_TRUE(testing::bitwise_equal(a.dx, b.dx));
  EXPECT_TRUE(testing::bitwise_equal(a.dw, b.dw));
  EXPECT_TRUE(testing::bitwise_equal(a.db, b.db));
  EXPECT_TRUE(testing::bitwise_equal(key_conv_forward(x, w, Tensor(), cu), y1));
}

TEST(KeyConv, BadInputThrowsClearErrors) {
  using testing::expect_error;
  const Tensor x = random_tensor({5, 2, 4}, 1), w = random_tensor({3, 8}, 2);
  expect_error([&] { key_conv_forward(x, random_tensor({3, 7}, 2), Tensor()); },
               "key_conv: weights must be an f32 [kernel, heads * head_dim = 8] tensor, got f32 [3, 7]");
  expect_error([&] { key_conv_forward(x, random_tensor({17, 8}, 2), Tensor()); },
               "key_conv: kernel (weights' first dimension) must be in [1, 16], got 17");
  expect_error([&] { key_conv_forward(x, w, random_tensor({4}, 3)); }, "key_conv: bias must be empty or an f32 [8] tensor, got f32 [4]");
  expect_error([&] { key_conv_forward(random_tensor({5, 8}, 1), w, Tensor()); },
               "key_conv: keys must be an f32 [tokens, heads, head_dim] tensor, got f32 [5, 8]");
  expect_error([&] { key_conv_forward(x, w, Tensor(), {0, 3, 4}); }, "key_conv: cu_seqlens ends at 4 but the tensor has 5 rows");
  expect_error([&] { key_conv_backward(x, w, false, random_tensor({5, 2, 3}, 4)); },
               "key_conv: dy must have shape [5, 2, 4], got [5, 2, 3]");
  KeyConvStream s(w, Tensor());
  expect_error([&] { s.feed(random_tensor({1, 1, 4}, 5)); }, "key_conv: stream keys must be [tokens, heads, head_dim] with 8 channels");
}

}  // namespace
}  // namespace longctx
