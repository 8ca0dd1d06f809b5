#include "nn/swiglu.hpp"

#include <algorithm>
#include <cstring>
#include <memory>

#include "core/gemm.hpp"
#include "core/parallel.hpp"
#include "core/simd.hpp"

namespace longctx::swiglu {

namespace {

// h = silu(a) o b
LONGCTX_SIMD_CLONES void gate_forward(const float* a, const float* b, float* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] * simd::sigmoid(a[i]) * b[i];
}

// In: dh in `da`. Out: da = dh o b o silu'(a), db = dh o silu(a), h = silu(a) o b;
// silu'(a) = s (1 + a (1 - s)), s = simd::sigmoid(a).
LONGCTX_SIMD_CLONES void gate_backward(const float* a, const float* b, float* da, float* db, float* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = simd::sigmoid(a[i]), silu = a[i] * s, dh = da[i];
    h[i] = silu * b[i];
    db[i] = dh * silu;
    da[i] = dh * b[i] * s * (1.0f + a[i] * (1.0f - s));
  }
}

struct Tile {
  int64_t group, row0, rows;
};

std::vector<Tile> row_tiles(const std::vector<Group>& groups) {
  std::vector<Tile> tiles;
  for (int64_t g = 0; g < int64_t(groups.size()); ++g)
    for (int64_t r = 0; r < groups[size_t(g)].rows; r += kRowTile)
      tiles.push_back({g, r, std::min(kRowTile, groups[size_t(g)].rows - r)});
  return tiles;
}

struct Buffer {
  std::unique_ptr<float[]> p;
  explicit Buffer(int64_t n) : p(new float[size_t(std::max<int64_t>(n, 1))]) {}
  float* get() const { return p.get(); }
};

}  // namespace

void forward(const std::vector<Group>& groups, int64_t d, int64_t f) {
  const std::vector<Tile> tiles = row_tiles(groups);
  parallel::run(
      int64_t(tiles.size()), parallel::Schedule::dynamic, [&](int) { return Buffer(kRowTile * f); },
      [&](int64_t i, Buffer& h) {
        const Tile& t = tiles[size_t(i)];
        const Group& g = groups[size_t(t.group)];
        const float* x = g.x + t.row0 * d;
        float *a = g.a + t.row0 * f, *b = g.b + t.row0 * f;
        gemm::gemm(g.precision, false, false, t.rows, f, d, 1.0f, x, d, g.w1, f, 0.0f, a, f);
        gemm::gemm(g.precision, false, false, t.rows, f, d, 1.0f, x, d, g.w3, f, 0.0f, b, f);
        gate_forward(a, b, h.get(), t.rows * f);
        gemm::gemm(g.precision, false, false, t.rows, d, f, 1.0f, h.get(), f, g.w2, d, 0.0f, g.y + t.row0 * d, d);
      });
}

void backward(const std::vector<Group>& groups, int64_t d, int64_t f) {
  int64_t total = 0;
  std::vector<int64_t> offset;
  for (const Group& g : groups) {
    offset.push_back(total);
    total += g.rows;
  }
  // h, da, db of every row, kept for the weight gradients
  Buffer h(total * f), da(total * f), db(total * f);

  // Phase 1, row tiles: dh = dy W2^T -> da, db, h -> dx = da W1^T + db W3^T.
  const std::vector<Tile> tiles = row_tiles(groups);
  parallel::run(int64_t(tiles.size()), parallel::Schedule::dynamic, [](int) { return 0; }, [&](int64_t i, int) {
    const Tile& t = tiles[size_t(i)];
    const Group& g = groups[size_t(t.group)];
    const int64_t r = (offset[size_t(t.group)] + t.row0) * f, n = t.rows;
    gemm::gemm(g.precision, false, true, n, f, d, 1.0f, g.dy + t.row0 * d, d, g.w2, d, 0.0f, da.get() + r, f);
    gate_backward(g.a + t.row0 * f, g.b + t.row0 * f, da.get() + r, db.get() + r, h.get() + r, n * f);
    float* dx = g.dx + t.row0 * d;
    gemm::gemm(g.precision, false, true, n, d, f, 1.0f, da.get() + r, f, g.w1, f, 0.0f, dx, d);
    gemm::gemm(g.precision, false, true, n, d, f, 1.0f, db.get() + r, f, g.w3, f, 1.0f, dx, d);
  });

  // Phase 2, column slices of d_ff: dW1[:, s] = x^T da[:, s], dW3[:, s] = x^T db[:, s],
  // dW2[s, :] = h[:, s]^T dy. The reduction over rows runs inside one GEMM per slice. At least two
  // slices per thread (so a dense FFN's 3 slices do not leave a thread idle a third of the phase);
  // the slicing does not change any element's sum, so results do not depend on the thread count.
  const int64_t per_group = std::max<int64_t>(1, 2 * parallel::max_threads() / int64_t(groups.size()));
  const int64_t slice = std::min<int64_t>(256, (f + per_group - 1) / per_group + 15) / 16 * 16;
  const int64_t slices = (f + slice - 1) / slice;
  parallel::run(int64_t(groups.size()) * slices, parallel::Schedule::dynamic, [](int) { return 0; },
                [&](int64_t i, int) {
                  const Group& g = groups[size_t(i / slices)];
                  const int64_t f0 = (i % slices) * slice, fs = std::min(slice, f - f0);
                  const int64_t r = offset[size_t(i / slices)] * f;
                  if (g.rows == 0) {
                    for (int64_t row = 0; row < d; ++row) {
                      std::memset(g.dw1 + row * f + f0, 0, size_t(fs) * 4);
                      std::memset(g.dw3 + row * f + f0, 0, size_t(fs) * 4);
                    }
                    std::memset(g.dw2 + f0 * d, 0, size_t(fs * d) * 4);
                    return;
                  }
                  const gemm::Precision pr = g.precision;
                  gemm::gemm(pr, true, false, d, fs, g.rows, 1.0f, g.x, d, da.get() + r + f0, f, 0.0f, g.dw1 + f0, f);
                  gemm::gemm(pr, true, false, d, fs, g.rows, 1.0f, g.x, d, db.get() + r + f0, f, 0.0f, g.dw3 + f0, f);
                  gemm::gemm(pr, true, false, fs, d, g.rows, 1.0f, h.get() + r + f0, f, g.dy, d, 0.0f, g.dw2 + f0 * d,
                             d);
                });
}

}  // namespace longctx::swiglu
