// Config files are strict: a misspelt field is an error, not a silently ignored default.
#pragma once
#include <longctx/core/error.hpp>
#include <nlohmann/json.hpp>

#include <initializer_list>
#include <string>

namespace longctx {

// Throws "<what>: unknown field 'x'" for the first key of `j` not in `known`.
inline void check_known_fields(const nlohmann::json& j, std::initializer_list<const char*> known, const char* what) {
  for (const auto& [key, value] : j.items()) {
    bool ok = false;
    for (const char* k : known) ok |= key == k;
    LONGCTX_CHECK(ok, what, ": unknown field '", key, "'");
  }
}

}  // namespace longctx
