// l2norm.cpp — L2_NORMALIZE_FORWARD / L2_NORMALIZE_BACKWARD along one axis (PyTorch F.normalize):
//   y = x / max(||x||, eps)
//   backward (torch's clamp_min passes the gradient where ||x|| >= eps):
//     ||x|| >= eps: dx = dy / n - x * (x . dy) / n^3      else: dx = dy / eps
// The tensor is seen as [outer, K, inner]; tasks take a strip of up to 256 inner positions.
// Norms and dot products accumulate in double. Blocked inputs are converted; outputs are PLAIN.
// Vectorisation of the math below needs these (no FP exceptions or errno are relied on anywhere).
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <cmath>

#include "kernel_util.hpp"

namespace cmo {
namespace {

constexpr int64_t kStrip = 256;

template <typename F>
void for_strips(Backend* be, const ku::AxisSplit& s, F&& f) {
  const int64_t ns = (s.inner + kStrip - 1) / kStrip;
  ku::parallel_tasks(be, s.outer * ns, s.outer * s.k * s.inner, [&](int64_t t) {
    const int64_t o = t / ns, i0 = (t % ns) * kStrip, w = std::min(s.inner, i0 + kStrip) - i0;
    f(o * s.k * s.inner + i0, w);
  });
}

void check_eps(double eps) {
  if (!(eps > 0)) fail("eps " + std::to_string(eps) + " must be > 0");
}

void l2_forward(const KernelArgs& a) {
  const auto& p = a.p<cmo_l2_normalize_params>("L2_NORMALIZE_FORWARD");
  const Buffer* x = ku::input(a, 0, "x");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  check_eps(p.eps);
  const int axis = ku::norm_axis(p.axis, x->shape.ndim, ("x " + x->shape.str()).c_str());
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "L2_NORMALIZE_FORWARD");
  TempBuffer t;
  const float* px = ku::plain(x, t)->f32();
  const ku::AxisSplit s = ku::split_axis(x->shape, axis);
  const double eps = p.eps;
  ku::write_plain_into(a.backend, y, [&](Buffer* out) {
    float* py = out->f32();
    for_strips(a.backend, s, [&](int64_t base, int64_t w) {
      double ss[kStrip];
      for (int64_t i = 0; i < w; i++) ss[i] = 0;
      for (int64_t k = 0; k < s.k; k++) {
        const float* r = px + base + k * s.inner;
        for (int64_t i = 0; i < w; i++) ss[i] += (double)r[i] * r[i];
      }
      float inv[kStrip];
      for (int64_t i = 0; i < w; i++) inv[i] = (float)(1.0 / std::max(std::sqrt(ss[i]), eps));
      for (int64_t k = 0; k < s.k; k++) {
        const float* r = px + base + k * s.inner;
        float* q = py + base + k * s.inner;
        for (int64_t i = 0; i < w; i++) q[i] = r[i] * inv[i];
      }
    });
  });
}

void l2_backward(const KernelArgs& a) {
  const auto& p = a.p<cmo_l2_normalize_params>("L2_NORMALIZE_BACKWARD");
  const Buffer* x = ku::input(a, 0, "x");
  const Buffer* dy = ku::input(a, 1, "dy");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  ku::need_dtype(dy, "dy", CMO_DTYPE_F32);
  ku::need_same_shape(x, "x", dy, "dy");
  check_eps(p.eps);
  const int axis = ku::norm_axis(p.axis, x->shape.ndim, ("x " + x->shape.str()).c_str());
  Buffer* dx = a.output(0, x->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "L2_NORMALIZE_BACKWARD");
  TempBuffer tx, tdy;
  const float* px = ku::plain(x, tx)->f32();
  const float* pdy = ku::plain(dy, tdy)->f32();
  const ku::AxisSplit s = ku::split_axis(x->shape, axis);
  const double eps = p.eps;
  ku::write_plain_into(a.backend, dx, [&](Buffer* out) {
    float* pdx = out->f32();
    for_strips(a.backend, s, [&](int64_t base, int64_t w) {
      double ss[kStrip], dot[kStrip];
      for (int64_t i = 0; i < w; i++) ss[i] = dot[i] = 0;
      for (int64_t k = 0; k < s.k; k++) {
        const float* r = px + base + k * s.inner;
        const float* g = pdy + base + k * s.inner;
        for (int64_t i = 0; i < w; i++) {
          ss[i] += (double)r[i] * r[i];
          dot[i] += (double)r[i] * g[i];
        }
      }
      float c1[kStrip], c2[kStrip];  // dx = c1 * dy - c2 * x
      for (int64_t i = 0; i < w; i++) {
        double n = std::sqrt(ss[i]);
        if (n >= eps) {
          c1[i] = (float)(1.0 / n);
          c2[i] = (float)(dot[i] / (n * n * n));
        } else {
          c1[i] = (float)(1.0 / eps);
          c2[i] = 0.0f;
        }
      }
      for (int64_t k = 0; k < s.k; k++) {
        const float* r = px + base + k * s.inner;
        const float* g = pdy + base + k * s.inner;
        float* q = pdx + base + k * s.inner;
        for (int64_t i = 0; i < w; i++) q[i] = c1[i] * g[i] - c2[i] * r[i];
      }
    });
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_L2_NORMALIZE_FORWARD, l2_forward);
CMO_REGISTER_KERNEL(CMO_OP_L2_NORMALIZE_BACKWARD, l2_backward);

}  // namespace cmo
