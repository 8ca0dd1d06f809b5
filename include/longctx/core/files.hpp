// Writing files so that a crash or a kill never leaves a torn one (checkpoints, the train log's
// repairs, result JSONs).
#pragma once
#include <cstddef>
#include <functional>
#include <string>

namespace longctx {

// Sends all n bytes to the descriptor, retrying short writes and EINTR; throws
// std::runtime_error "longctx: writing <what> failed: <reason>".
void write_all(int fd, const void* data, size_t n, const std::string& what);

// Writes `path` atomically: fill(put) sends the contents through put(data, n) into
// <path>.tmp.<pid>, which is fsynced and renamed over `path`, then the folder is fsynced so the
// rename survives a power cut. Readers see the old file or the new, never a mix; on failure the
// temporary is removed and the error names the file.
void write_file_atomically(const std::string& path,
                           const std::function<void(const std::function<void(const void*, size_t)>& put)>& fill);

}  // namespace longctx
