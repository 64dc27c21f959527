// plane_sums.cuh — deterministic per-plane sums used by norms, bias gradients, Dice and the loss.
//
// A "plane" is an independent sum over s in [0, S). Each plane is cut into a fixed number of chunks
// (from the shape and the device, never from timing), every chunk is summed by one block in double
// precision, and the chunk partials are added in a fixed order: results are bit-identical from run
// to run, with no atomics.
#pragma once

#include <algorithm>

#include "internal.cuh"

namespace cmocu {

// f(plane, s, acc) adds the NV values of element s of `plane` into acc[0..NV).
template <int NV, typename F>
__global__ void plane_partials_kernel(int64_t planes, int64_t S, int64_t chunks, int64_t chunk_len, F f,
                                      double* partial) {
  __shared__ double smem[32];
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
      int64_t s0 = chunk * chunk_len;
      int64_t s1 = s0 + chunk_len < S ? s0 + chunk_len : S;
      double acc[NV];
#pragma unroll
      for (int v = 0; v < NV; v++) acc[v] = 0.0;
      for (int64_t s = s0 + threadIdx.x; s < s1; s += blockDim.x) f(plane, s, acc);
#pragma unroll
      for (int v = 0; v < NV; v++) {
        double r = block_sum(acc[v], smem);
        if (threadIdx.x == 0) partial[(plane * chunks + chunk) * NV + v] = r;
      }
    }
  }
}

template <int NV>
__global__ void plane_totals_kernel(int64_t planes, int64_t chunks, const double* partial, double* totals) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= planes * NV) return;
  int64_t plane = i / NV, v = i % NV;
  double t = 0.0;
  for (int64_t c = 0; c < chunks; c++) t += partial[(plane * chunks + c) * NV + v];
  totals[i] = t;
}

// totals (device, planes * NV doubles, [plane][v]) = per-plane sums of f over s in [0, S).
template <int NV, typename F>
void plane_sums(Backend* be, int64_t planes, int64_t S, F f, double* totals, const char* what) {
  if (planes <= 0) return;
  int64_t want_blocks = 4LL * sm_count(be);
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((S + 2047) / 2048, (want_blocks + planes - 1) / planes));
  int64_t chunk_len = (S + chunks - 1) / std::max<int64_t>(chunks, 1);
  if (chunk_len < 1) chunk_len = 1;
  Scratch partial(be, (size_t)(planes * chunks * NV) * sizeof(double));
  dim3 grid((unsigned)std::min<int64_t>(chunks, 65535), (unsigned)std::min<int64_t>(planes, 65535));
  plane_partials_kernel<NV><<<grid, kThreads, 0, stream(be)>>>(planes, S, chunks, chunk_len, f,
                                                               partial.as<double>());
  check_launch(what);
  plane_totals_kernel<NV><<<grid_for(planes * NV), kThreads, 0, stream(be)>>>(planes, chunks,
                                                                              partial.as<double>(), totals);
  check_launch(what);
}

}  // namespace cmocu
