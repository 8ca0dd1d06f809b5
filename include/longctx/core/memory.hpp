// Memory a job needs, checked before it allocates: a config too large for the machine is refused
// up front with both numbers, instead of failing (or swapping for hours) mid-run.
#pragma once
#include <cstdint>
#include <string>

namespace longctx::memory {

uint64_t physical();  // the machine's RAM (MemTotal of /proc/meminfo)
uint64_t limit();     // what jobs may use: physical() unless set_limit() chose less
void set_limit(uint64_t bytes);  // 0 restores physical(); tests and the fuzz harness set small limits

std::string format_bytes(double bytes);  // three digits: "812 KiB", "3.25 GiB", "24.1 GiB"

// Throws std::invalid_argument "<what> needs <bytes>, more than this machine's <limit>" when
// bytes > limit(). A double, so that estimates of absurd configs cannot overflow.
void require_fits(double bytes, const std::string& what);

}  // namespace longctx::memory
