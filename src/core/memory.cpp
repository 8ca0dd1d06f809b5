#include <longctx/core/error.hpp>
#include <longctx/core/memory.hpp>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>

namespace longctx::memory {

namespace {
std::atomic<uint64_t> g_limit{0};
}

uint64_t physical() {
  static const uint64_t bytes = [] {
    std::ifstream f("/proc/meminfo");
    std::string key;
    uint64_t kib = 0;
    while (f >> key >> kib)
      if (key == "MemTotal:") return kib * 1024;
    return uint64_t(sysconf(_SC_PHYS_PAGES)) * uint64_t(sysconf(_SC_PAGESIZE));
  }();
  return bytes;
}

uint64_t limit() {
  const uint64_t l = g_limit.load();
  return l == 0 ? physical() : l;
}

void set_limit(uint64_t bytes) { g_limit.store(bytes); }

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) bytes /= 1024, ++u;
  char buf[32];
  // three significant digits, so that a need just over the limit does not print as equal to it
  std::snprintf(buf, sizeof buf, u == 0 || bytes >= 100 ? "%.0f %s" : bytes >= 10 ? "%.1f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

void require_fits(double bytes, const std::string& what) {
  const bool set = g_limit.load() != 0;
  LONGCTX_CHECK(bytes <= double(limit()), what, " needs ", format_bytes(bytes), ", more than ",
                set ? "the memory limit of " : "this machine's ", format_bytes(double(limit())),
                set ? "" : " of RAM");
}

}  // namespace longctx::memory
