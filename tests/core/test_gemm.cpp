// Our GEMM kernels against a float64 loop, on every instruction set this CPU runs, both
// precisions, every transpose, and shapes that are not multiples of any tile.
#include <gtest/gtest.h>
#include <omp.h>
#include <longctx/core/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/gemm.hpp"

namespace longctx::testing {
namespace {

struct Shape {
  int64_t m, n, k;
};

// Restores the instruction set and backend a test changed.
struct GemmSettings {
  gemm::Isa isa = gemm::current_isa();
  gemm::Backend backend = gemm::current_backend();
  ~GemmSettings() {
    gemm::set_isa(isa);
    gemm::set_backend(backend);
  }
};

std::vector<float> random_floats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

float as_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Checks gemm() on one case against C = alpha op(A) op(B) + beta C0 summed in float64 over the
// inputs as the kernel sees them (rounded to bf16 for the bf16 precision, as stored for bf16
// operands). Tolerance: a few ulps of fp32 times the sum of |terms| (the fp32 accumulation's
// error bound). `pad` widens the row strides (odd and even strides take different bf16 paths).
void check_case(gemm::Precision pr, bool ta, bool tb, Shape s, float alpha, float beta, uint64_t seed,
                bool a_bf16 = false, bool b_bf16 = false, int64_t pad = 3) {
  const int64_t lda = (ta ? s.m : s.k) + pad, ldb = (tb ? s.k : s.n) + pad + 2, ldc = s.n + 2;
  const int64_t a_rows = ta ? s.k : s.m, b_rows = tb ? s.n : s.k;
  auto a = random_floats(size_t(a_rows * lda), seed), b = random_floats(size_t(b_rows * ldb), seed + 1);
  std::vector<uint16_t> a16, b16;
  for (auto [stored, x, x16] : {std::tuple{a_bf16, &a, &a16}, std::tuple{b_bf16, &b, &b16}})
    if (stored) {
      for (float& v : *x) x16->push_back(f32_to_bf16(v)), v = bf16_to_f32(x16->back());
    }
  auto c = random_floats(size_t(s.m * ldc), seed + 2);
  if (beta == 0.0f)  // BLAS semantics: C is not read, so NaNs in it must not leak
    for (float& x : c) x = std::numeric_limits<float>::quiet_NaN();
  const auto c0 = c;
  const gemm::Operand oa{a_bf16 ? nullptr : a.data(), a_bf16 ? a16.data() : nullptr, lda, ta};
  const gemm::Operand ob{b_bf16 ? nullptr : b.data(), b_bf16 ? b16.data() : nullptr, ldb, tb};
  gemm::gemm(pr, s.m, s.n, s.k, alpha, oa, ob, beta, c.data(), ldc);
  const auto in = [&](float x) { return pr == gemm::Precision::bf16 ? double(as_bf16(x)) : double(x); };
  for (int64_t i = 0; i < s.m; ++i)
    for (int64_t j = 0; j < s.n; ++j) {
      double sum = 0, mag = 0;
      for (int64_t p = 0; p < s.k; ++p) {
        const double x = in(ta ? a[p * lda + i] : a[i * lda + p]) * in(tb ? b[j * ldb + p] : b[p * ldb + j]);
        sum += x;
        mag += std::fabs(x);
      }
      double want = alpha * sum, tol = 4e-7 * (std::fabs(alpha) * mag + 1.0);
      if (beta != 0.0f) {
        want += beta * double(c0[i * ldc + j]);
        tol += 4e-7 * std::fabs(beta * c0[i * ldc + j]);
      }
      ASSERT_NEAR(c[i * ldc + j], want, tol) << "i=" << i << " j=" << j;
    }
  for (int64_t i = 0; i < s.m; ++i)  // the padding between rows of C is untouched
    for (int64_t j = s.n; j < ldc; ++j) {
      const float x = c[i * ldc + j], x0 = c0[i * ldc + j];
      ASSERT_TRUE(x == x0 || (std::isnan(x) && std::isnan(x0)));
    }
}

std::vector<gemm::Isa> runnable_isas() {
  std::vector<gemm::Isa> out;
  for (gemm::Isa isa : {gemm::Isa::portable, gemm::Isa::avx2, gemm::Isa::avx512, gemm::Isa::avx512_bf16})
    if (int(isa) <= int(gemm::best_isa())) out.push_back(isa);
  return out;
}

class GemmIsa : public ::testing::TestWithParam<std::tuple<gemm::Isa, gemm::Precision>> {};

TEST_P(GemmIsa, MatchesFloat64OnAwkwardShapes) {
  GemmSettings restore;
  const auto [isa, pr] = GetParam();
  gemm::set_isa(isa);
  // 1x1x1; below one tile; one past the tile in each dimension; past NC, KC and the bf16 row block (192); odd k (bf16
  // pads a pair); long k (several KC blocks); big enough for the threaded split (~2 M multiply-adds).
  const Shape shapes[] = {{1, 1, 1},    {5, 3, 7},     {7, 65, 1},    {13, 17, 129},  {97, 513, 33},
                          {6, 64, 256}, {31, 70, 257}, {9, 11, 1031}, {130, 257, 75}, {200, 70, 40}};
  uint64_t seed = 11;
  for (const Shape& s : shapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        SCOPED_TRACE(gemm::isa_name(isa) + " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) +
                     " m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k));
        check_case(pr, ta, tb, s, 1.0f, 0.0f, seed++);
        check_case(pr, ta, tb, s, -0.5f, 1.0f, seed++);
        check_case(pr, ta, tb, s, 2.0f, 0.25f, seed++);
        // bf16 storage for either operand; even and odd strides (bf16 A is read in place only with
        // whole pairs per row)
        for (int64_t pad : {3, 4}) {
          check_case(pr, ta, tb, s, 1.0f, 0.0f, seed++, true, false, pad);
          check_case(pr, ta, tb, s, 1.0f, 0.5f, seed++, false, true, pad);
          check_case(pr, ta, tb, s, -1.0f, 0.0f, seed++, true, true, pad);
        }
      }
}

// A given by row indices (Operand::rows: repeats, descending runs, far apart) gives the same bits as
// the product of the gathered copy: every ISA, both precisions (bf16 copies the rows), past KC and
// NC, short panels, and the threaded split (which shifts the indices).
TEST_P(GemmIsa, IndexedRowsOfAEqualTheGatheredCopy) {
  GemmSettings restore;
  const auto [isa, pr] = GetParam();
  gemm::set_isa(isa);
  const Shape shapes[] = {{1, 1, 1}, {5, 3, 7}, {13, 70, 257}, {97, 513, 33}, {301, 257, 40}};
  uint64_t seed = 40;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(gemm::isa_name(isa) + " m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
                 " k=" + std::to_string(s.k));
    const int64_t stored = 2 * s.m + 5, lda = s.k + 3;
    const auto a = random_floats(size_t(stored * lda), seed++), b = random_floats(size_t(s.k * s.n), seed++);
    std::vector<int64_t> rows(size_t(s.m));
    std::mt19937 rng(unsigned(seed++));
    for (int64_t& r : rows) r = int64_t(rng() % uint64_t(stored));
    std::vector<float> gathered(size_t(s.m * lda));
    for (int64_t i = 0; i < s.m; ++i) std::copy_n(&a[size_t(rows[size_t(i)] * lda)], lda, &gathered[size_t(i * lda)]);
    auto want = random_floats(size_t(s.m * s.n), seed++), got = want;
    gemm::gemm(pr, s.m, s.n, s.k, 1.5f, {gathered.data(), nullptr, lda}, {b.data(), nullptr, s.n}, 0.5f, want.data(),
               s.n);
    gemm::gemm(pr, s.m, s.n, s.k, 1.5f, {a.data(), nullptr, lda, false, rows.data()}, {b.data(), nullptr, s.n}, 0.5f,
               got.data(), s.n);
    ASSERT_EQ(got, want);
  }
}

// B packed once (gemm::PackedB) gives the same bits as the product of B as stored: every ISA, both
// precisions, fp32 and bf16 B, transposed or not, past KC and NC, indexed rows of A, the threaded
// split; and so does a part at the origin of the pack (the first n columns and k rows).
TEST_P(GemmIsa, PackedBEqualsTheProductOfBAsStored) {
  GemmSettings restore;
  const auto [isa, pr] = GetParam();
  gemm::set_isa(isa);
  const Shape shapes[] = {{1, 1, 1}, {5, 3, 7}, {13, 70, 257}, {97, 513, 33}, {301, 257, 40}, {600, 130, 300}};
  uint64_t seed = 70;
  for (const Shape& s : shapes)
    for (bool tb : {false, true})
      for (bool b_bf16 : {false, true}) {
        SCOPED_TRACE(gemm::isa_name(isa) + " m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
                     " k=" + std::to_string(s.k) + (tb ? " B^T" : "") + (b_bf16 ? " bf16 B" : ""));
        const int64_t lda = s.k + 3, ldb = (tb ? s.k : s.n) + 5;
        const auto a = random_floats(size_t(s.m * lda), seed++), bf = random_floats(size_t((tb ? s.n : s.k) * ldb), seed++);
        std::vector<uint16_t> b16;
        for (float x : bf) b16.push_back(f32_to_bf16(x));
        const gemm::Operand b = b_bf16 ? gemm::Operand{nullptr, b16.data(), ldb, tb} : gemm::Operand{bf.data(), nullptr, ldb, tb};
        std::vector<int64_t> rows(size_t(s.m));
        for (int64_t i = 0; i < s.m; ++i) rows[size_t(i)] = (i * 7) % s.m;
        gemm::PackedB packed;
        packed.pack(pr, s.n, s.k, b);
        // the part: about half the columns, and a depth every layout takes
        const int64_t n2 = s.n / 2 + 1, k2 = s.k > 2 ? s.k / 4 * 2 : s.k;
        ASSERT_TRUE(packed.takes_rows(k2));
        for (const auto& [n, k] : {std::pair{s.n, s.k}, std::pair{n2, k2}})
          for (const int64_t* idx : {static_cast<const int64_t*>(nullptr), static_cast<const int64_t*>(rows.data())}) {
            const gemm::Operand op_a{a.data(), nullptr, lda, false, idx};
            auto want = random_floats(size_t(s.m * n), seed++), got = want;
            gemm::gemm(pr, s.m, n, k, 1.5f, op_a, b, 0.5f, want.data(), n);
            gemm::gemm(s.m, n, k, 1.5f, op_a, packed, 0.5f, got.data(), n);
            ASSERT_EQ(got, want) << "n=" << n << " k=" << k << (idx ? " indexed A" : "");
          }
      }
}

TEST(Gemm, PackedBHoldsItsOwnCopyRunsOurKernelsAndRefusesWhatItDoesNotHold) {
  GemmSettings restore;
  auto a = random_floats(4 * 9, 1), b = random_floats(9 * 11, 2);
  std::vector<float> want(4 * 11), got(4 * 11);
  gemm::PackedB packed;
  EXPECT_THROW(gemm::gemm(4, 11, 9, 1.0f, {a.data(), nullptr, 9}, packed, 0.0f, got.data(), 11), std::logic_error);
  gemm::sgemm(false, false, 4, 11, 9, 1.0f, a.data(), 9, b.data(), 11, 0.0f, want.data(), 11);
  packed.pack(gemm::Precision::f32, 11, 9, {b.data(), nullptr, 11});
  std::fill(b.begin(), b.end(), std::numeric_limits<float>::quiet_NaN());  // the pack does not read b again
  gemm::set_backend(gemm::Backend::openblas);  // nor does OpenBLAS run a packed product
  gemm::gemm(4, 11, 9, 1.0f, {a.data(), nullptr, 9}, packed, 0.0f, got.data(), 11);
  EXPECT_EQ(got, want);
  gemm::set_backend(gemm::Backend::native);
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{12, 9}, {11, 10}, {0, 9}, {11, 0}})
    EXPECT_THROW(gemm::gemm(4, n, k, 1.0f, {a.data(), nullptr, 9}, packed, 0.0f, got.data(), 11),
                 std::invalid_argument);
  EXPECT_THROW(packed.pack(gemm::Precision::f32, 0, 9, {b.data(), nullptr, 11}), std::invalid_argument);
  const std::vector<gemm::Isa> isas = runnable_isas();
  if (isas.size() > 1) {  // a pack is laid out for the kernels of its ISA
    gemm::set_isa(isas.front() == gemm::current_isa() ? isas.back() : isas.front());
    EXPECT_THROW(gemm::gemm(4, 11, 9, 1.0f, {a.data(), nullptr, 9}, packed, 0.0f, got.data(), 11), std::logic_error);
  }
  if (std::find(isas.begin(), isas.end(), gemm::Isa::avx512_bf16) != isas.end()) {
    // bf16 pairs: a part must end on a whole pair (or be all of op(B))
    gemm::set_isa(gemm::Isa::avx512_bf16);
    packed.pack(gemm::Precision::bf16, 11, 9, {b.data(), nullptr, 11});
    EXPECT_TRUE(packed.takes_rows(9));
    EXPECT_TRUE(packed.takes_rows(8));
    EXPECT_FALSE(packed.takes_rows(7));
    EXPECT_THROW(gemm::gemm(4, 11, 7, 1.0f, {a.data(), nullptr, 9}, packed, 0.0f, got.data(), 11),
                 std::invalid_argument);
  }
}

TEST(Gemm, IndexedRowsOnOpenBlasAndBadIndexedOperandsAreRefusedOrCopied) {
  GemmSettings restore;
  const auto a = random_floats(40 * 9, 1), b = random_floats(9 * 11, 2);
  const std::vector<int64_t> rows{39, 0, 7, 7, 20};
  std::vector<float> want(5 * 11), got(5 * 11), gathered;
  for (int64_t r : rows) gathered.insert(gathered.end(), &a[size_t(r * 9)], &a[size_t(r * 9 + 9)]);
  gemm::set_backend(gemm::Backend::openblas);
  gemm::sgemm(false, false, 5, 11, 9, 1.0f, gathered.data(), 9, b.data(), 11, 0.0f, want.data(), 11);
  gemm::gemm(gemm::Precision::f32, 5, 11, 9, 1.0f, {a.data(), nullptr, 9, false, rows.data()}, {b.data(), nullptr, 11},
             0.0f, got.data(), 11);
  EXPECT_EQ(got, want);
  gemm::set_backend(gemm::Backend::native);
  const uint16_t a16[9] = {};
  for (const auto& [oa, ob] : {std::pair<gemm::Operand, gemm::Operand>{{a.data(), nullptr, 9, true, rows.data()}, {b.data(), nullptr, 11}},
                               {{nullptr, a16, 9, false, rows.data()}, {b.data(), nullptr, 11}},
                               {{a.data(), nullptr, 9}, {b.data(), nullptr, 11, false, rows.data()}}})
    EXPECT_THROW(gemm::gemm(gemm::Precision::f32, 5, 11, 9, 1.0f, oa, ob, 0.0f, got.data(), 11), std::invalid_argument);
}

TEST(Gemm, OperandWithBothOrNoPointersIsRefused) {
  float x = 1.0f, c = 0.0f;
  const uint16_t x16 = f32_to_bf16(1.0f);
  EXPECT_THROW(gemm::gemm(gemm::Precision::f32, 1, 1, 1, 1.0f, {&x, &x16, 1}, {&x, nullptr, 1}, 0.0f, &c, 1),
               std::invalid_argument);
  EXPECT_THROW(gemm::gemm(gemm::Precision::f32, 1, 1, 1, 1.0f, {&x, nullptr, 1}, {}, 0.0f, &c, 1),
               std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(RunnableIsas, GemmIsa,
                         ::testing::Combine(::testing::ValuesIn(runnable_isas()),
                                            ::testing::Values(gemm::Precision::f32, gemm::Precision::bf16)),
                         [](const auto& info) {
                           return gemm::isa_name(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) == gemm::Precision::f32 ? "_products_f32"
                                                                                   : "_products_bf16");
                         });

TEST(Gemm, ThreadedSplitEqualsOneThreadBitForBit) {
  const Shape s{301, 257, 300};  // both split directions are exercised by the two transposes below
  for (bool wide : {false, true}) {
    const int64_t m = wide ? 40 : s.m, n = wide ? 700 : s.n;
    const auto a = random_floats(size_t(m * s.k), 3), b = random_floats(size_t(s.k * n), 4);
    std::vector<float> one(size_t(m * n)), two(size_t(m * n));
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    gemm::sgemm(false, false, m, n, s.k, 1.0f, a.data(), s.k, b.data(), n, 0.0f, one.data(), n);
    omp_set_num_threads(std::max(2, threads));
    gemm::sgemm(false, false, m, n, s.k, 1.0f, a.data(), s.k, b.data(), n, 0.0f, two.data(), n);
    omp_set_num_threads(threads);
    EXPECT_EQ(one, two) << (wide ? "split by columns" : "split by rows");
  }
}

TEST(Gemm, ZeroDepthScalesC) {
  std::vector<float> c{1.0f, 2.0f, 3.0f, 4.0f};
  gemm::sgemm(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.5f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{0.5f, 1.0f, 1.5f, 2.0f}));
  gemm::sgemm(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>(4, 0.0f)));
}

TEST(Gemm, OpenBlasBackendAgrees) {
  GemmSettings restore;
  gemm::set_backend(gemm::Backend::openblas);
  EXPECT_EQ(gemm::describe().rfind("openblas/", 0), 0u);
  check_case(gemm::Precision::f32, false, true, {37, 45, 129}, 1.0f, 0.5f, 99);
}

TEST(Gemm, NamesRoundTripAndUnknownIsRefused) {
  for (gemm::Isa isa : {gemm::Isa::portable, gemm::Isa::avx2, gemm::Isa::avx512, gemm::Isa::avx512_bf16})
    EXPECT_EQ(gemm::parse_isa(gemm::isa_name(isa)), isa);
  EXPECT_THROW(gemm::parse_isa("sse9"), std::invalid_argument);
  EXPECT_EQ(gemm::current_isa(), gemm::best_isa());
}

}  // namespace
}  // namespace longctx::testing
