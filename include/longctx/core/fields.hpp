// Option structs that list their fields once. Each kernel's options struct has a member
//   template <class V> void fields(V&& v) { v("block_size", block_size, "keys per block"); ... }
// naming every user-settable field with its help text; the default is the member's initializer.
// One list then drives config JSON read/write, the unknown-field check and bench flags
// (src/core/json_fields.hpp, bench/option_flags.hpp), so a field is never spelt twice.
// Enum fields name their values through EnumNames<E> (values 0, 1, ... in order).
#pragma once
#include <longctx/core/error.hpp>

#include <array>
#include <cstddef>
#include <string>
#include <type_traits>

namespace longctx {

// Specialise next to an enum: static constexpr std::array<const char*, N> names{...};
template <class E>
struct EnumNames;

template <class E>
const char* enum_name(E e) {
  return EnumNames<E>::names.at(size_t(e));
}

// "'a' or 'b'" / "'a', 'b' or 'c'": the choices of an enum, for error messages and help.
template <class E>
std::string enum_choices() {
  const auto& n = EnumNames<E>::names;
  std::string s;
  for (size_t i = 0; i < n.size(); ++i) s += (i == 0 ? "" : i + 1 == n.size() ? " or " : ", ") + concat("'", n[i], "'");
  return s;
}

// The value named `name`; throws "<field> must be 'a' or 'b', got 'x'".
template <class E>
E enum_from_name(const std::string& name, const char* field) {
  const auto& n = EnumNames<E>::names;
  for (size_t i = 0; i < n.size(); ++i)
    if (name == n[i]) return E(i);
  LONGCTX_CHECK(false, field, " must be ", enum_choices<E>(), ", got '", name, "'");
  return E{};
}

template <class T, class = void>
struct is_named_enum : std::false_type {};
template <class T>
struct is_named_enum<T, std::void_t<decltype(EnumNames<T>::names)>> : std::true_type {};

// Throws "<prefix><field> must be <rule>, got <value>" when !ok: the one shape of every
// option check (prefix names the caller, e.g. "moba: " or "model config: layer 2: moba ").
template <class T>
void require(bool ok, const std::string& prefix, const char* field, const T& value, const std::string& rule) {
  LONGCTX_CHECK(ok, prefix, field, " must be ", rule, ", got ", value);
}

}  // namespace longctx
