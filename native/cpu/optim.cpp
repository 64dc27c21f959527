// optim.cpp — in-place optimiser kernels: SGD_UPDATE, ADAMW_UPDATE, EMA_UPDATE.
//
// Every operand has the parameter's shape. Elementwise, so the layout does not matter as long as all
// operands agree: the gradient is read in the parameter's layout, and a state buffer stored in
// another layout is converted, updated and written back.
// Arithmetic follows PyTorch's single-tensor CPU implementations (float32 tensors, scalars computed
// in double and applied as float).
// Vectorisation of the math below needs these (no FP exceptions or errno are relied on anywhere).
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <cmath>

#include "kernel_util.hpp"

namespace cmo {
namespace {

Buffer* inplace_operand(const KernelArgs& a, int i, const char* name, const Buffer* param) {
  const Buffer* b = ku::input(a, i, name);
  ku::need_dtype(b, name, CMO_DTYPE_F32);
  if (b->shape != param->shape)
    fail(std::string(name) + " " + b->shape.str() + " must have the shape of param " + param->shape.str());
  return const_cast<Buffer*>(b);
}

// torch.optim.SGD (dampening 0):
//   g = grad + weight_decay * param
//   buf = momentum * buf + g        (torch initialises buf = g on the first step; the ABI's buffer
//                                    starts at zero, and momentum * 0 + g = g, so the first step
//                                    matches exactly)
//   step = nesterov ? g + momentum * buf : buf
//   param -= lr * step
void sgd_update(const KernelArgs& a) {
  const auto& p = a.p<cmo_sgd_params>("SGD_UPDATE");
  Buffer* param = inplace_operand(a, 0, "param", ku::input(a, 0, "param"));
  const Buffer* grad = inplace_operand(a, 1, "grad", param);
  Buffer* mbuf = inplace_operand(a, 2, "momentum_buf", param);
  if (p.nesterov && p.momentum <= 0) fail("nesterov needs momentum > 0, got " + std::to_string(p.momentum));
  TempBuffer tg;
  const float* g = as_layout(grad, param->layout, tg)->f32();
  ku::InPlace vb(mbuf, param->layout);
  float* w = param->f32();
  float* v = vb.view->f32();
  const float lr = (float)p.lr, mom = (float)p.momentum, wd = (float)p.weight_decay;
  const bool nest = p.nesterov != 0;
  ku::parallel_range(a.backend, param->numel(), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      const float gi = wd != 0.0f ? g[i] + wd * w[i] : g[i];
      const float vi = mom * v[i] + gi;
      v[i] = vi;
      const float step = nest ? gi + mom * vi : vi;
      w[i] = w[i] - lr * step;
    }
  });
  vb.commit();
}

// torch.optim.AdamW (amsgrad off):
//   param *= 1 - lr * weight_decay
//   m = m + (1 - b1) * (g - m)            (torch: exp_avg.lerp_(grad, 1 - beta1))
//   v = b2 * v + (1 - b2) * g * g
//   denom = sqrt(v) / sqrt(1 - b2^step) + eps
//   param -= (lr / (1 - b1^step)) * m / denom
void adamw_update(const KernelArgs& a) {
  const auto& p = a.p<cmo_adamw_params>("ADAMW_UPDATE");
  Buffer* param = inplace_operand(a, 0, "param", ku::input(a, 0, "param"));
  const Buffer* grad = inplace_operand(a, 1, "grad", param);
  Buffer* mb = inplace_operand(a, 2, "m", param);
  Buffer* vbuf = inplace_operand(a, 3, "v", param);
  if (p.step < 1) fail("step " + std::to_string(p.step) + " must be >= 1 (1-based)");
  if (!(p.beta1 >= 0 && p.beta1 < 1) || !(p.beta2 >= 0 && p.beta2 < 1))
    fail("betas (" + std::to_string(p.beta1) + ", " + std::to_string(p.beta2) + ") must lie in [0, 1)");
  TempBuffer tg;
  const float* g = as_layout(grad, param->layout, tg)->f32();
  ku::InPlace vm(mb, param->layout), vv(vbuf, param->layout);
  float* w = param->f32();
  float* m = vm.view->f32();
  float* v = vv.view->f32();
  const double bc1 = 1.0 - std::pow(p.beta1, (double)p.step);
  const double bc2 = 1.0 - std::pow(p.beta2, (double)p.step);
  const float decay = (float)(1.0 - p.lr * p.weight_decay);
  const float w1 = (float)(1.0 - p.beta1), b2 = (float)p.beta2, w2 = (float)(1.0 - p.beta2);
  const float step_size = (float)(p.lr / bc1);
  const float bc2_sqrt = (float)std::sqrt(bc2);
  const float eps = (float)p.eps;
  ku::parallel_range(a.backend, param->numel(), [=](int64_t lo, int64_t hi) {
    const float* __restrict gg = g + lo;
    float* __restrict ww = w + lo;
    float* __restrict mm = m + lo;
    float* __restrict vv2 = v + lo;
    const int64_t n = hi - lo;
    float root[1024];
    for (int64_t t0 = 0; t0 < n; t0 += 1024) {
      const int64_t tn = std::min<int64_t>(1024, n - t0);
      for (int64_t i = t0; i < t0 + tn; i++) {
        const float gi = gg[i];
        mm[i] = mm[i] + w1 * (gi - mm[i]);
        vv2[i] = vv2[i] * b2 + w2 * gi * gi;
      }
      ku::sqrt_array(vv2 + t0, root, tn);
      for (int64_t i = 0; i < tn; i++) {
        const float denom = root[i] / bc2_sqrt + eps;
        ww[t0 + i] = ww[t0 + i] * decay - step_size * (mm[t0 + i] / denom);
      }
    }
  });
  vm.commit();
  vv.commit();
}

// ema = decay * ema + (1 - decay) * param   (mean-teacher update: ema.mul_(d).add_(p, alpha=1-d))
void ema_update(const KernelArgs& a) {
  const auto& p = a.p<cmo_ema_params>("EMA_UPDATE");
  const Buffer* ema_in = ku::input(a, 0, "ema_param");
  ku::need_dtype(ema_in, "ema_param", CMO_DTYPE_F32);
  Buffer* ema = const_cast<Buffer*>(ema_in);
  const Buffer* param = inplace_operand(a, 1, "param", ema);
  if (!(p.decay >= 0 && p.decay <= 1)) fail("decay " + std::to_string(p.decay) + " must lie in [0, 1]");
  TempBuffer tp;
  const float* x = as_layout(param, ema->layout, tp)->f32();
  float* e = ema->f32();
  const float d = (float)p.decay, d1 = (float)(1.0 - p.decay);
  ku::parallel_range(a.backend, ema->numel(), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) e[i] = e[i] * d + d1 * x[i];
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_SGD_UPDATE, sgd_update);
CMO_REGISTER_KERNEL(CMO_OP_ADAMW_UPDATE, adamw_update);
CMO_REGISTER_KERNEL(CMO_OP_EMA_UPDATE, ema_update);

}  // namespace cmo
