// The thread count every kernel and layer runs with (OpenMP). Results are deterministic for a
// fixed count (docs/DESIGN.md "Determinism").
#pragma once

namespace longctx::parallel {

int max_threads();
// 1 <= n <= 4x the cores; throws std::invalid_argument naming n otherwise.
void set_threads(int n);

}  // namespace longctx::parallel
