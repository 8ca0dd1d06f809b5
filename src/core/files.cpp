#include <fcntl.h>
#include <longctx/core/error.hpp>
#include <longctx/core/files.hpp>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace longctx {

void write_all(int fd, const void* data, size_t n, const std::string& what) {
  for (size_t done = 0; done < n;) {
    const ssize_t w = ::write(fd, static_cast<const char*>(data) + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw std::runtime_error(concat("longctx: writing ", what, " failed: ", std::strerror(errno)));
    done += size_t(w);
  }
}

void write_file_atomically(const std::string& path,
                           const std::function<void(const std::function<void(const void*, size_t)>&)>& fill) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(concat("longctx: cannot write '", tmp, "': ", std::strerror(errno)));
  try {
    fill([&](const void* data, size_t n) { write_all(fd, data, n, "'" + tmp + "' (disk full?)"); });
    if (::fsync(fd) != 0) throw std::runtime_error(concat("longctx: fsync of '", tmp, "' failed: ", std::strerror(errno)));
  } catch (...) {
    ::close(fd);
    std::filesystem::remove(tmp);
    throw;
  }
  ::close(fd);
  std::filesystem::rename(tmp, path);
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace longctx
