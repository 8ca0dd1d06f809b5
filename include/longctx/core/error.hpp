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

// An exception's message without the library's "longctx: " prefix, for wrapping it in another
// message (or printing it after the CLI's own "longctx: error: ") without repeating the prefix.
inline std::string message_of(const std::exception& e) {
  const std::string what = e.what(), prefix = "longctx: ";
  return what.compare(0, prefix.size(), prefix) == 0 ? what.substr(prefix.size()) : what;
}

}  // namespace longctx

// LONGCTX_CHECK(cond, "what", value, ...) throws std::invalid_argument("longctx: what value ...").
#define LONGCTX_CHECK(cond, ...)                                                       \
  do {                                                                                 \
    if (!(cond)) throw std::invalid_argument(::longctx::concat("longctx: ", __VA_ARGS__)); \
  } while (0)
