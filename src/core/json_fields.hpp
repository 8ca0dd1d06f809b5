// Config files are strict: a misspelt field is an error, not a silently ignored default. Option
// structs that list their fields once (longctx/core/fields.hpp) are read and written here.
#pragma once
#include <longctx/core/error.hpp>
#include <longctx/core/fields.hpp>
#include <nlohmann/json.hpp>

#include <charconv>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

namespace longctx {

// Throws "<what>: unknown field 'x'<hint>" for the first key of `j` not in `known`.
template <class Names>
void check_known_fields(const nlohmann::json& j, const Names& known, const std::string& what,
                        const std::string& hint = "") {
  for (const auto& [key, value] : j.items()) {
    bool ok = false;
    for (const auto& k : known) ok |= key == k;
    LONGCTX_CHECK(ok, what, ": unknown field '", key, "'", hint);
  }
}
inline void check_known_fields(const nlohmann::json& j, std::initializer_list<const char*> known, const char* what) {
  check_known_fields(j, std::vector<std::string>(known.begin(), known.end()), what);
}

// The names in an options struct's fields() list.
template <class O>
std::vector<std::string> field_names(O o) {
  std::vector<std::string> names;
  o.fields([&](const char* name, auto&, const char*) { names.emplace_back(name); });
  return names;
}

// Sets every field present in `j` (others keep their value); enums by name.
template <class O>
void read_fields(const nlohmann::json& j, O& o) {
  o.fields([&](const char* name, auto& field, const char*) {
    using T = std::decay_t<decltype(field)>;
    if (!j.contains(name)) return;
    if constexpr (is_named_enum<T>::value)
      field = enum_from_name<T>(j.at(name).get<std::string>(), name);
    else
      field = j.at(name).get<T>();
  });
}

// Writes every field; a float as the shortest decimal that reads back to it (0.95, not
// 0.949999988079071).
template <class O>
void write_fields(O o, nlohmann::json& j) {
  o.fields([&](const char* name, auto& field, const char*) {
    using T = std::decay_t<decltype(field)>;
    if constexpr (is_named_enum<T>::value) {
      j[name] = enum_name(field);
    } else if constexpr (std::is_same_v<T, float>) {
      char buf[32];
      const auto end = std::to_chars(buf, buf + sizeof buf, field).ptr;
      j[name] = std::strtod(std::string(buf, end).c_str(), nullptr);
    } else {
      j[name] = field;
    }
  });
}

}  // namespace longctx
