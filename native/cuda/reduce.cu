// reduce.cu — reductions over axes (sum, mean, max) and the max backward, argmax, softmax and L2
// normalisation along an axis (forward and backward), adaptive average pooling (forward and backward).
#include <cfloat>

#include "internal.cuh"
#include "plane_sums.cuh"

namespace cmocu {
namespace {

// Input offsets of a reduction: a "plane" walks the kept dims, s walks the reduced dims.
struct RIdx {
  int nk, nr;
  int64_t kd[CMO_MAX_DIMS], ks[CMO_MAX_DIMS];
  int64_t rd[CMO_MAX_DIMS], rs[CMO_MAX_DIMS];
  bool contiguous;  // reduced dims are the trailing ones: offset = plane * R + s
  int64_t R;
};

__device__ inline int64_t ridx_offset(const RIdx& r, int64_t plane, int64_t s) {
  if (r.contiguous) return plane * r.R + s;
  int64_t off = 0;
  for (int k = r.nr - 1; k >= 0; k--) {
    off += (s % r.rd[k]) * r.rs[k];
    s /= r.rd[k];
  }
  for (int k = r.nk - 1; k >= 0; k--) {
    off += (plane % r.kd[k]) * r.ks[k];
    plane /= r.kd[k];
  }
  return off;
}

RIdx make_ridx(const Shape& x, int64_t mask, Shape* out, const char* op) {
  if (mask < 0 || (x.ndim < 63 && (mask >> x.ndim) != 0))
    fail(std::string(op) + ": axes_mask " + std::to_string(mask) + " names dims outside " + x.str());
  RIdx r{};
  int64_t st[CMO_MAX_DIMS];
  row_major_strides(x, st);
  *out = x;
  r.R = 1;
  bool seen_reduced = false, contiguous = true;
  for (int k = 0; k < x.ndim; k++) {
    if ((mask >> k) & 1) {
      r.rd[r.nr] = x.d[k];
      r.rs[r.nr++] = st[k];
      r.R *= x.d[k];
      out->d[k] = 1;
      seen_reduced = true;
    } else {
      r.kd[r.nk] = x.d[k];
      r.ks[r.nk++] = st[k];
      if (seen_reduced) contiguous = false;
    }
  }
  r.contiguous = contiguous;
  return r;
}

__device__ inline float nan_max(float a, float b) { return (a != a) ? a : ((b > a || b != b) ? b : a); }

template <bool IsMax>
__global__ void reduce_block_kernel(int64_t planes, RIdx r, const float* x, float* y, float scale) {
  __shared__ float sm[32];
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    float acc = IsMax ? -FLT_MAX : 0.f;
    bool any = false;
    for (int64_t s = threadIdx.x; s < r.R; s += blockDim.x) {
      float v = x[ridx_offset(r, p, s)];
      if (IsMax) {
        if (!any || v > acc || v != v) acc = v;  // NaN counts as the maximum
        any = true;
      } else {
        acc += v;
      }
    }
    if (IsMax && !any) acc = -FLT_MAX;
    for (int o = 16; o > 0; o >>= 1) {
      float w = __shfl_down_sync(0xffffffffu, acc, o);
      acc = IsMax ? nan_max(acc, w) : acc + w;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sm[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      float t = sm[0];
      for (int i = 1; i < (int)(blockDim.x >> 5); i++) t = IsMax ? nan_max(t, sm[i]) : t + sm[i];
      y[p] = IsMax ? t : t * scale;
    }
  }
}

void reduce(const KernelArgs& a) {
  const char* op = "REDUCE";
  const auto& p = a.p<cmo_reduce_params>(op);
  const Buffer* x = a.in[0];
  need_f32(x, op, "x");
  if (p.kind < CMO_REDUCE_SUM || p.kind > CMO_REDUCE_MAX) fail(std::string(op) + ": unknown reduce kind " + std::to_string(p.kind));
  Shape out;
  RIdx r = make_ridx(x->shape, p.axes_mask, &out, op);
  Buffer* y = a.output(0, out, CMO_DTYPE_F32, op);
  int64_t planes = out.numel();
  if (planes == 0) return;
  if (p.kind == CMO_REDUCE_MAX && r.R == 0) fail(std::string(op) + ": max over an empty axis of " + x->shape.str());
  Backend* be = a.backend;
  const float* xp = x->f32();
  float* yp = y->f32();
  if (p.kind == CMO_REDUCE_MAX) {
    reduce_block_kernel<true><<<(unsigned)std::min<int64_t>(planes, 65535), kThreads, 0, stream(be)>>>(planes, r, xp, yp, 1.f);
    check_launch(op);
    return;
  }
  const double scale = p.kind == CMO_REDUCE_MEAN ? (r.R > 0 ? 1.0 / (double)r.R : 0.0) : 1.0;
  if (r.R <= 64) {  // small reductions: one thread per output
    launch_elementwise(be, planes, [=] __device__(int64_t pl) {
      double acc = 0;
      for (int64_t s = 0; s < r.R; s++) acc += xp[ridx_offset(r, pl, s)];
      yp[pl] = (float)(acc * scale);
    }, op);
    return;
  }
  Scratch tot(be, (size_t)planes * sizeof(double));
  plane_sums<1>(be, planes, r.R, [=] __device__(int64_t pl, int64_t s, double* acc) { acc[0] += xp[ridx_offset(r, pl, s)]; },
                tot.as<double>(), op);
  const double* t = tot.as<double>();
  launch_elementwise(be, planes, [=] __device__(int64_t pl) { yp[pl] = (float)(t[pl] * scale); }, op);
}

void reduce_max_backward(const KernelArgs& a) {
  const char* op = "REDUCE_MAX_BACKWARD";
  const auto& p = a.p<cmo_reduce_params>(op);
  const Buffer *x = a.in[0], *y = a.in[1], *dy = a.in[2];
  need_f32(x, op, "x");
  need_f32(y, op, "y");
  need_f32(dy, op, "dy");
  Shape out;
  RIdx r = make_ridx(x->shape, p.axes_mask, &out, op);
  if (y->numel() != out.numel() || dy->numel() != out.numel())
    fail(std::string(op) + ": y " + y->shape.str() + " and dy " + dy->shape.str() + " must have the reduced shape " + out.str());
  Buffer* dx = a.output(0, x->shape, CMO_DTYPE_F32, op);
  int64_t planes = out.numel();
  Backend* be = a.backend;
  const float *xp = x->f32(), *yp = y->f32(), *dyp = dy->f32();
  float* dxp = dx->f32();
  if (planes == 0 || x->numel() == 0) return;
  Scratch cnt(be, (size_t)planes * sizeof(double));
  plane_sums<1>(be, planes, r.R, [=] __device__(int64_t pl, int64_t s, double* acc) {
    float v = xp[ridx_offset(r, pl, s)], m = yp[pl];
    acc[0] += (v == m || (v != v && m != m)) ? 1.0 : 0.0;
  }, cnt.as<double>(), op);
  const double* c = cnt.as<double>();
  // plane index of an input element: its coordinates on the kept dims
  Shape xs = x->shape;
  int64_t pst[CMO_MAX_DIMS];
  row_major_strides(out, pst);
  for (int k = 0; k < xs.ndim; k++)
    if ((p.axes_mask >> k) & 1) pst[k] = 0;
  Dims6 pi{};
  pi.ndim = xs.ndim;
  for (int k = 0; k < xs.ndim; k++) {
    pi.d[k] = xs.d[k];
    pi.s[k] = pst[k];
  }
  launch_elementwise(be, x->numel(), [=] __device__(int64_t i) {
    int64_t q = i, pl = 0;
    for (int k = pi.ndim - 1; k >= 0; k--) {
      pl += (q % pi.d[k]) * pi.s[k];
      q /= pi.d[k];
    }
    float v = xp[i], m = yp[pl];
    dxp[i] = (v == m || (v != v && m != m)) ? (float)(dyp[pl] / c[pl]) : 0.f;
  }, op);
}

// ------------------------------------------------------------------ along one axis
void argmax(const KernelArgs& a) {
  const char* op = "ARGMAX";
  const auto& p = a.p<cmo_axis_params>(op);
  const Buffer* x = a.in[0];
  need_f32(x, op, "x");
  int axis = norm_axis(p.axis, x->shape, op);
  Shape out = x->shape;
  out.d[axis] = 1;
  Buffer* y = a.output(0, out, CMO_DTYPE_I32, op);
  int64_t outer, len, inner;
  split_axis(x->shape, axis, &outer, &len, &inner);
  const float* xp = x->f32();
  int32_t* yp = y->i32();
  launch_elementwise(a.backend, outer * inner, [=] __device__(int64_t i) {
    int64_t o = i / inner, in = i % inner;
    const float* row = xp + o * len * inner + in;
    int32_t best = 0;
    float bv = len > 0 ? row[0] : 0.f;
    for (int64_t k = 1; k < len; k++) {
      float v = row[k * inner];
      if (v > bv || (v != v && bv == bv)) {  // first maximum wins; NaN counts as the maximum
        bv = v;
        best = (int32_t)k;
      }
    }
    yp[i] = best;
  }, op);
}

void softmax_forward(const KernelArgs& a) {
  const char* op = "SOFTMAX_FORWARD";
  const auto& p = a.p<cmo_axis_params>(op);
  const Buffer* x = a.in[0];
  need_f32(x, op, "x");
  int axis = norm_axis(p.axis, x->shape, op);
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, op);
  int64_t outer, len, inner;
  split_axis(x->shape, axis, &outer, &len, &inner);
  const float* xp = x->f32();
  float* yp = y->f32();
  launch_elementwise(a.backend, outer * inner, [=] __device__(int64_t i) {
    int64_t base = (i / inner) * len * inner + i % inner;
    float m = -FLT_MAX;
    for (int64_t k = 0; k < len; k++) m = fmaxf(m, xp[base + k * inner]);
    float s = 0.f;
    for (int64_t k = 0; k < len; k++) s += expf(xp[base + k * inner] - m);
    float inv = 1.f / s;
    for (int64_t k = 0; k < len; k++) yp[base + k * inner] = expf(xp[base + k * inner] - m) * inv;
  }, op);
}

void softmax_backward(const KernelArgs& a) {
  const char* op = "SOFTMAX_BACKWARD";
  const auto& p = a.p<cmo_axis_params>(op);
  const Buffer *y = a.in[0], *dy = a.in[1];
  need_f32(y, op, "y");
  need_f32(dy, op, "dy");
  if (y->shape != dy->shape) fail(std::string(op) + ": y " + y->shape.str() + " and dy " + dy->shape.str() + " differ");
  int axis = norm_axis(p.axis, y->shape, op);
  Buffer* dx = a.output(0, y->shape, CMO_DTYPE_F32, op);
  int64_t outer, len, inner;
  split_axis(y->shape, axis, &outer, &len, &inner);
  const float *yp = y->f32(), *dyp = dy->f32();
  float* dxp = dx->f32();
  launch_elementwise(a.backend, outer * inner, [=] __device__(int64_t i) {
    int64_t base = (i / inner) * len * inner + i % inner;
    float s = 0.f;
    for (int64_t k = 0; k < len; k++) s += yp[base + k * inner] * dyp[base + k * inner];
    for (int64_t k = 0; k < len; k++) {
      int64_t j = base + k * inner;
      dxp[j] = yp[j] * (dyp[j] - s);
    }
  }, op);
}

void l2_normalize_forward(const KernelArgs& a) {
  const char* op = "L2_NORMALIZE_FORWARD";
  const auto& p = a.p<cmo_l2_normalize_params>(op);
  const Buffer* x = a.in[0];
  need_f32(x, op, "x");
  int axis = norm_axis(p.axis, x->shape, op);
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, op);
  int64_t outer, len, inner;
  split_axis(x->shape, axis, &outer, &len, &inner);
  const float* xp = x->f32();
  float* yp = y->f32();
  const double eps = p.eps;
  launch_elementwise(a.backend, outer * inner, [=] __device__(int64_t i) {
    int64_t base = (i / inner) * len * inner + i % inner;
    double s = 0;
    for (int64_t k = 0; k < len; k++) {
      double v = xp[base + k * inner];
      s += v * v;
    }
    double n = sqrt(s);
    float inv = (float)(1.0 / (n > eps ? n : eps));
    for (int64_t k = 0; k < len; k++) yp[base + k * inner] = xp[base + k * inner] * inv;
  }, op);
}

void l2_normalize_backward(const KernelArgs& a) {
  const char* op = "L2_NORMALIZE_BACKWARD";
  const auto& p = a.p<cmo_l2_normalize_params>(op);
  const Buffer *x = a.in[0], *dy = a.in[1];
  need_f32(x, op, "x");
  need_f32(dy, op, "dy");
  if (x->shape != dy->shape) fail(std::string(op) + ": x " + x->shape.str() + " and dy " + dy->shape.str() + " differ");
  int axis = norm_axis(p.axis, x->shape, op);
  Buffer* dx = a.output(0, x->shape, CMO_DTYPE_F32, op);
  int64_t outer, len, inner;
  split_axis(x->shape, axis, &outer, &len, &inner);
  const float *xp = x->f32(), *dyp = dy->f32();
  float* dxp = dx->f32();
  const double eps = p.eps;
  launch_elementwise(a.backend, outer * inner, [=] __device__(int64_t i) {
    int64_t base = (i / inner) * len * inner + i % inner;
    double ss = 0, dot = 0;
    for (int64_t k = 0; k < len; k++) {
      double v = xp[base + k * inner];
      ss += v * v;
      dot += v * (double)dyp[base + k * inner];
    }
    double n = sqrt(ss);
    if (n > eps) {
      double inv = 1.0 / n, c = dot / (n * n * n);
      for (int64_t k = 0; k < len; k++) {
        int64_t j = base + k * inner;
        dxp[j] = (float)(dyp[j] * inv - xp[j] * c);
      }
    } else {
      float inv = (float)(1.0 / eps);
      for (int64_t k = 0; k < len; k++) dxp[base + k * inner] = dyp[base + k * inner] * inv;
    }
  }, op);
}

// ------------------------------------------------------------------ adaptive average pooling
__device__ inline int64_t bin_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
__device__ inline int64_t bin_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

struct Pool3 {
  int64_t NC, in[3], out[3];
};

void check_pool_dims(const int64_t* d, const char* what, const char* op) {
  for (int i = 0; i < 3; i++)
    if (d[i] < 1) fail(std::string(op) + ": " + what + " must be >= 1, got " + std::to_string(d[i]) + " on axis " + std::to_string(i));
}

void pool_forward(const KernelArgs& a) {
  const char* op = "ADAPTIVE_AVG_POOL3D_FORWARD";
  const auto& p = a.p<cmo_pool_params>(op);
  const Buffer* x = a.in[0];
  need_f32(x, op, "x");
  if (x->shape.ndim != 5) fail(std::string(op) + ": x must be 5-D [N,C,D,H,W], got " + x->shape.str());
  check_pool_dims(p.out_dims, "out_dims", op);
  Shape os = x->shape;
  Pool3 g{x->shape.d[0] * x->shape.d[1], {}, {}};
  for (int i = 0; i < 3; i++) {
    os.d[2 + i] = p.out_dims[i];
    g.in[i] = x->shape.d[2 + i];
    g.out[i] = p.out_dims[i];
  }
  Buffer* y = a.output(0, os, CMO_DTYPE_F32, op);
  const float* xp = x->f32();
  float* yp = y->f32();
  launch_elementwise(a.backend, os.numel(), [=] __device__(int64_t i) {
    int64_t ow = i % g.out[2], oh = (i / g.out[2]) % g.out[1], od = (i / (g.out[2] * g.out[1])) % g.out[0];
    int64_t nc = i / (g.out[0] * g.out[1] * g.out[2]);
    int64_t d0 = bin_start(od, g.in[0], g.out[0]), d1 = bin_end(od, g.in[0], g.out[0]);
    int64_t h0 = bin_start(oh, g.in[1], g.out[1]), h1 = bin_end(oh, g.in[1], g.out[1]);
    int64_t w0 = bin_start(ow, g.in[2], g.out[2]), w1 = bin_end(ow, g.in[2], g.out[2]);
    const float* base = xp + nc * g.in[0] * g.in[1] * g.in[2];
    float s = 0.f;
    for (int64_t d = d0; d < d1; d++)
      for (int64_t h = h0; h < h1; h++)
        for (int64_t w = w0; w < w1; w++) s += base[(d * g.in[1] + h) * g.in[2] + w];
    yp[i] = s / (float)((d1 - d0) * (h1 - h0) * (w1 - w0));
  }, op);
}

void pool_backward(const KernelArgs& a) {
  const char* op = "ADAPTIVE_AVG_POOL3D_BACKWARD";
  const auto& p = a.p<cmo_pool_params>(op);
  const Buffer* dy = a.in[0];
  need_f32(dy, op, "dy");
  if (dy->shape.ndim != 5) fail(std::string(op) + ": dy must be 5-D [N,C,od,oh,ow], got " + dy->shape.str());
  check_pool_dims(p.in_dims, "in_dims", op);
  Shape xs = dy->shape;
  Pool3 g{dy->shape.d[0] * dy->shape.d[1], {}, {}};
  for (int i = 0; i < 3; i++) {
    xs.d[2 + i] = p.in_dims[i];
    g.in[i] = p.in_dims[i];
    g.out[i] = dy->shape.d[2 + i];
  }
  Buffer* dx = a.output(0, xs, CMO_DTYPE_F32, op);
  const float* dyp = dy->f32();
  float* dxp = dx->f32();
  launch_elementwise(a.backend, xs.numel(), [=] __device__(int64_t i) {
    int64_t c[3] = {(i / (g.in[2] * g.in[1])) % g.in[0], (i / g.in[2]) % g.in[1], i % g.in[2]};
    int64_t nc = i / (g.in[0] * g.in[1] * g.in[2]);
    int64_t lo[3], hi[3];
    for (int k = 0; k < 3; k++) {
      // bins o with start(o) <= c < end(o)
      int64_t o0 = (c[k] * g.out[k]) / g.in[k] - 1, o1 = ((c[k] + 1) * g.out[k]) / g.in[k] + 1;
      lo[k] = o0 < 0 ? 0 : o0;
      hi[k] = o1 > g.out[k] - 1 ? g.out[k] - 1 : o1;
    }
    const float* base = dyp + nc * g.out[0] * g.out[1] * g.out[2];
    float s = 0.f;
    for (int64_t od = lo[0]; od <= hi[0]; od++) {
      int64_t d0 = bin_start(od, g.in[0], g.out[0]), d1 = bin_end(od, g.in[0], g.out[0]);
      if (c[0] < d0 || c[0] >= d1) continue;
      for (int64_t oh = lo[1]; oh <= hi[1]; oh++) {
        int64_t h0 = bin_start(oh, g.in[1], g.out[1]), h1 = bin_end(oh, g.in[1], g.out[1]);
        if (c[1] < h0 || c[1] >= h1) continue;
        for (int64_t ow = lo[2]; ow <= hi[2]; ow++) {
          int64_t w0 = bin_start(ow, g.in[2], g.out[2]), w1 = bin_end(ow, g.in[2], g.out[2]);
          if (c[2] < w0 || c[2] >= w1) continue;
          s += base[(od * g.out[1] + oh) * g.out[2] + ow] / (float)((d1 - d0) * (h1 - h0) * (w1 - w0));
        }
      }
    }
    dxp[i] = s;
  }, op);
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_REDUCE, reduce);
CMO_REGISTER_KERNEL(CMO_OP_REDUCE_MAX_BACKWARD, reduce_max_backward);
CMO_REGISTER_KERNEL(CMO_OP_ARGMAX, argmax);
CMO_REGISTER_KERNEL(CMO_OP_SOFTMAX_FORWARD, softmax_forward);
CMO_REGISTER_KERNEL(CMO_OP_SOFTMAX_BACKWARD, softmax_backward);
CMO_REGISTER_KERNEL(CMO_OP_L2_NORMALIZE_FORWARD, l2_normalize_forward);
CMO_REGISTER_KERNEL(CMO_OP_L2_NORMALIZE_BACKWARD, l2_normalize_backward);
CMO_REGISTER_KERNEL(CMO_OP_ADAPTIVE_AVG_POOL3D_FORWARD, pool_forward);
CMO_REGISTER_KERNEL(CMO_OP_ADAPTIVE_AVG_POOL3D_BACKWARD, pool_backward);

}  // namespace cmocu
