#include "core/gemm.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#include "core/gemm_isa.hpp"

extern "C" char* openblas_get_corename(void);

namespace longctx::gemm {
namespace {

bool cpu_runs(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();  // g_isa below is initialised during static construction
  switch (isa) {
    case Isa::portable:
      return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f");
    case Isa::avx512_bf16:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  }
  return false;
#else
  return isa == Isa::portable;
#endif
}

std::atomic<Isa> g_isa{best_isa()};
std::atomic<Backend> g_backend{Backend::native};

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float, FreeDeleter>;
Buffer aligned_floats(int64_t n) {
  return Buffer(static_cast<float*>(std::aligned_alloc(64, size_t(n) * sizeof(float))));
}

// Per-thread packing buffers, allocated on a thread's first call.
struct Scratch {
  Buffer a = aligned_floats(detail::kPackA), b = aligned_floats(detail::kPackB);
};

// The kernels gemm() runs now for a product of this precision.
const detail::Kernels& kernels(Isa isa, bool bf16) {
#if defined(__x86_64__)
  switch (isa) {
    case Isa::avx512_bf16:
      return bf16 ? detail::kAvx512Bf16 : detail::kAvx512;
    case Isa::avx512:
      return detail::kAvx512;
    case Isa::avx2:
      return detail::kAvx2;
    case Isa::portable:
      break;
  }
#else
  (void)isa, (void)bf16;
#endif
  return detail::kPortable;
}

void run_one_thread(const detail::Call& c) {
  thread_local Scratch s;
  kernels(g_isa.load(std::memory_order_relaxed), c.bf16).run(c, s.a.get(), s.b.get());
}

// Splits C into `threads` slabs of whole rows (or whole columns when C is wide), in multiples of
// every kernel's tile, and runs them side by side; each element's sum is the same as one thread's.
// (A packed B is split by rows only.)
void run_threaded(const detail::Call& c, int threads) {
  const bool by_rows = c.m >= c.n || c.packed_b;
  const int64_t unit = by_rows ? 12 : 64, extent = by_rows ? c.m : c.n;
  const int64_t units = (extent + unit - 1) / unit, per = (units + threads - 1) / threads * unit;
#pragma omp parallel num_threads(threads)
  {
    const int64_t lo = omp_get_thread_num() * per, hi = std::min(extent, lo + per);
    if (lo < hi) {
      detail::Call part = c;
      if (by_rows) {
        part.m = hi - lo;
        if (c.a.rows)
          part.a.rows += lo;
        else
          part.a = c.a.shifted(c.a.trans ? lo : lo * c.a.ld);
        part.c += lo * c.ldc;
      } else {
        part.n = hi - lo;
        part.b = c.b.shifted(c.b.trans ? lo * c.b.ld : lo);
        part.c += lo;
      }
      run_one_thread(part);
    }
  }
}

}  // namespace

Isa best_isa() {
  for (Isa isa : {Isa::avx512_bf16, Isa::avx512, Isa::avx2})
    if (cpu_runs(isa)) return isa;
  return Isa::portable;
}

Isa current_isa() { return g_isa.load(); }

void set_isa(Isa isa) {
  if (!cpu_runs(isa)) throw std::invalid_argument("gemm: this CPU cannot run the " + isa_name(isa) + " kernels");
  g_isa.store(isa);
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::portable:
      return "portable";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    case Isa::avx512_bf16:
      return "avx512_bf16";
  }
  return "?";
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::avx512_bf16})
    if (isa_name(isa) == name) return isa;
  throw std::invalid_argument("gemm: unknown instruction set '" + name +
                              "' (expected avx512_bf16, avx512, avx2 or portable)");
}

Backend current_backend() { return g_backend.load(); }
void set_backend(Backend backend) { g_backend.store(backend); }

std::string describe(Backend backend) {
  if (backend == Backend::openblas) return std::string("openblas/") + openblas_get_corename();
  return "native/" + isa_name(current_isa());
}

namespace {

void check_operand(const Operand& x, bool is_a) {
  if (bool(x.f32) == bool(x.bf16))
    throw std::invalid_argument("gemm: each operand needs exactly one of its fp32 / bf16 pointers");
  if (x.rows && (!is_a || !x.f32 || x.trans))
    throw std::invalid_argument("gemm: row indices are for an fp32 A that is not transposed");
}

// Rows m of A by index (Operand::rows) copied out, k each: for the kernels that do not index rows.
std::vector<float> gather_rows(const Operand& a, int64_t m, int64_t k) {
  std::vector<float> gathered(size_t(m * k));
  for (int64_t i = 0; i < m; ++i) std::copy_n(a.f32 + a.rows[i] * a.ld, k, &gathered[size_t(i * k)]);
  return gathered;
}

// A call of our kernels, on every thread when it is large enough and not made from a parallel region.
void run(const detail::Call& call) {
  // Below ~2 M multiply-adds a fork/join costs more than it saves.
  const int threads = omp_in_parallel() || call.m * call.n * call.k < (int64_t(1) << 21) ? 1 : omp_get_max_threads();
  if (threads > 1)
    run_threaded(call, threads);
  else
    run_one_thread(call);
}

}  // namespace

void gemm(Precision precision, int64_t m, int64_t n, int64_t k, float alpha, const Operand& a, const Operand& b,
          float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // C = beta * C
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  check_operand(a, true);
  check_operand(b, false);
  const bool bf16 = precision == Precision::bf16;
  if (a.rows && (bf16 || current_backend() == Backend::openblas)) {  // only the fp32 kernels index rows
    const std::vector<float> gathered = gather_rows(a, m, k);
    return gemm(precision, m, n, k, alpha, Operand{gathered.data(), nullptr, k}, b, beta, c, ldc);
  }
  if (!bf16 && a.f32 && b.f32 && current_backend() == Backend::openblas) {
    cblas_sgemm(CblasRowMajor, a.trans ? CblasTrans : CblasNoTrans, b.trans ? CblasTrans : CblasNoTrans, blasint(m),
                blasint(n), blasint(k), alpha, a.f32, blasint(a.ld), b.f32, blasint(b.ld), beta, c, blasint(ldc));
    return;
  }
  run({bf16, m, n, k, alpha, a, b, beta, c, ldc});
}

void PackedB::pack(Precision precision, int64_t n, int64_t k, const Operand& b) {
  check_operand(b, false);
  if (n <= 0 || k <= 0) throw std::invalid_argument("gemm: a packed B needs n, k >= 1");
  precision_ = precision, isa_ = current_isa(), n_ = n, k_ = k;
  const detail::Call call{precision == Precision::bf16, 0, n, k, 1.0f, {}, b, 0.0f, nullptr, 0};
  const detail::Kernels& kern = kernels(isa_, call.bf16);
  k_per_elem_ = kern.k_per_elem;
  buffer_.resize(size_t(kern.pack_b(call, nullptr) + 16));
  const uintptr_t misaligned = reinterpret_cast<uintptr_t>(buffer_.data()) % 64 / sizeof(float);
  offset_ = misaligned ? 16 - int64_t(misaligned) : 0;
  kern.pack_b(call, buffer_.data() + offset_);
}

void gemm(int64_t m, int64_t n, int64_t k, float alpha, const Operand& a, const PackedB& b, float beta, float* c,
          int64_t ldc) {
  if (b.buffer_.empty()) throw std::logic_error("gemm: the B operand was never packed");
  if (b.isa_ != current_isa())
    throw std::logic_error("gemm: B was packed for the " + isa_name(b.isa_) + " kernels, the current ones are " +
                           isa_name(current_isa()));
  if (n < 1 || n > b.n_ || !b.takes_rows(k))
    throw std::invalid_argument("gemm: the packed B holds no " + std::to_string(k) + " x " + std::to_string(n) +
                                " part at its origin");
  if (m <= 0) return;
  check_operand(a, true);
  const bool bf16 = b.precision_ == Precision::bf16;
  if (a.rows && bf16) {  // only the fp32 kernels index rows
    const std::vector<float> gathered = gather_rows(a, m, k);
    return gemm(m, n, k, alpha, Operand{gathered.data(), nullptr, k}, b, beta, c, ldc);
  }
  detail::Call call{bf16, m, n, k, alpha, a, {}, beta, c, ldc};
  call.packed_b = b.buffer_.data() + b.offset_;
  call.packed_n = b.n_, call.packed_k = b.k_;
  run(call);
}

void set_blas_threads(int n) { openblas_set_num_threads(n); }

}  // namespace longctx::gemm
