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
#include "conv_wgrad_kernel.cuh"

namespace cmocu {
namespace {

using namespace wgrad;

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
  const WgradGeo g = plan((int)xs.d[0], (int)xs.d[1], (int)xs.d[2], (int)xs.d[3], (int)xs.d[4], (int)ys.d[1],
                          (int)ys.d[2], (int)ys.d[3], (int)ys.d[4], (int)p.padding[0], (int)p.padding[1],
                          (int)p.padding[2], sm_count(be));
  const int64_t groups = (int64_t)g.cgroups * g.kgroups;
  if (groups > 65535) unsupported("CONV3D_BACKWARD_WEIGHTS: too many channel groups for the FP32 weight-gradient kernel");
  const int cb = g.cb, R = g.R;
  const int64_t splits = g.splits;
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
