#include <longctx/core/error.hpp>
#include <longctx/model/safetensors.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

namespace longctx {

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

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t->dtype() == DType::f32 ? "F32" : "BF16"},
                    {"shape", t->shape()},
                    {"data_offsets", {offset, offset + t->nbytes()}}};
    offset += t->nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    LONGCTX_CHECK(f.good(), "cannot write checkpoint '", tmp, "'");
    const uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    f.write(reinterpret_cast<const char*>(len), 8);
    f.write(text.data(), std::streamsize(text.size()));
    for (const auto& [name, t] : tensors) f.write(static_cast<const char*>(t->raw()), std::streamsize(t->nbytes()));
    f.flush();
    LONGCTX_CHECK(f.good(), "writing checkpoint '", tmp, "' failed (disk full?)");
  }
  if (FILE* fp = std::fopen(tmp.c_str(), "rb")) {  // data on disk before the rename makes it visible
    fsync(fileno(fp));
    std::fclose(fp);
  }
  std::filesystem::rename(tmp, path);
}

SafetensorsFile load_safetensors(const std::string& path, const std::function<bool(const std::string&)>& want) {
  auto corrupt = [&](const std::string& what) {
    return std::runtime_error("longctx: corrupt checkpoint " + path + ": " + what);
  };
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("longctx: cannot open checkpoint '" + path + "'");
  const uint64_t file_size = std::filesystem::file_size(path);
  unsigned char len[8];
  if (file_size < 8 || !f.read(reinterpret_cast<char*>(len), 8)) throw corrupt("shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(len[i]) << (8 * i);
  if (n > file_size - 8 || n > (uint64_t(1) << 30)) throw corrupt("header length " + std::to_string(n) + " exceeds the file");
  std::string text(n, '\0');
  f.read(text.data(), std::streamsize(n));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw corrupt(std::string("header is not JSON (") + e.what() + ")");
  }
  if (!header.is_object()) throw corrupt("header is not a JSON object");
  const uint64_t data_size = file_size - 8 - n;
  SafetensorsFile out;
  std::vector<std::pair<uint64_t, size_t>> order;  // (offset, index) to read in file order
  try {
    for (const auto& [name, e] : header.items()) {
      if (name == "__metadata__") {
        for (const auto& [k, v] : e.items()) out.metadata[k] = v.get<std::string>();
        continue;
      }
      const std::string dtype = e.at("dtype").get<std::string>();
      if (dtype != "F32" && dtype != "BF16") throw corrupt("tensor '" + name + "' has unsupported dtype " + dtype);
      const auto shape = e.at("shape").get<std::vector<int64_t>>();
      const auto off = e.at("data_offsets").get<std::vector<uint64_t>>();
      const DType dt = dtype == "F32" ? DType::f32 : DType::bf16;
      uint64_t bytes = dtype_size(dt);
      for (int64_t d : shape) {
        if (d < 0) throw corrupt("tensor '" + name + "' has a negative dimension");
        bytes = d == 0 || bytes <= data_size / uint64_t(d) ? bytes * uint64_t(d) : data_size + 1;
      }
      if (off.size() != 2 || off[1] < off[0] || off[1] > data_size || off[1] - off[0] != bytes)
        throw corrupt("tensor '" + name + "' data offsets do not match its shape or the file size");
      if (want && !want(name)) continue;
      order.push_back({off[0], out.tensors.size()});
      out.tensors.emplace_back(name, Tensor(shape, dt));
    }
  } catch (const nlohmann::json::exception& e) {
    throw corrupt(std::string("malformed header entry (") + e.what() + ")");
  } catch (const std::invalid_argument& e) {
    throw corrupt(message_of(e));
  }
  std::sort(order.begin(), order.end());
  for (const auto& [off, i] : order) {
    Tensor& t = out.tensors[i].second;
    f.seekg(std::streamoff(8 + n + off));
    if (!f.read(static_cast<char*>(t.raw()), std::streamsize(t.nbytes())))
      throw corrupt("truncated data of tensor '" + out.tensors[i].first + "'");
  }
  return out;
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  return load_safetensors(path, [](const std::string&) { return false; }).metadata;
}

}  // namespace longctx
