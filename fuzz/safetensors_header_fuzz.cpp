// libFuzzer target: the safetensors header parser on arbitrary bytes, framed as a file (8-byte
// little-endian header length, header, data; the data section is whatever follows the header).
// A header is either refused with "longctx: corrupt checkpoint <path>: ..." (any other exception
// escapes and counts as a crash) or accepted, and then its entries must tile the data exactly.
#include <longctx/model/safetensors.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

void fail(const char* what) {
  std::fprintf(stderr, "safetensors_header_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace longctx;
  if (size < 8) return 0;
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(data[i]) << (8 * i);
  if (n > size - 8) n = size - 8;  // the reader refuses these before parsing; parse what there is
  const std::string_view header(reinterpret_cast<const char*>(data) + 8, n);
  const uint64_t data_size = size - 8 - n;
  try {
    const SafetensorsHeader h = parse_safetensors_header(header, data_size, "in.safetensors");
    uint64_t at = 0;
    for (const SafetensorsEntry& e : h.entries) {
      if (e.begin != at || e.end < e.begin || e.shape.size() > kMaxSafetensorsDims) fail("accepted entries do not tile");
      const Tensor t(e.shape, e.dtype);  // the data is in the input, so this allocates at most twice its size
      if (t.nbytes() != (e.end - e.begin) * (e.f16 ? 2 : 1)) fail("accepted shape disagrees with its offsets");
      at = e.end;
    }
    if (at != data_size) fail("accepted entries do not cover the data");
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).rfind("longctx: corrupt checkpoint in.safetensors: ", 0) != 0) fail(e.what());
  }
  return 0;
}
