// softmax.cpp — SOFTMAX_FORWARD / SOFTMAX_BACKWARD along one axis.
//
// The tensor is seen as [outer, K, inner]. inner == 1 (last axis, e.g. attention rows) runs row by
// row; otherwise tasks take a strip of up to 256 inner positions and sweep K three times with
// vectorisable loops. Blocked inputs are converted to plain; outputs are PLAIN.
// Backward: dx = y * (dy - sum_k y * dy).
// Vectorisation of the math below needs these (no FP exceptions or errno are relied on anywhere).
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <cmath>

#include "kernel_util.hpp"

namespace cmo {
namespace {

constexpr int64_t kStrip = 256;

// y = softmax(x) over k for an [outer, K, inner] tensor.
void softmax_plain(Backend* be, const float* x, float* y, const ku::AxisSplit& s) {
  const int64_t K = s.k, inner = s.inner;
  if (inner == 1) {
    int64_t per = std::max<int64_t>(1, ku::kChunk / K);
    ku::parallel_tasks(be, (s.outer + per - 1) / per, s.outer * K, [&](int64_t t) {
      const int64_t o0 = t * per, o1 = std::min(s.outer, o0 + per);
      for (int64_t o = o0; o < o1; o++) {
        const float* px = x + o * K;
        float* py = y + o * K;
        // Eight independent lanes for the max and the sum (vectorised, fixed order).
        float mx[8];
        for (int u = 0; u < 8; u++) mx[u] = px[0];
        int64_t k8 = 0;
        for (; k8 + 8 <= K; k8 += 8)
          for (int u = 0; u < 8; u++) mx[u] = px[k8 + u] > mx[u] ? px[k8 + u] : mx[u];
        float m = mx[0];
        for (int u = 1; u < 8; u++) m = mx[u] > m ? mx[u] : m;
        for (; k8 < K; k8++) m = px[k8] > m ? px[k8] : m;
        for (int64_t k = 0; k < K; k++) py[k] = ku::fast_exp(px[k] - m);
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        k8 = 0;
        for (; k8 + 8 <= K; k8 += 8)
          for (int u = 0; u < 8; u++) acc[u] += py[k8 + u];
        double sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; k8 < K; k8++) sum += py[k8];
        const float inv = (float)(1.0 / sum);
        for (int64_t k = 0; k < K; k++) py[k] *= inv;
      }
    });
    return;
  }
  const int64_t ns = (inner + kStrip - 1) / kStrip;
  ku::parallel_tasks(be, s.outer * ns, s.outer * K * inner, [&](int64_t t) {
    const int64_t o = t / ns, i0 = (t % ns) * kStrip, w = std::min(inner, i0 + kStrip) - i0;
    const float* px = x + o * K * inner + i0;
    float* py = y + o * K * inner + i0;
    float m[kStrip];
    float sum[kStrip];
    for (int64_t i = 0; i < w; i++) {
      m[i] = px[i];
      sum[i] = 0;
    }
    for (int64_t k = 1; k < K; k++) {
      const float* r = px + k * inner;
      for (int64_t i = 0; i < w; i++) m[i] = r[i] > m[i] ? r[i] : m[i];
    }
    for (int64_t k = 0; k < K; k++) {
      const float* r = px + k * inner;
      float* q = py + k * inner;
      for (int64_t i = 0; i < w; i++) {
        float e = ku::fast_exp(r[i] - m[i]);
        q[i] = e;
        sum[i] += e;
      }
    }
    for (int64_t i = 0; i < w; i++) sum[i] = 1.0f / sum[i];
    for (int64_t k = 0; k < K; k++) {
      float* q = py + k * inner;
      for (int64_t i = 0; i < w; i++) q[i] *= sum[i];
    }
  });
}

void softmax_forward(const KernelArgs& a) {
  const auto& p = a.p<cmo_axis_params>("SOFTMAX_FORWARD");
  const Buffer* x = ku::input(a, 0, "x");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  const int axis = ku::norm_axis(p.axis, x->shape.ndim, ("x " + x->shape.str()).c_str());
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "SOFTMAX_FORWARD");
  TempBuffer t;
  const float* px = ku::plain(x, t)->f32();
  ku::write_plain_into(a.backend, y, [&](Buffer* out) {
    softmax_plain(a.backend, px, out->f32(), ku::split_axis(x->shape, axis));
  });
}

void softmax_backward(const KernelArgs& a) {
  const auto& p = a.p<cmo_axis_params>("SOFTMAX_BACKWARD");
  const Buffer* y = ku::input(a, 0, "y");
  const Buffer* dy = ku::input(a, 1, "dy");
  ku::need_dtype(y, "y", CMO_DTYPE_F32);
  ku::need_dtype(dy, "dy", CMO_DTYPE_F32);
  ku::need_same_shape(y, "y", dy, "dy");
  const int axis = ku::norm_axis(p.axis, y->shape.ndim, ("y " + y->shape.str()).c_str());
  Buffer* dx = a.output(0, y->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "SOFTMAX_BACKWARD");
  TempBuffer ty, tdy;
  const float* py = ku::plain(y, ty)->f32();
  const float* pdy = ku::plain(dy, tdy)->f32();
  const ku::AxisSplit s = ku::split_axis(y->shape, axis);
  const int64_t K = s.k, inner = s.inner;
  ku::write_plain_into(a.backend, dx, [&](Buffer* out) {
    float* pdx = out->f32();
    const int64_t ns = (inner + kStrip - 1) / kStrip;
    int64_t per = inner == 1 ? std::max<int64_t>(1, ku::kChunk / K) : 1;
    const int64_t ntask = inner == 1 ? (s.outer + per - 1) / per : s.outer * ns;
    ku::parallel_tasks(a.backend, ntask, s.outer * K * inner, [&](int64_t t) {
      if (inner == 1) {
        const int64_t o0 = t * per, o1 = std::min(s.outer, o0 + per);
        for (int64_t o = o0; o < o1; o++) {
          const float* yy = py + o * K;
          const float* gg = pdy + o * K;
          double dot = 0;
          for (int64_t k = 0; k < K; k++) dot += (double)yy[k] * gg[k];
          const float d = (float)dot;
          for (int64_t k = 0; k < K; k++) pdx[o * K + k] = yy[k] * (gg[k] - d);
        }
        return;
      }
      const int64_t o = t / ns, i0 = (t % ns) * kStrip, w = std::min(inner, i0 + kStrip) - i0;
      const int64_t base = o * K * inner + i0;
      float dot[kStrip];
      for (int64_t i = 0; i < w; i++) dot[i] = 0;
      for (int64_t k = 0; k < K; k++)
        for (int64_t i = 0; i < w; i++) dot[i] += py[base + k * inner + i] * pdy[base + k * inner + i];
      for (int64_t k = 0; k < K; k++)
        for (int64_t i = 0; i < w; i++) {
          const int64_t j = base + k * inner + i;
          pdx[j] = py[j] * (pdy[j] - dot[i]);
        }
    });
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_SOFTMAX_FORWARD, softmax_forward);
CMO_REGISTER_KERNEL(CMO_OP_SOFTMAX_BACKWARD, softmax_backward);

}  // namespace cmo
