// Bench flags from the kernels' own field lists (longctx/core/fields.hpp): one flag
// --<prefix><field, dashed> per field, so a kernel option is named, defaulted and described once.
// A field name that several option structs share (block_size of moba, topk and threshold) is one
// flag that sets all of them. option_args() writes the current values back as flags, for the
// worker processes a bench spawns.
#pragma once
#include <CLI/CLI.hpp>
#include <longctx/attention/kind/kind.hpp>
#include <longctx/core/fields.hpp>

#include <algorithm>
#include <charconv>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace longctx::bench {

namespace detail {

inline std::string dashed(const std::string& prefix, const char* field) {
  std::string s = "--" + prefix + field;
  for (char& c : s) c = c == '_' ? '-' : c;
  return s;
}

template <class T>
std::string to_text(const T& v) {
  if constexpr (is_named_enum<T>::value) {
    return enum_name(v);
  } else if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
  } else {
    return std::to_string(v);
  }
}

template <class T>
std::string type_of() {
  if constexpr (is_named_enum<T>::value) {
    std::string s;
    for (const char* n : EnumNames<T>::names) s += (s.empty() ? "{" : ",") + std::string(n);
    return s + "}";
  } else if constexpr (std::is_same_v<T, bool>) {
    return "BOOL";
  } else if constexpr (std::is_floating_point_v<T>) {
    return "FLOAT";
  } else {
    return "INT";
  }
}

template <class T>
T from_text(const std::string& s, const std::string& flag) {
  if constexpr (is_named_enum<T>::value) {
    return enum_from_name<T>(s, flag.c_str());
  } else if constexpr (std::is_same_v<T, bool>) {
    LONGCTX_CHECK(s == "true" || s == "false" || s == "1" || s == "0", flag, " must be true or false, got '", s, "'");
    return s == "true" || s == "1";
  } else {
    T v{};
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    LONGCTX_CHECK(ec == std::errc() && end == s.data() + s.size(), flag, " must be a number, got '", s, "'");
    return v;
  }
}

}  // namespace detail

// Adds the flags of every struct in `opts` (each with a fields() list) to `c`; defaults are the
// structs' current values.
template <class... O>
void add_option_flags(CLI::App* c, const std::string& prefix, O&... opts) {
  struct Flag {
    std::string help, value, type, kinds;
    std::vector<std::function<void(const std::string&)>> set;
  };
  std::map<std::string, Flag> flags;
  std::vector<std::string> order;
  auto collect = [&](auto& o) {
    o.fields([&](const char* name, auto& field, const char* help) {
      using T = std::decay_t<decltype(field)>;
      const std::string flag = detail::dashed(prefix, name);
      if (!flags.count(flag)) order.push_back(flag), flags[flag] = {help, detail::to_text(field), detail::type_of<T>(), "", {}};
      Flag& f = flags[flag];
      f.kinds += (f.kinds.empty() ? "" : ", ") + std::string(AttentionSpec(o).name());
      f.set.push_back([&field, flag](const std::string& s) { field = detail::from_text<T>(s, flag); });
    });
  };
  (collect(opts), ...);
  for (const std::string& flag : order) {
    const Flag& f = flags[flag];
    c->add_option_function<std::string>(
         flag, [set = f.set](const std::string& s) { for (const auto& fn : set) fn(s); }, f.help + " [" + f.kinds + "]")
        ->type_name(f.type)
        ->default_str(f.value);
  }
}

// The flags that reproduce the structs' values (a shared name once, from the first struct).
template <class... O>
std::vector<std::string> option_args(const std::string& prefix, O... opts) {  // copies: fields() is non-const
  std::vector<std::string> args;
  auto collect = [&](auto& o) {
    o.fields([&](const char* name, auto& field, const char*) {
      const std::string flag = detail::dashed(prefix, name);
      if (std::find(args.begin(), args.end(), flag) == args.end()) {
        args.push_back(flag);
        args.push_back(detail::to_text(field));
      }
    });
  };
  (collect(opts), ...);
  return args;
}

}  // namespace longctx::bench
