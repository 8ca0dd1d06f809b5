// Config files are strict: a misspelt field is an error, not a silently ignored default. Option
// structs that list their fields once (longctx/core/fields.hpp) are read and written here.
#pragma once
#include <longctx/core/error.hpp>
#include <longctx/core/fields.hpp>
#include <nlohmann/json.hpp>

#include <charconv>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <type_traits>
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

// The value of field `name` of `j` as T, or `def` when absent. Strict, so that a config never
// means something other than what it says: an integer field takes only a JSON integer within T's
// range (3.5, true, "4" or 1e30 are refused), a floating field a number, a bool field true or
// false, a string field a string. Throws "<what>: <name> must be <type>, got <value>".
template <class T>
T read_value(const nlohmann::json& j, const char* name, T def, const std::string& what) {
  const auto it = j.find(name);
  if (it == j.end()) return def;
  const nlohmann::json& v = *it;
  auto refuse = [&](const char* type) { LONGCTX_CHECK(false, what, ": ", name, " must be ", type, ", got ", v.dump()); };
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) refuse("true or false");
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) refuse("an integer");
    const bool fits = v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t(std::numeric_limits<T>::max())
                                             : v.get<int64_t>() >= int64_t(std::numeric_limits<T>::min()) &&
                                                   (std::is_unsigned_v<T> || v.get<int64_t>() <= int64_t(std::numeric_limits<T>::max()));
    if (!fits) refuse(std::is_unsigned_v<T> ? "a non-negative integer in range" : "an integer in range");
    return v.get<T>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) refuse("a number");
    return v.get<T>();
  } else {
    if (!v.is_string()) refuse("a string");
    return v.get<T>();
  }
}

// The names in an options struct's fields() list.
template <class O>
std::vector<std::string> field_names(O o) {
  std::vector<std::string> names;
  o.fields([&](const char* name, auto&, const char*) { names.emplace_back(name); });
  return names;
}

// Sets every field present in `j` (others keep their value; read_value's strict types); enums
// by name. `what` names the object in errors.
template <class O>
void read_fields(const nlohmann::json& j, O& o, const std::string& what) {
  o.fields([&](const char* name, auto& field, const char*) {
    using T = std::decay_t<decltype(field)>;
    if (!j.contains(name)) return;
    if constexpr (is_named_enum<T>::value)
      field = enum_from_name<T>(read_value<std::string>(j, name, "", what), name);
    else
      field = read_value<T>(j, name, field, what);
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
