// Per-token loops of the MoE layer, threaded over fixed chunks of tokens (each chunk owns its
// tokens' outputs, so results do not depend on the thread count).
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/parallel.hpp"

namespace longctx::moe::detail {

template <class Fn>
void for_token_chunks(int64_t n, Fn&& fn) {
  constexpr int64_t chunk = 256;
  parallel::run((n + chunk - 1) / chunk, parallel::Schedule::dynamic, [](int) { return 0; },
                [&](int64_t c, int) { fn(c * chunk, std::min(n, (c + 1) * chunk)); });
}

}  // namespace longctx::moe::detail
