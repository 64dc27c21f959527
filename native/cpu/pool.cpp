// pool.cpp — ADAPTIVE_AVG_POOL3D_FORWARD / _BACKWARD (PyTorch bins: start = floor(i*In/Out),
// end = ceil((i+1)*In/Out)).
//
// Works on "planes" of 16 lanes (BLOCKED16: one plane per (n, channel block)) or 1 lane (PLAIN: one
// plane per (n, c)); the output keeps the input's layout. The forward pass sums each bin in double.
// The backward pass gathers: each input voxel sums dy / bin size over the bins that cover it (bins
// are contiguous per axis and the coverage is separable), so tasks never write the same voxel and
// the result is deterministic.
// Vectorisation of the math below needs these (no FP exceptions or errno are relied on anywhere).
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <cmath>

#include "kernel_util.hpp"

namespace cmo {
namespace {

inline int64_t bin_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
inline int64_t bin_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

template <int LANES>
void pool_forward(Backend* be, const float* x, float* y, int64_t P, const int64_t* in, const int64_t* out) {
  const int64_t D = in[0], H = in[1], W = in[2], oD = out[0], oH = out[1], oW = out[2];
  ku::parallel_tasks(be, P * oD, P * D * H * W * LANES, [&](int64_t t) {
    const int64_t p = t / oD, od = t % oD;
    const float* xp = x + p * D * H * W * LANES;
    float* yp = y + (p * oD + od) * oH * oW * LANES;
    const int64_t d0 = bin_start(od, D, oD), d1 = bin_end(od, D, oD);
    for (int64_t oh = 0; oh < oH; oh++) {
      const int64_t h0 = bin_start(oh, H, oH), h1 = bin_end(oh, H, oH);
      for (int64_t ow = 0; ow < oW; ow++) {
        const int64_t w0 = bin_start(ow, W, oW), w1 = bin_end(ow, W, oW);
        double acc[LANES];
        for (int l = 0; l < LANES; l++) acc[l] = 0;
        for (int64_t d = d0; d < d1; d++)
          for (int64_t h = h0; h < h1; h++) {
            const float* row = xp + ((d * H + h) * W) * LANES;
            if (LANES == 1) {
              double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
              int64_t w = w0;
              for (; w + 4 <= w1; w += 4) {
                s0 += row[w];
                s1 += row[w + 1];
                s2 += row[w + 2];
                s3 += row[w + 3];
              }
              for (; w < w1; w++) s0 += row[w];
              acc[0] += (s0 + s1) + (s2 + s3);
            } else {
              for (int64_t w = w0; w < w1; w++)
                for (int l = 0; l < LANES; l++) acc[l] += row[w * LANES + l];
            }
          }
        const double inv = 1.0 / (double)((d1 - d0) * (h1 - h0) * (w1 - w0));
        for (int l = 0; l < LANES; l++) yp[(oh * oW + ow) * LANES + l] = (float)(acc[l] * inv);
      }
    }
  });
}

// Bins covering each input index: [lo[i], hi[i]).
void coverage(int64_t in, int64_t out, std::vector<int64_t>& lo, std::vector<int64_t>& hi) {
  lo.assign((size_t)in, out);
  hi.assign((size_t)in, 0);
  for (int64_t o = 0; o < out; o++)
    for (int64_t i = bin_start(o, in, out); i < bin_end(o, in, out); i++) {
      lo[(size_t)i] = std::min(lo[(size_t)i], o);
      hi[(size_t)i] = std::max(hi[(size_t)i], o + 1);
    }
}

template <int LANES>
void pool_backward(Backend* be, const float* dy, float* dx, int64_t P, const int64_t* in, const int64_t* out) {
  const int64_t D = in[0], H = in[1], W = in[2], oD = out[0], oH = out[1], oW = out[2];
  std::vector<int64_t> dlo, dhi, hlo, hhi, wlo, whi;
  coverage(D, oD, dlo, dhi);
  coverage(H, oH, hlo, hhi);
  coverage(W, oW, wlo, whi);
  // Inverse bin sizes per axis; a bin's weight is their product.
  std::vector<double> dinv((size_t)oD), hinv((size_t)oH), winv((size_t)oW);
  for (int64_t o = 0; o < oD; o++) dinv[(size_t)o] = 1.0 / (double)(bin_end(o, D, oD) - bin_start(o, D, oD));
  for (int64_t o = 0; o < oH; o++) hinv[(size_t)o] = 1.0 / (double)(bin_end(o, H, oH) - bin_start(o, H, oH));
  for (int64_t o = 0; o < oW; o++) winv[(size_t)o] = 1.0 / (double)(bin_end(o, W, oW) - bin_start(o, W, oW));
  ku::parallel_tasks(be, P * D, P * D * H * W * LANES, [&](int64_t t) {
    const int64_t p = t / D, d = t % D;
    const float* gp = dy + p * oD * oH * oW * LANES;
    float* xp = dx + (p * D + d) * H * W * LANES;
    for (int64_t h = 0; h < H; h++)
      for (int64_t w = 0; w < W; w++) {
        double acc[LANES];
        for (int l = 0; l < LANES; l++) acc[l] = 0;
        for (int64_t od = dlo[(size_t)d]; od < dhi[(size_t)d]; od++)
          for (int64_t oh = hlo[(size_t)h]; oh < hhi[(size_t)h]; oh++) {
            const double wdh = dinv[(size_t)od] * hinv[(size_t)oh];
            const float* grow = gp + (od * oH + oh) * oW * LANES;
            for (int64_t ow = wlo[(size_t)w]; ow < whi[(size_t)w]; ow++) {
              const double c = wdh * winv[(size_t)ow];
              const float* g = grow + ow * LANES;
              for (int l = 0; l < LANES; l++) acc[l] += g[l] * c;
            }
          }
        for (int l = 0; l < LANES; l++) xp[(h * W + w) * LANES + l] = (float)acc[l];
      }
  });
}

void check_dims(const int64_t* d, const char* what) {
  for (int i = 0; i < 3; i++)
    if (d[i] < 1)
      fail(std::string(what) + " [" + std::to_string(d[0]) + "," + std::to_string(d[1]) + "," +
           std::to_string(d[2]) + "] must all be >= 1");
}

std::string dims3(const int64_t* d) {
  return "[" + std::to_string(d[0]) + "," + std::to_string(d[1]) + "," + std::to_string(d[2]) + "]";
}

void run(Backend* be, bool forward, const Buffer* src, Buffer* dst, const int64_t* in, const int64_t* out) {
  TempBuffer t;
  const Buffer* s = as_layout(src, dst->layout, t);
  const bool blk = dst->blocked();
  const int64_t P = src->shape.d[0] * (blk ? src->shape.d[1] / 16 : src->shape.d[1]);
  if (forward) {
    if (blk) pool_forward<16>(be, s->f32(), dst->f32(), P, in, out);
    else pool_forward<1>(be, s->f32(), dst->f32(), P, in, out);
  } else {
    if (blk) pool_backward<16>(be, s->f32(), dst->f32(), P, in, out);
    else pool_backward<1>(be, s->f32(), dst->f32(), P, in, out);
  }
}

void adaptive_avg_pool3d_forward(const KernelArgs& a) {
  const auto& p = a.p<cmo_pool_params>("ADAPTIVE_AVG_POOL3D_FORWARD");
  const Buffer* x = ku::input(a, 0, "x");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  if (x->shape.ndim != 5) fail("x " + x->shape.str() + " must be 5-D [N,C,D,H,W]");
  check_dims(p.out_dims, "out_dims");
  const int64_t* in = x->shape.d + 2;
  if ((p.in_dims[0] || p.in_dims[1] || p.in_dims[2]) &&
      (p.in_dims[0] != in[0] || p.in_dims[1] != in[1] || p.in_dims[2] != in[2]))
    fail("in_dims " + dims3(p.in_dims) + " disagree with x " + x->shape.str() + " (pass 0s or x's spatial dims)");
  const Shape ys = ku::make_shape({x->shape.d[0], x->shape.d[1], p.out_dims[0], p.out_dims[1], p.out_dims[2]});
  Buffer* y = a.output(0, ys, CMO_DTYPE_F32, x->layout, "ADAPTIVE_AVG_POOL3D_FORWARD");
  run(a.backend, true, x, y, in, p.out_dims);
}

void adaptive_avg_pool3d_backward(const KernelArgs& a) {
  const auto& p = a.p<cmo_pool_params>("ADAPTIVE_AVG_POOL3D_BACKWARD");
  const Buffer* dy = ku::input(a, 0, "dy");
  ku::need_dtype(dy, "dy", CMO_DTYPE_F32);
  if (dy->shape.ndim != 5) fail("dy " + dy->shape.str() + " must be 5-D [N,C,od,oh,ow]");
  check_dims(p.in_dims, "in_dims");
  const int64_t* out = dy->shape.d + 2;
  if ((p.out_dims[0] || p.out_dims[1] || p.out_dims[2]) &&
      (p.out_dims[0] != out[0] || p.out_dims[1] != out[1] || p.out_dims[2] != out[2]))
    fail("out_dims " + dims3(p.out_dims) + " disagree with dy " + dy->shape.str());
  const Shape xs = ku::make_shape({dy->shape.d[0], dy->shape.d[1], p.in_dims[0], p.in_dims[1], p.in_dims[2]});
  Buffer* dx = a.output(0, xs, CMO_DTYPE_F32, dy->layout, "ADAPTIVE_AVG_POOL3D_BACKWARD");
  run(a.backend, false, dy, dx, p.in_dims, out);
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_ADAPTIVE_AVG_POOL3D_FORWARD, adaptive_avg_pool3d_forward);
CMO_REGISTER_KERNEL(CMO_OP_ADAPTIVE_AVG_POOL3D_BACKWARD, adaptive_avg_pool3d_backward);

}  // namespace cmo
