// conv_wgrad.cu — FP32 weight gradient of a stride-1 3D convolution (see conv_wgrad.cuh).
//
// dW[k,c,t] = sum over n and output voxels o of dY[n,k,o] * X[n,c,o + t - pad].
// A block owns 16 output channels x CB input channels and a contiguous run of output tiles
// (2 x 8 x 8 voxels); per tile it stages dY (16 x 128) and the haloed X tile (CB x (2+kd-1) x
// (8+kh-1) x (8+kw-1)) in shared memory. Thread (kk, cc, r) keeps the kd*kh*kw sums of one
// (k, c) pair over the tile rows r, r+R, ...; each X row segment is read once into registers and
// used for all kw taps and 8 voxels. Partial sums per (block, r) go to scratch and are added in a
// fixed order by a second kernel, so results do not depend on timing.
#include <algorithm>

#include "conv_wgrad.cuh"

namespace cmocu {
namespace {

constexpr int TD = 2, TH = 8, TW = 8, KB = 16;
constexpr int TV = TD * TH * TW;

struct WgradGeo {
  int N, C, K, D, H, W, OD, OH, OW, pd, ph, pw;
  int nTD, nTH, nTW;
  int cgroups;
  int64_t ntiles, tiles_per_split;
};

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

template <int KD, int KH, int KW>
void launch_cb(int cb, dim3 grid, cudaStream_t s, const float* x, const float* dy, float* part, const WgradGeo& g) {
  switch (cb) {
    case 16: wgrad_kernel<KD, KH, KW, 16><<<grid, 256, 0, s>>>(x, dy, part, g); break;
    case 8: wgrad_kernel<KD, KH, KW, 8><<<grid, 256, 0, s>>>(x, dy, part, g); break;
    case 4: wgrad_kernel<KD, KH, KW, 4><<<grid, 256, 0, s>>>(x, dy, part, g); break;
    case 2: wgrad_kernel<KD, KH, KW, 2><<<grid, 256, 0, s>>>(x, dy, part, g); break;
    default: wgrad_kernel<KD, KH, KW, 1><<<grid, 256, 0, s>>>(x, dy, part, g); break;
  }
}

}  // namespace

bool wgrad_fp32_supported(const Shape& x, const Shape& w, const cmo_conv3d_params& p) {
  if (x.ndim != 5 || w.ndim != 5) return false;
  for (int i = 0; i < 3; i++)
    if (p.stride[i] != 1 || p.dilation[i] != 1 || p.padding[i] > 2) return false;
  const int64_t kd = w.d[2], kh = w.d[3], kw = w.d[4];
  bool kernel_ok = (kd == 3 && kh == 3 && kw == 3) || (kd == 1 && kh == 3 && kw == 3) || (kd == 1 && kh == 1 && kw == 1);
  if (!kernel_ok) return false;
  for (int i = 0; i < 5; i++)
    if (x.d[i] > (1 << 30)) return false;
  return x.numel() > 0;
}

void wgrad_fp32(Backend* be, const Buffer* x, const Buffer* dy, Buffer* dw, const cmo_conv3d_params& p, bool accumulate) {
  const Shape &xs = x->shape, &ys = dy->shape, &ws = dw->shape;
  WgradGeo g{};
  g.N = (int)xs.d[0];
  g.C = (int)xs.d[1];
  g.D = (int)xs.d[2];
  g.H = (int)xs.d[3];
  g.W = (int)xs.d[4];
  g.K = (int)ys.d[1];
  g.OD = (int)ys.d[2];
  g.OH = (int)ys.d[3];
  g.OW = (int)ys.d[4];
  g.pd = (int)p.padding[0];
  g.ph = (int)p.padding[1];
  g.pw = (int)p.padding[2];
  g.nTD = (g.OD + TD - 1) / TD;
  g.nTH = (g.OH + TH - 1) / TH;
  g.nTW = (g.OW + TW - 1) / TW;
  const int cb = g.C >= 16 ? 16 : g.C >= 8 ? 8 : g.C >= 4 ? 4 : g.C >= 2 ? 2 : 1;
  const int R = 256 / (KB * cb);
  g.cgroups = (g.C + cb - 1) / cb;
  const int kgroups = (g.K + KB - 1) / KB;
  const int64_t groups = (int64_t)g.cgroups * kgroups;
  if (groups > 65535) unsupported("CONV3D_BACKWARD_WEIGHTS: too many channel groups for the FP32 weight-gradient kernel");
  g.ntiles = (int64_t)g.N * g.nTD * g.nTH * g.nTW;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(g.ntiles, (4LL * sm_count(be) + groups - 1) / groups));
  g.tiles_per_split = (g.ntiles + splits - 1) / splits;
  splits = (g.ntiles + g.tiles_per_split - 1) / g.tiles_per_split;
  const int T = (int)(ws.d[2] * ws.d[3] * ws.d[4]);
  const int64_t kct = (int64_t)g.K * g.C * T;
  const int64_t parts = splits * R;
  Scratch part(be, (size_t)(parts * kct) * sizeof(float));
  dim3 grid((unsigned)splits, (unsigned)groups);
  cudaStream_t s = stream(be);
  const float *xp = x->f32(), *dyp = dy->f32();
  float* pp = part.as<float>();
  if (ws.d[2] == 3)
    launch_cb<3, 3, 3>(cb, grid, s, xp, dyp, pp, g);
  else if (ws.d[3] == 3)
    launch_cb<1, 3, 3>(cb, grid, s, xp, dyp, pp, g);
  else
    launch_cb<1, 1, 1>(cb, grid, s, xp, dyp, pp, g);
  check_launch("CONV3D_BACKWARD_WEIGHTS (FP32 weight-gradient kernel)");
  // Column sums of part [parts][kct], 64 rows at a time, in a fixed order.
  const float* src = pp;
  int64_t rows = parts;
  Scratch tmp_a(be, rows > 64 ? (size_t)(((rows + 63) / 64) * kct) * sizeof(float) : 0);
  Scratch tmp_b(be, rows > 64 * 64 ? (size_t)(((rows + 4095) / 4096) * kct) * sizeof(float) : 0);
  float* bufs[2] = {tmp_a.as<float>(), tmp_b.as<float>()};
  int which = 0;
  while (rows > 64) {
    const int64_t groups_r = (rows + 63) / 64, rr = rows;
    float* dst = bufs[which];
    const float* in = src;
    launch_elementwise(be, groups_r * kct, [=] __device__(int64_t i) {
      const int64_t gi = i / kct, col = i % kct;
      const int64_t q1 = min(rr, (gi + 1) * 64);
      float sum = 0.f;
      for (int64_t q = gi * 64; q < q1; q++) sum += in[q * kct + col];
      dst[i] = sum;
    }, "CONV3D_BACKWARD_WEIGHTS (partial sums)");
    src = dst;
    rows = groups_r;
    which ^= 1;
  }
  float* out = dw->f32();
  const float* cp = src;
  const int64_t final_rows = rows;
  launch_elementwise(be, kct, [=] __device__(int64_t i) {
    float sum = 0.f;
    for (int64_t q = 0; q < final_rows; q++) sum += cp[q * kct + i];
    out[i] = accumulate ? out[i] + sum : sum;
  }, "CONV3D_BACKWARD_WEIGHTS (partial sums)");
}

}  // namespace cmocu
