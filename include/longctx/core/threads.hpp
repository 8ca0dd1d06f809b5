// The thread count every kernel and layer runs with (OpenMP). Results are deterministic for a
// fixed count (docs/DESIGN.md "Determinism").
#pragma once

namespace longctx::parallel {

int max_threads();
// n >= 1; throws std::invalid_argument naming n otherwise.
void set_threads(int n);

}  // namespace longctx::parallel
