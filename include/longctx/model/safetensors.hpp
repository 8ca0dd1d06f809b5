// safetensors files (the Hugging Face format: 8-byte little-endian header length, a JSON header
// of name -> {dtype, shape, data_offsets} plus "__metadata__" strings, then the raw data).
// Written atomically: a temporary file in the same folder, flushed, then renamed over the target,
// so an interrupted write never leaves a truncated checkpoint.
#pragma once
#include <longctx/core/tensor.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace longctx {

struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file order
  std::map<std::string, std::string> metadata;
  const Tensor& at(const std::string& name) const;  // throws naming the missing tensor
  bool has(const std::string& name) const;
};

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                      const std::map<std::string, std::string>& metadata);

// Reads the tensors whose name `want` accepts (all when `want` is empty); the header is checked
// whole (every entry's dtype, shape and offsets against the file) before anything is allocated.
// Throws std::runtime_error "corrupt checkpoint <path>: <what>" on a damaged or foreign file.
SafetensorsFile load_safetensors(const std::string& path, const std::function<bool(const std::string&)>& want = {});

// The header's "__metadata__" strings only: no tensor data is read.
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);

}  // namespace longctx
