// conv_wgrad_kernel.cuh — the kernel of conv_wgrad.cu and its launch geometry, in a header of its
// own so that native/cuda/tests/test_kernels_host.cpp can run the same source on the CPU (threads
// and a barrier stand in for a block) and check its indexing without a GPU.
#pragma once

#include <algorithm>
#include <cstdint>

namespace cmocu {
namespace wgrad {

constexpr int TD = 2, TH = 8, TW = 8, KB = 16;
constexpr int TV = TD * TH * TW;

struct WgradGeo {
  int N, C, K, D, H, W, OD, OH, OW, pd, ph, pw;
  int nTD, nTH, nTW;
  int cgroups, kgroups, cb, R;
  int64_t ntiles, tiles_per_split, splits;
};

// Input channels per block: a power of two up to 16, so that 16 * cb * R = 256 threads.
inline int channels_per_block(int C) { return C >= 16 ? 16 : C >= 8 ? 8 : C >= 4 ? 4 : C >= 2 ? 2 : 1; }

// Geometry of one launch: x [N,C,D,H,W], dy [N,K,OD,OH,OW], padding (pd,ph,pw); `sms` = multiprocessors.
inline WgradGeo plan(int N, int C, int D, int H, int W, int K, int OD, int OH, int OW, int pd, int ph, int pw, int sms) {
  WgradGeo g{};
  g.N = N; g.C = C; g.D = D; g.H = H; g.W = W; g.K = K; g.OD = OD; g.OH = OH; g.OW = OW;
  g.pd = pd; g.ph = ph; g.pw = pw;
  g.nTD = (OD + TD - 1) / TD;
  g.nTH = (OH + TH - 1) / TH;
  g.nTW = (OW + TW - 1) / TW;
  g.cb = channels_per_block(C);
  g.R = 256 / (KB * g.cb);
  g.cgroups = (C + g.cb - 1) / g.cb;
  g.kgroups = (K + KB - 1) / KB;
  const int64_t groups = (int64_t)g.cgroups * g.kgroups;
  g.ntiles = (int64_t)N * g.nTD * g.nTH * g.nTW;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(g.ntiles, (4LL * sms + groups - 1) / groups));
  g.tiles_per_split = (g.ntiles + splits - 1) / splits;
  g.splits = (g.ntiles + g.tiles_per_split - 1) / g.tiles_per_split;
  return g;
}

template <int KD, int KH, int KW, int CB>
__global__ void __launch_bounds__(256) wgrad_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                                    float* __restrict__ part, WgradGeo g) {
  constexpr int R = 256 / (KB * CB);
  constexpr int HD = TD + KD - 1, HH = TH + KH - 1, HW = TW + KW - 1, HV = HD * HH * HW;
  constexpr int XS = HV | 1;  // odd channel stride: the CB channels fall in different banks
  constexpr int YS = TV + 1;
  constexpr int T = KD * KH * KW;
  __shared__ float sX[CB * XS];
  __shared__ float sY[KB * YS];
  const int kg = blockIdx.y / g.cgroups, cg = blockIdx.y % g.cgroups;
  const int tid = threadIdx.x;
  const int cc = tid % CB, kk = (tid / CB) % KB, r = tid / (CB * KB);
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; t++) acc[t] = 0.f;
  const int64_t t_begin = (int64_t)blockIdx.x * g.tiles_per_split;
  const int64_t t_end = min(g.ntiles, t_begin + g.tiles_per_split);
  const int64_t osp = (int64_t)g.OD * g.OH * g.OW, isp = (int64_t)g.D * g.H * g.W;
  for (int64_t tile = t_begin; tile < t_end; tile++) {
    int64_t q = tile;
    const int tw = (int)(q % g.nTW);
    q /= g.nTW;
    const int th = (int)(q % g.nTH);
    q /= g.nTH;
    const int td = (int)(q % g.nTD);
    const int n = (int)(q / g.nTD);
    const int od0 = td * TD, oh0 = th * TH, ow0 = tw * TW;
    for (int i = tid; i < KB * TV; i += 256) {
      const int kl = i / TV, v = i % TV;
      const int od = od0 + v / (TH * TW), oh = oh0 + (v / TW) % TH, ow = ow0 + v % TW;
      const int k = kg * KB + kl;
      float val = 0.f;
      if (k < g.K && od < g.OD && oh < g.OH && ow < g.OW)
        val = dy[((int64_t)n * g.K + k) * osp + ((int64_t)od * g.OH + oh) * g.OW + ow];
      sY[kl * YS + v] = val;
    }
    for (int i = tid; i < CB * HV; i += 256) {
      const int cl = i / HV, hv = i % HV;
      const int id = od0 + hv / (HH * HW) - g.pd, ih = oh0 + (hv / HW) % HH - g.ph, iw = ow0 + hv % HW - g.pw;
      const int c = cg * CB + cl;
      float val = 0.f;
      if (c < g.C && id >= 0 && id < g.D && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
        val = x[((int64_t)n * g.C + c) * isp + ((int64_t)id * g.H + ih) * g.W + iw];
      sX[cl * XS + hv] = val;
    }
    __syncthreads();
    for (int row = r; row < TD * TH; row += R) {
      const int vd = row / TH, vh = row % TH;
      float dyv[TW];
#pragma unroll
      for (int w = 0; w < TW; w++) dyv[w] = sY[kk * YS + row * TW + w];
#pragma unroll
      for (int kd = 0; kd < KD; kd++) {
#pragma unroll
        for (int kh = 0; kh < KH; kh++) {
          const float* xr = sX + cc * XS + ((vd + kd) * HH + (vh + kh)) * HW;
          float xv[HW];
#pragma unroll
          for (int j = 0; j < HW; j++) xv[j] = xr[j];
#pragma unroll
          for (int kw = 0; kw < KW; kw++) {
            float s = acc[(kd * KH + kh) * KW + kw];
#pragma unroll
            for (int w = 0; w < TW; w++) s = fmaf(dyv[w], xv[w + kw], s);
            acc[(kd * KH + kh) * KW + kw] = s;
          }
        }
      }
    }
    __syncthreads();
  }
  const int k = kg * KB + kk, c = cg * CB + cc;
  if (k < g.K && c < g.C) {
    const int64_t kct = (int64_t)g.K * g.C * T;
    float* dst = part + ((int64_t)blockIdx.x * R + r) * kct + ((int64_t)k * g.C + c) * T;
#pragma unroll
    for (int t = 0; t < T; t++) dst[t] = acc[t];
  }
}

}  // namespace wgrad
}  // namespace cmocu
