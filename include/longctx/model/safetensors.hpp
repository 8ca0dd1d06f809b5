// safetensors files (the Hugging Face format: 8-byte little-endian header length, a JSON header
// of name -> {dtype, shape, data_offsets} plus "__metadata__" strings, then the raw data).
// Written atomically: a temporary file in the same folder, flushed, then renamed over the target,
// so an interrupted write never leaves a truncated checkpoint.
//
// Reading treats the file as hostile: everything below is refused with std::runtime_error
// "longctx: corrupt checkpoint <path>: <what is wrong>" before any tensor is allocated, so what a
// file makes the reader allocate is bounded by a small multiple of its size (the tensors tile the
// data; the parsed header and one Tensor per entry are a few times the header's size):
// - a file shorter than 8 bytes; a header length past the end of the file or above
//   kMaxSafetensorsHeader;
// - a header that is not JSON, not an object, nests deeper than the format does, or repeats a key
//   in any object (JSON parsers disagree on which copy wins, so none does);
// - "__metadata__" that is not an object of strings;
// - an entry that is not {dtype, shape, data_offsets} (missing or unknown fields), a dtype other
//   than F32, BF16 and F16 (F16 is converted to fp32 when read: longctx computes in fp32 or
//   bf16, and every half is exactly a float), a shape that is not a list of at most kMaxSafetensorsDims integers >= 0 or
//   whose element count overflows 64 bits, data_offsets that are not [begin, end] with
//   begin <= end, or whose byte count disagrees with the shape;
// - entries that, sorted by offset, do not tile the data section exactly from byte 0 to its end
//   (overlapping tensors, holes, offsets past the end: a truncated file, trailing bytes);
// - non-finite weights: a NaN or Inf in a tensor that is read is an error naming the tensor and
//   the count (a diverged run's checkpoint is refused rather than loaded).
// The required fields take some 50 header bytes per entry, so the number of tensors is bounded
// by the header size too.
#pragma once
#include <longctx/core/tensor.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace longctx {

inline constexpr uint64_t kMaxSafetensorsHeader = uint64_t(16) << 20;  // 16 MiB; a 1000-layer model's is ~5 MB
inline constexpr size_t kMaxSafetensorsDims = 8;

struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file (data offset) order
  std::map<std::string, std::string> metadata;
  const Tensor& at(const std::string& name) const;  // throws naming the missing tensor
  bool has(const std::string& name) const;
};

// One tensor of a checked header: its data are bytes [begin, end) of the data section.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;  // as read
  bool f16 = false;          // stored as F16 (2 bytes a value), read as f32
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by offset; together they tile [0, data_size)
  std::map<std::string, std::string> metadata;
};

// Parses and checks the JSON header (the bytes after the 8-byte length) of a file whose data
// section holds `data_size` bytes; `path` only names the file in errors. Every check of the list
// above except non-finite values, which need the data.
SafetensorsHeader parse_safetensors_header(std::string_view json, uint64_t data_size, const std::string& path);

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                      const std::map<std::string, std::string>& metadata);

// Reads the tensors whose name `want` accepts (all when `want` is empty); the header is checked
// whole (every entry, wanted or not) before anything is allocated. Throws std::runtime_error
// "longctx: corrupt checkpoint <path>: <what>" on a damaged or foreign file (the list above).
SafetensorsFile load_safetensors(const std::string& path, const std::function<bool(const std::string&)>& want = {});

// The header's "__metadata__" strings only (the header is checked whole): no tensor data is read.
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);

}  // namespace longctx
