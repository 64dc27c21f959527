// optim.cu — fused optimiser updates (SGD with momentum / Nesterov, AdamW) and the EMA update, each
// one pass over its tensors, in place.
#include <cmath>

#include "internal.cuh"

namespace cmocu {
namespace {

void same_shape(const Buffer* ref, const Buffer* b, const char* op, const char* role) {
  need_f32(b, op, role);
  if (b->shape.numel() != ref->shape.numel() || b->shape != ref->shape)
    fail(std::string(op) + ": " + role + " " + b->shape.str() + " differs from param " + ref->shape.str());
}

void sgd_update(const KernelArgs& a) {
  const char* op = "SGD_UPDATE";
  const auto& p = a.p<cmo_sgd_params>(op);
  const Buffer *param = a.in[0], *grad = a.in[1], *mom = a.in[2];
  need_f32(param, op, "param");
  same_shape(param, grad, op, "grad");
  same_shape(param, mom, op, "momentum_buf");
  float* w = param->f32();
  const float* g = grad->f32();
  float* v = mom->f32();
  const float lr = (float)p.lr, mu = (float)p.momentum, wd = (float)p.weight_decay;
  const bool nesterov = p.nesterov != 0;
  launch_elementwise(a.backend, param->numel(), [=] __device__(int64_t i) {
    float gi = g[i] + wd * w[i];
    float vi = mu * v[i] + gi;
    v[i] = vi;
    w[i] -= lr * (nesterov ? gi + mu * vi : vi);
  }, op);
}

void adamw_update(const KernelArgs& a) {
  const char* op = "ADAMW_UPDATE";
  const auto& p = a.p<cmo_adamw_params>(op);
  const Buffer *param = a.in[0], *grad = a.in[1], *m = a.in[2], *v = a.in[3];
  need_f32(param, op, "param");
  same_shape(param, grad, op, "grad");
  same_shape(param, m, op, "m");
  same_shape(param, v, op, "v");
  if (p.step < 1) fail(std::string(op) + ": step is 1-based, got " + std::to_string(p.step));
  float* w = param->f32();
  const float* g = grad->f32();
  float *mp = m->f32(), *vp = v->f32();
  const float lr = (float)p.lr, b1 = (float)p.beta1, b2 = (float)p.beta2, eps = (float)p.eps;
  const float decay = (float)(1.0 - p.lr * p.weight_decay);
  const float bc1 = (float)(1.0 - std::pow(p.beta1, (double)p.step));
  const float bc2_sqrt = (float)std::sqrt(1.0 - std::pow(p.beta2, (double)p.step));
  const float step_size = lr / bc1;
  launch_elementwise(a.backend, param->numel(), [=] __device__(int64_t i) {
    float gi = g[i];
    float wi = w[i] * decay;
    float mi = b1 * mp[i] + (1.f - b1) * gi;
    float vi = b2 * vp[i] + (1.f - b2) * gi * gi;
    mp[i] = mi;
    vp[i] = vi;
    w[i] = wi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
  }, op);
}

void ema_update(const KernelArgs& a) {
  const char* op = "EMA_UPDATE";
  const auto& p = a.p<cmo_ema_params>(op);
  const Buffer *ema = a.in[0], *param = a.in[1];
  need_f32(ema, op, "ema_param");
  same_shape(ema, param, op, "param");
  float* e = ema->f32();
  const float* w = param->f32();
  const float d = (float)p.decay, one_minus = (float)(1.0 - p.decay);
  launch_elementwise(a.backend, ema->numel(), [=] __device__(int64_t i) { e[i] = d * e[i] + one_minus * w[i]; }, op);
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_SGD_UPDATE, sgd_update);
CMO_REGISTER_KERNEL(CMO_OP_ADAMW_UPDATE, adamw_update);
CMO_REGISTER_KERNEL(CMO_OP_EMA_UPDATE, ema_update);

}  // namespace cmocu
