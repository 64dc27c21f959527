// host_check.hpp — the pass/fail bookkeeping of the host-side CUDA tests (test_kernels_host.cpp,
// test_allocator_host.cpp): one line per check, a final "N passed, N failed" and the exit status.
#pragma once

#include <cstdio>
#include <string>

namespace host_check {

inline int g_pass = 0, g_fail = 0;

inline void check(bool ok, const std::string& name, const std::string& why = "") {
  if (ok) {
    g_pass++;
    std::printf("ok   %s\n", name.c_str());
  } else {
    g_fail++;
    std::printf("FAIL %s: %s\n", name.c_str(), why.c_str());
  }
}

// Prints the summary; the process exit status.
inline int summary() {
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}

}  // namespace host_check
