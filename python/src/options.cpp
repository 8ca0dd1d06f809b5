#include "options.hpp"

#include <longctx/core/error.hpp>

#include <algorithm>
#include <cmath>

namespace longctx::python {

namespace {

std::string type_name(py::handle h) { return py::str(py::type::of(h).attr("__name__")); }

// (name, help) of every field of an options struct.
template <class O>
std::vector<std::pair<std::string, std::string>> fields_help(O o) {
  std::vector<std::pair<std::string, std::string>> out;
  o.fields([&](const char* name, auto&, const char* help) { out.emplace_back(name, help); });
  return out;
}

}  // namespace

nlohmann::json json_of(py::handle options, const std::string& who) {
  nlohmann::json j = nlohmann::json::object();
  if (options.is_none()) return j;
  if (!py::isinstance<py::dict>(options))
    throw py::type_error(concat("longctx: ", who, ": options must be a dict, got ", type_name(options)));
  for (auto [key, value] : py::reinterpret_borrow<py::dict>(options)) {
    const std::string k = py::str(key);
    if (py::isinstance<py::bool_>(value)) j[k] = value.cast<bool>();
    else if (py::isinstance<py::int_>(value)) j[k] = value.cast<int64_t>();
    else if (py::isinstance<py::float_>(value)) j[k] = value.cast<double>();
    else if (py::isinstance<py::str>(value)) j[k] = value.cast<std::string>();
    else
      throw py::type_error(concat("longctx: ", who, ": option ", k, " must be a bool, int, float or str, got ",
                                  type_name(value)));
  }
  return j;
}

py::object py_of(const nlohmann::json& j) {
  if (j.is_object()) {
    py::dict d;
    for (const auto& [k, v] : j.items()) d[py::str(k)] = py_of(v);
    return d;
  }
  if (j.is_boolean()) return py::bool_(j.get<bool>());
  if (j.is_number_integer()) return py::int_(j.get<int64_t>());
  if (j.is_number()) return py::float_(j.get<double>());
  if (j.is_string()) return py::str(j.get<std::string>());
  return py::none();
}

float softmax_scale_of(py::handle softmax_scale, const std::string& who) {
  if (softmax_scale.is_none()) return 0.0f;
  if (!py::isinstance<py::float_>(softmax_scale) && !py::isinstance<py::int_>(softmax_scale))
    throw py::type_error(concat("longctx: ", who, ": softmax_scale must be a number or None, got ",
                                type_name(softmax_scale)));
  const float scale = softmax_scale.cast<float>();
  LONGCTX_CHECK(std::isfinite(scale) && scale > 0.0f, who, ": softmax_scale must be finite and > 0 (None: ",
                "1/sqrt(head_dim)), got ", scale);
  return scale;
}

AttentionSpec attention_spec(const std::string& kind, py::handle options, py::handle softmax_scale,
                             const std::string& who) {
  nlohmann::json j = json_of(options, who);
  LONGCTX_CHECK(!j.contains("kind") || j["kind"] == kind, who, ": options name kind ", j["kind"].dump(),
                " but this is ", kind);
  j["kind"] = kind;
  AttentionSpec spec = attention_from_json(j, {}, who);
  const float scale = softmax_scale_of(softmax_scale, who);
  spec.visit([&](auto& o) { o.softmax_scale = scale; });
  spec.validate(who + ": ");
  return spec;
}

FfnSpec ffn_spec(py::handle options, const std::string& who) {
  nlohmann::json j = json_of(options, who);
  LONGCTX_CHECK(!j.contains("kind"), who, ": options must not name a kind (this is the moe FFN)");
  j["kind"] = "moe";
  return ffn_from_json(j, {}, who);
}

void check_max_seqlen(const std::string& who, const char* name, py::handle max_seqlen,
                      const std::vector<int64_t>& cu, int64_t total) {
  if (max_seqlen.is_none()) return;
  if (!py::isinstance<py::int_>(max_seqlen))
    throw py::type_error(concat("longctx: ", who, ": ", name, " must be an int, got ", type_name(max_seqlen)));
  int64_t longest = cu.empty() ? total : 0;
  for (size_t i = 1; i < cu.size(); ++i) longest = std::max(longest, cu[i] - cu[i - 1]);
  const int64_t m = max_seqlen.cast<int64_t>();
  LONGCTX_CHECK(m >= longest, who, ": ", name, " must be >= the longest sequence (", longest, "), got ", m);
}

void bind_options(py::module_& m) {
  m.def(
      "attention_options",
      [](const std::string& kind, py::handle options) {
        return py_of(attention_to_json(attention_spec(kind, options, py::none(), "attention options")));
      },
      py::arg("kind"), py::arg("options") = py::none(),
      "The full options of an attention kind (defaults filled in), checked as the C++ model config checks them.");
  m.def(
      "moe_options", [](py::handle options) { return py_of(ffn_to_json(ffn_spec(options, "moe options"))); },
      py::arg("options") = py::none(), "The full options of the MoE FFN (defaults filled in), checked.");
  m.def(
      "options_help",
      [](const std::string& kind) {
        std::vector<std::pair<std::string, std::string>> fields;
        nlohmann::json defaults;
        if (kind == "moe") {
          fields = fields_help(FfnSpec{});
          defaults = ffn_to_json(FfnSpec{"moe"});
        } else {
          const AttentionSpec spec = AttentionSpec::defaults(attention_kind_from_name(kind));
          spec.visit([&](auto o) { fields = fields_help(o); });
          defaults = attention_to_json(spec);
        }
        py::list out;
        for (const auto& [name, help] : fields) out.append(py::make_tuple(name, py_of(defaults[name]), help));
        return out;
      },
      py::arg("kind"), "[(name, default, help)] of an attention kind's options, or of 'moe'.");
}

}  // namespace longctx::python
