#include <longctx/core/error.hpp>
#include <longctx/core/files.hpp>
#include <longctx/model/safetensors.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>

namespace longctx {

namespace {

using nlohmann::json;

[[noreturn]] void corrupt(const std::string& path, const std::string& what) {
  throw std::runtime_error("longctx: corrupt checkpoint " + path + ": " + what);
}

// At most n bytes of s (a hostile file's text inside an error message stays readable).
std::string clip(const std::string& s, size_t n = 120) { return s.size() <= n ? s : s.substr(0, n) + "..."; }

// A name from the file as errors print it: quoted, control bytes escaped, long names cut.
std::string quoted(const std::string& s) {
  std::string q = json(s).dump(-1, ' ', false, json::error_handler_t::replace);  // "..." escaped
  q = clip(q.substr(1, q.size() - 2), 80);
  q.insert(q.begin(), '\'');
  q.push_back('\'');
  return q;
}

// Parses the header refusing what nlohmann::json would accept silently: a key repeated in an
// object (it keeps the last copy) and nesting below entry -> shape (no safetensors header has it).
json parse_strict(std::string_view text, const std::string& path) {
  std::vector<std::set<std::string>> keys;  // the keys seen in each object being parsed
  const json::parser_callback_t check = [&](int depth, json::parse_event_t event, json& parsed) {
    using E = json::parse_event_t;
    if ((event == E::object_start || event == E::array_start) && depth >= 3)
      corrupt(path, "header nests deeper than a safetensors header (name -> entry -> shape)");
    if (event == E::object_start) keys.emplace_back();
    if (event == E::object_end) keys.pop_back();
    if (event == E::key && !keys.back().insert(parsed.get<std::string>()).second)
      corrupt(path, "header repeats the key " + quoted(parsed.get<std::string>()) + " in one object");
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check);
  } catch (const json::exception& e) {
    corrupt(path, "header is not JSON (" + clip(e.what(), 200) + ")");
  }
}

std::map<std::string, std::string> read_metadata(const json& m, const std::string& path) {
  if (!m.is_object()) corrupt(path, "__metadata__ is not an object (got " + clip(m.dump()) + ")");
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string()) corrupt(path, "__metadata__ value " + quoted(k) + " is not a string (got " + clip(v.dump()) + ")");
    out[k] = v.get<std::string>();
  }
  return out;
}

// The element count of a shape, refusing what Tensor could not hold: more than kMaxSafetensorsDims
// dimensions, a non-integer or negative one, or a running product (Tensor's numel) past int64.
int64_t shape_elements(const json& sh, const std::string& tensor, std::vector<int64_t>& shape, const std::string& path) {
  if (!sh.is_array()) corrupt(path, tensor + " shape is not a list (got " + clip(sh.dump()) + ")");
  if (sh.size() > kMaxSafetensorsDims)
    corrupt(path, concat(tensor, " has ", sh.size(), " dimensions (at most ", kMaxSafetensorsDims, ")"));
  int64_t numel = 1;
  for (const json& d : sh) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      corrupt(path, tensor + " shape " + clip(sh.dump()) + " holds " + clip(d.dump()) +
                        ", not an integer in [0, 2^63)");
    shape.push_back(d.get<int64_t>());
    if (__builtin_mul_overflow(numel, shape.back(), &numel))
      corrupt(path, tensor + " shape " + clip(sh.dump()) + " has more elements than fit in 64 bits");
  }
  return numel;
}

SafetensorsEntry read_entry(const std::string& name, const json& e, uint64_t data_size, const std::string& path) {
  const std::string tensor = "tensor " + quoted(name);
  if (!e.is_object()) corrupt(path, tensor + " is not a JSON object (got " + clip(e.dump()) + ")");
  for (const auto& [k, v] : e.items())
    if (k != "dtype" && k != "shape" && k != "data_offsets")
      corrupt(path, tensor + " has an unknown field " + quoted(k) + " (fields: dtype, shape, data_offsets)");
  for (const char* k : {"dtype", "shape", "data_offsets"})
    if (!e.contains(k)) corrupt(path, tensor + " has no " + k);
  SafetensorsEntry out;
  out.name = name;
  const json& dt = e.at("dtype");
  if (dt == "F32") {
    out.dtype = DType::f32;
  } else if (dt == "BF16") {
    out.dtype = DType::bf16;
  } else if (dt == "F16") {
    out.dtype = DType::f32;  // converted when read
    out.f16 = true;
  } else {
    corrupt(path, tensor + " has dtype " + clip(dt.dump()) + "; longctx reads \"F32\", \"BF16\" and \"F16\"");
  }
  const std::string dtype = dt.get<std::string>();
  const int64_t numel = shape_elements(e.at("shape"), tensor, out.shape, path);
  const json& off = e.at("data_offsets");
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned() ||
      off[0].get<uint64_t>() > off[1].get<uint64_t>())
    corrupt(path, tensor + " data_offsets must be [begin, end] with 0 <= begin <= end, got " + clip(off.dump()));
  out.begin = off[0].get<uint64_t>();
  out.end = off[1].get<uint64_t>();
  if (out.end > data_size)
    corrupt(path, concat(tensor, " data offsets do not match the file: they end at byte ", out.end,
                         " of a data section of ", data_size, " bytes (truncated file?)"));
  uint64_t bytes = 0;
  const size_t value_bytes = out.f16 ? 2 : dtype_size(out.dtype);
  if (__builtin_mul_overflow(uint64_t(numel), value_bytes, &bytes) || bytes != out.end - out.begin)
    corrupt(path, concat(tensor, " data offsets do not match its shape: ", shape_str(out.shape), " of ",
                         dtype, " needs ", numel, " x ", value_bytes, " bytes, data_offsets [",
                         out.begin, ", ", out.end, "] hold ", out.end - out.begin));
  return out;
}

// Sorted by offset, the entries must tile the data section: no overlap (aliased tensors would
// make the reader allocate the same bytes many times over), no hole, nothing after the last.
void check_tiling(std::vector<SafetensorsEntry>& entries, uint64_t data_size, const std::string& path) {
  std::sort(entries.begin(), entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t covered = 0;
  const SafetensorsEntry* last = nullptr;
  for (const SafetensorsEntry& e : entries) {
    if (e.begin < covered)
      corrupt(path, concat("tensors ", quoted(last->name), " [", last->begin, ", ", last->end, ") and ", quoted(e.name),
                           " [", e.begin, ", ", e.end, ") overlap"));
    if (e.begin > covered)
      corrupt(path, concat("bytes [", covered, ", ", e.begin, ") of the data belong to no tensor (a hole before tensor ",
                           quoted(e.name), ")"));
    covered = e.end;
    last = &e;
  }
  if (covered != data_size)
    corrupt(path, concat("bytes [", covered, ", ", data_size, ") of the data belong to no tensor (trailing data)"));
}

// IEEE 754 binary16 (1 sign, 5 exponent, 10 fraction bits) as fp32, exactly: every half is a float.
float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, frac = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: frac * 2^-24
    const float x = std::ldexp(float(frac), -24);
    return sign ? -x : x;
  }
  float x;  // normal: rebias the exponent (15 -> 127); Inf and NaN keep an all-ones exponent
  const uint32_t u = sign | ((exp == 0x1fu ? 0xffu : exp + 112u) << 23) | (frac << 13);
  std::memcpy(&x, &u, 4);
  return x;
}

// NaN and Inf: an exponent of all ones, in fp32 and in bf16 (its top half) alike.
int64_t count_non_finite(const Tensor& t, int64_t& first) {
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const bool bad = t.dtype() == DType::f32 ? !std::isfinite(t.f32()[i]) : (t.bf16()[i] & 0x7f80u) == 0x7f80u;
    if (bad && n++ == 0) first = i;
  }
  return n;
}

}  // namespace

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw std::runtime_error(concat("longctx: checkpoint has no tensor '", name, "'"));
}

bool SafetensorsFile::has(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return true;
  return false;
}

SafetensorsHeader parse_safetensors_header(std::string_view text, uint64_t data_size, const std::string& path) {
  const json header = parse_strict(text, path);
  if (!header.is_object()) corrupt(path, "header is not a JSON object (got " + clip(header.dump()) + ")");
  SafetensorsHeader out;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__")
      out.metadata = read_metadata(e, path);
    else
      out.entries.push_back(read_entry(name, e, data_size, path));
  }
  check_tiling(out.entries, data_size, path);
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    LONGCTX_CHECK(name != "__metadata__" && !header.contains(name), "save_safetensors: tensor name '", name,
                  "' is reserved or used twice");
    header[name] = {{"dtype", t->dtype() == DType::f32 ? "F32" : "BF16"},
                    {"shape", t->shape()},
                    {"data_offsets", {offset, offset + t->nbytes()}}};
    offset += t->nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(uint64_t(text.size()) >> (8 * i));
  write_file_atomically(path, [&](const auto& put) {
    put(len, 8);
    put(text.data(), text.size());
    for (const auto& [name, t] : tensors) put(t->raw(), size_t(t->nbytes()));
  });
}

SafetensorsFile load_safetensors(const std::string& path, const std::function<bool(const std::string&)>& want) {
  std::ifstream f(path, std::ios::binary);
  std::error_code ec;
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  if (!f || ec) throw std::runtime_error("longctx: cannot open checkpoint '" + path + "'" + (ec ? ": " + ec.message() : ""));
  unsigned char len[8];
  if (file_size < 8 || !f.read(reinterpret_cast<char*>(len), 8))
    corrupt(path, concat("the file has ", file_size, " bytes, fewer than the 8-byte header length"));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(len[i]) << (8 * i);
  if (n > kMaxSafetensorsHeader)
    corrupt(path, concat("header length ", n, " is absurd (longctx reads headers of at most ", kMaxSafetensorsHeader,
                         " bytes)"));
  if (n > file_size - 8)
    corrupt(path, concat("header length ", n, " runs past the end of the file (", file_size, " bytes)"));
  std::string text(n, '\0');
  if (!f.read(text.data(), std::streamsize(n))) corrupt(path, "the header could not be read");
  const SafetensorsHeader header = parse_safetensors_header(text, file_size - 8 - n, path);
  SafetensorsFile out;
  out.metadata = header.metadata;
  for (const SafetensorsEntry& e : header.entries) {  // in offset order: one forward pass over the file
    if (want && !want(e.name)) continue;
    Tensor t(e.shape, e.dtype);
    f.seekg(std::streamoff(8 + n + e.begin));
    std::vector<uint16_t> half(e.f16 ? size_t(t.numel()) : 0);
    char* into = e.f16 ? reinterpret_cast<char*>(half.data()) : static_cast<char*>(t.raw());
    if (!f.read(into, std::streamsize(e.end - e.begin)))
      corrupt(path, "the data of tensor " + quoted(e.name) + " could not be read (the file shrank?)");
    for (size_t i = 0; i < half.size(); ++i) t.f32()[i] = f16_to_f32(half[i]);
    int64_t first = 0;
    if (const int64_t bad = count_non_finite(t, first))
      corrupt(path, concat("tensor ", quoted(e.name), " holds ", bad, " non-finite values (NaN or Inf), the first at index ",
                           first));
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  return load_safetensors(path, [](const std::string&) { return false; }).metadata;
}

}  // namespace longctx
