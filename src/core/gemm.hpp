// Row-major GEMM for every product in longctx: our own cache-blocked, register-blocked kernels
// (core/gemm_blocked.hpp), picked at run time for the widest instructions the CPU has
// (AVX512_BF16, AVX-512F, AVX2+FMA, portable), or OpenBLAS when asked (for comparison).
// A call from inside an OpenMP region runs on the calling thread only, so tiles never nest
// threads; a call from outside splits C between the threads. Every element of C is summed in
// the same order whatever the thread count: results are deterministic.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace longctx::gemm {

// fp32: fp32 products. bf16: A and B rounded to bf16 (round to nearest even), products summed in
// fp32 (vdpbf16ps where the CPU has AVX512_BF16, the same rounding and fp32 FMAs elsewhere).
enum class Precision { f32, bf16 };

// One input matrix as stored: fp32 or bf16 (exactly one of the pointers set), row stride ld, and
// whether the product uses its transpose. `rows` (A only, fp32, not transposed): row i of A is
// stored row rows[i], read in place by the fp32 kernels (rows gathered by index without a copy;
// bf16 products and OpenBLAS copy them first).
struct Operand {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  int64_t ld = 0;
  bool trans = false;
  const int64_t* rows = nullptr;
  // The same matrix seen from stored element `e` on (a row or column offset).
  Operand shifted(int64_t e) const { return {f32 ? f32 + e : nullptr, bf16 ? bf16 + e : nullptr, ld, trans, rows}; }
};

// C[m x n] = alpha * op(A) * op(B) + beta * C, op(X) = X^T when X.trans. C is not read when
// beta == 0. bf16 operands are read as stored (no copy to fp32): with Precision::bf16 a bf16 A in
// row-major order is broadcast by the kernel straight from memory.
void gemm(Precision precision, int64_t m, int64_t n, int64_t k, float alpha, const Operand& a, const Operand& b,
          float beta, float* c, int64_t ldc);

// The same with fp32 operands: lda/ldb/ldc are row strides of the matrices as stored.
inline void gemm(Precision precision, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm(precision, m, n, k, alpha, Operand{a, nullptr, lda, trans_a}, Operand{b, nullptr, ldb, trans_b}, beta, c, ldc);
}

inline void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm(Precision::f32, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Instruction sets of our kernels, widest last. The default is the widest the CPU runs.
enum class Isa { portable, avx2, avx512, avx512_bf16 };
Isa best_isa();                          // what this CPU supports
Isa current_isa();                       // what gemm() uses now
void set_isa(Isa isa);                   // throws std::invalid_argument if the CPU cannot run it
std::string isa_name(Isa isa);           // "avx512_bf16", "avx512", "avx2", "portable"
Isa parse_isa(const std::string& name);  // the inverse; throws on an unknown name

// Who runs gemm(): our kernels (default) or OpenBLAS (fp32 only; bf16 calls stay ours).
enum class Backend { native, openblas };
Backend current_backend();
void set_backend(Backend backend);
// "native/avx512_bf16", "openblas/Haswell" and the like: a backend and the kernels it picks
// (by default the backend in use).
std::string describe(Backend backend);
inline std::string describe() { return describe(current_backend()); }

// Threads OpenBLAS may use for a call made outside any parallel region.
void set_blas_threads(int n);

// op(B) (k x n) packed once for several products that share it (one block of keys against many
// tiles of queries): gemm() with a PackedB skips the packing every call would redo, and may use
// only the first columns and rows of op(B) (the strips of a causal tile). The pack holds its own
// copy, in the layout of our kernels for the ISA current at pack() (b may change or go away after
// it); packed products always run our kernels, whatever the backend.
class PackedB {
 public:
  // Packs op(b), n columns, k deep (n, k >= 1), for products of `precision`; the buffer is reused.
  void pack(Precision precision, int64_t n, int64_t k, const Operand& b);
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  // Whether a product may use the first `k` rows of op(B): all of them, or a multiple of the
  // layout's k per element (2 in the bf16 pairs of vdpbf16ps, else 1).
  bool takes_rows(int64_t k) const { return k == k_ || (k >= 1 && k < k_ && k % k_per_elem_ == 0); }

 private:
  friend void gemm(int64_t m, int64_t n, int64_t k, float alpha, const Operand& a, const PackedB& b, float beta,
                   float* c, int64_t ldc);
  Precision precision_ = Precision::f32;
  Isa isa_ = Isa::portable;
  int64_t n_ = 0, k_ = 0, k_per_elem_ = 1;
  std::vector<float> buffer_;  // the packed floats, from the first 64-byte boundary in it (offset_)
  int64_t offset_ = 0;
};

// C[m x n] = alpha * op(A) * op(B)[:k, :n] + beta * C: the first n columns and k rows of the packed
// op(B) (n <= b.n(), b.takes_rows(k); the precision is the pack's), the same bits as gemm() with
// our kernels on that part of B as stored. Throws std::logic_error if the ISA has changed since
// pack() or nothing was packed, std::invalid_argument for a part the pack does not hold.
void gemm(int64_t m, int64_t n, int64_t k, float alpha, const Operand& a, const PackedB& b, float beta, float* c,
          int64_t ldc);

}  // namespace longctx::gemm
