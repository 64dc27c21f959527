// matmul_kernel.cuh — the tiled matrix-product kernel of matmul.cu and its split-K plan, in a header
// of its own so that native/cuda/tests/test_kernels_host.cpp can run the same source on the CPU.
#pragma once

#include <algorithm>
#include <cstdint>

namespace cmocu {
namespace mm {

constexpr int TM = 64, TN = 64, TK = 16;

// blockIdx.z = batch * splits + split; split s covers k in [s * k_chunk, (s + 1) * k_chunk) and writes
// its partial product to C + split * batches * M * N (summed afterwards in a fixed order).
__global__ void __launch_bounds__(256) matmul_kernel(const float* __restrict__ A, const float* __restrict__ B,
                                                     float* __restrict__ C, int64_t M, int64_t N, int64_t K,
                                                     bool ta, bool tb, int64_t a_bs, int64_t b_bs, int splits,
                                                     int64_t k_chunk, int64_t batches) {
  __shared__ float As[TK][TM + 4];
  __shared__ float Bs[TK][TN + 4];
  const int64_t batch = blockIdx.z / splits, split = blockIdx.z % splits;
  const float* a = A + batch * a_bs;
  const float* b = B + batch * b_bs;
  float* c = C + (split * batches + batch) * M * N;
  const int64_t m0 = (int64_t)blockIdx.y * TM, n0 = (int64_t)blockIdx.x * TN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  const int64_t k_begin = split * k_chunk;
  const int64_t k_end = k_begin + k_chunk < K ? k_begin + k_chunk : K;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += TK) {
    for (int l = threadIdx.x; l < TM * TK; l += 256) {
      int mm, kk;
      if (ta) {  // A stored [K,M]: consecutive threads walk m
        mm = l % TM;
        kk = l / TM;
      } else {  // A stored [M,K]: consecutive threads walk k
        kk = l % TK;
        mm = l / TK;
      }
      int64_t gm = m0 + mm, gk = k0 + kk;
      float v = 0.f;
      if (gm < M && gk < k_end) v = ta ? a[gk * M + gm] : a[gm * K + gk];
      As[kk][mm] = v;
    }
    for (int l = threadIdx.x; l < TN * TK; l += 256) {
      int nn, kk;
      if (tb) {  // B stored [N,K]
        kk = l % TK;
        nn = l / TK;
      } else {  // B stored [K,N]
        nn = l % TN;
        kk = l / TN;
      }
      int64_t gn = n0 + nn, gk = k0 + kk;
      float v = 0.f;
      if (gn < N && gk < k_end) v = tb ? b[gn * K + gk] : b[gk * N + gn];
      Bs[kk][nn] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TK; kk++) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; j++) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      int64_t gn = n0 + tx + 16 * j;
      if (gn < N) c[gm * N + gn] = acc[i][j];
    }
  }
}

struct SplitPlan {
  int64_t splits, k_chunk;
};

// Splits K when the output tiles cannot fill the GPU (2 blocks per multiprocessor) and K is long.
inline SplitPlan plan_splits(int64_t tiles, int64_t K, int64_t batch, int sms, bool allow) {
  int64_t splits = 1;
  const int64_t want = 2LL * sms;
  if (allow && tiles < want && K >= 4096) splits = std::min<int64_t>((want + tiles - 1) / tiles, K / 1024);
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535 / std::max<int64_t>(batch, 1)));
  int64_t k_chunk = (K + splits - 1) / splits;
  k_chunk = std::max<int64_t>(TK, (k_chunk + TK - 1) / TK * TK);
  splits = (K + k_chunk - 1) / k_chunk;
  return {std::max<int64_t>(splits, 1), k_chunk};
}

}  // namespace mm
}  // namespace cmocu
