// Argument checks that throw a message naming the argument and the offending value.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace longctx {

template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace longctx

// LONGCTX_CHECK(cond, "what", value, ...) throws std::invalid_argument("longctx: what value ...").
#define LONGCTX_CHECK(cond, ...)                                                       \
  do {                                                                                 \
    if (!(cond)) throw std::invalid_argument(::longctx::concat("longctx: ", __VA_ARGS__)); \
  } while (0)
