// host_emulation.hpp — just enough of CUDA's kernel language to run a kernel's own source on the
// CPU: every block runs as blockDim.x std::threads, __syncthreads() is a std::barrier, __shared__
// arrays are function statics (blocks run one after another). For checking indexing and
// synchronisation logic of kernels without a GPU; not for timing.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

struct EmuDim {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local EmuDim threadIdx, blockIdx;
inline EmuDim gridDim, blockDim;
inline std::barrier<>* emu_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
using std::max;
using std::min;

// Runs body() as a grid of blocks of `threads` threads each.
template <typename F>
void emulate_launch(EmuDim grid, unsigned threads, F body) {
  gridDim = grid;
  blockDim = EmuDim{threads, 1, 1};
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        std::barrier<> bar((std::ptrdiff_t)threads);
        emu_barrier = &bar;
        std::vector<std::thread> ts;
        ts.reserve(threads);
        for (unsigned t = 0; t < threads; t++)
          ts.emplace_back([&, t] {
            threadIdx = EmuDim{t, 0, 0};
            blockIdx = EmuDim{x, y, z};
            body();
          });
        for (auto& th : ts) th.join();
      }
}
