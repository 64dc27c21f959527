// norm.cu — group normalisation (instance norm is groups == C), forward and backward.
// Statistics are fused: one read of x for the forward statistics (sum and sum of squares in double,
// per chunk, combined in a fixed order), one read of x and dy for the backward sums.
#include "internal.cuh"
#include "plane_sums.cuh"

namespace cmocu {
namespace {

struct NormDims {
  int64_t N, C, S, G;
};

NormDims check_norm(const Buffer* x, const Buffer* gamma, const cmo_group_norm_params& p, const char* op) {
  need_f32(x, op, "x");
  if (x->shape.ndim < 2) fail(std::string(op) + ": x must have at least 2 dims [N,C,...], got " + x->shape.str());
  NormDims d{x->shape.d[0], x->shape.d[1], 1, p.groups};
  for (int i = 2; i < x->shape.ndim; i++) d.S *= x->shape.d[i];
  if (p.groups < 1 || d.C % p.groups != 0)
    fail(std::string(op) + ": groups " + std::to_string(p.groups) + " must divide the " + std::to_string(d.C) +
         " channels of x " + x->shape.str());
  if (gamma) {
    need_f32(gamma, op, "gamma");
    if (gamma->numel() != d.C)
      fail(std::string(op) + ": gamma has shape " + gamma->shape.str() + ", expected [" + std::to_string(d.C) + "]");
  }
  return d;
}

// Per (n, c): the affine step z = x * scale + shift from the stored float mean and rstd, computed
// identically by forward and backward so both take the same side of the activation's kink.
// coef[2*(n*C+c)] = scale, coef[2*(n*C+c)+1] = shift (bp NULL: beta 0, for the backward without an
// activation, where the slope 1 makes the shift irrelevant).
void affine_coefs(Backend* be, const float* mp, const float* rp, const float* gp, const float* bp, int64_t N,
                  int64_t C, int64_t G, float* coef, const char* op) {
  const int64_t Cg = C / G;
  launch_elementwise(be, N * C, [=] __device__(int64_t nc) {
    int64_t n = nc / C, c = nc % C, ng = n * G + c / Cg;
    double s = (double)rp[ng] * (double)gp[c];
    coef[2 * nc] = (float)s;
    coef[2 * nc + 1] = (float)((bp ? (double)bp[c] : 0.0) - (double)mp[ng] * s);
  }, op);
}

Shape stats_shape(const NormDims& d) {
  Shape s;
  s.ndim = 2;
  s.d[0] = d.N;
  s.d[1] = d.G;
  return s;
}

void group_norm_forward(const KernelArgs& a) {
  const char* op = "GROUP_NORM_FORWARD";
  const auto& p = a.p<cmo_group_norm_params>(op);
  const Buffer *x = a.in[0], *gamma = a.in[1], *beta = a.in[2];
  NormDims d = check_norm(x, gamma, p, op);
  need_f32(beta, op, "beta");
  if (beta->numel() != d.C)
    fail(std::string(op) + ": beta has shape " + beta->shape.str() + ", expected [" + std::to_string(d.C) + "]");
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, op);
  Buffer* mean = a.output(1, stats_shape(d), CMO_DTYPE_F32, op);
  Buffer* rstd = a.output(2, stats_shape(d), CMO_DTYPE_F32, op);
  const int64_t P = d.N * d.G, L = (d.C / d.G) * d.S;
  if (P == 0) return;
  Backend* be = a.backend;
  Scratch tot(be, (size_t)P * 2 * sizeof(double));
  const float* xp = x->f32();
  plane_sums<2>(be, P, L, [=] __device__(int64_t plane, int64_t s, double* acc) {
    double v = xp[plane * L + s];
    acc[0] += v;
    acc[1] += v * v;
  }, tot.as<double>(), op);
  const double* t = tot.as<double>();
  float *mp = mean->f32(), *rp = rstd->f32();
  const double eps = p.eps;
  launch_elementwise(be, P, [=] __device__(int64_t i) {
    double m = L > 0 ? t[2 * i] / (double)L : 0.0;
    double var = L > 0 ? t[2 * i + 1] / (double)L - m * m : 0.0;
    if (var < 0) var = 0;
    mp[i] = (float)m;
    rp[i] = (float)(1.0 / sqrt(var + eps));
  }, op);
  const float *gp = gamma->f32(), *bp = beta->f32();
  float* yp = y->f32();
  const int64_t S = d.S, C = d.C;
  const float slope = cmo_common::norm_activation_slope(p, op);
  Scratch coef(be, (size_t)d.N * C * 2 * sizeof(float));
  float* cf = coef.as<float>();
  affine_coefs(be, mp, rp, gp, bp, d.N, C, d.G, cf, op);
  launch_elementwise(be, x->numel(), [=] __device__(int64_t i) {
    int64_t nc = i / S;
    yp[i] = cmo_common::norm_act_apply(xp[i] * cf[2 * nc] + cf[2 * nc + 1], slope);
  }, op);
}

void group_norm_backward(const KernelArgs& a) {
  const char* op = "GROUP_NORM_BACKWARD";
  const auto& p = a.p<cmo_group_norm_params>(op);
  const Buffer *x = a.in[0], *dy = a.in[1], *gamma = a.in[2], *mean = a.in[3], *rstd = a.in[4], *beta = a.in[5];
  NormDims d = check_norm(x, gamma, p, op);
  const float slope = cmo_common::norm_activation_slope(p, op);
  const bool fused = p.activation != CMO_NORM_ACT_NONE;
  if (fused) {
    if (beta == nullptr) fail(std::string(op) + ": beta is required with a fused activation");
    need_f32(beta, op, "beta");
    if (beta->numel() != d.C)
      fail(std::string(op) + ": beta has shape " + beta->shape.str() + ", expected [" + std::to_string(d.C) + "]");
  }
  need_f32(dy, op, "dy");
  if (dy->shape != x->shape) fail(std::string(op) + ": dy " + dy->shape.str() + " differs from x " + x->shape.str());
  for (const Buffer* s : {mean, rstd}) {
    need_f32(s, op, "mean/rstd");
    if (s->numel() != d.N * d.G)
      fail(std::string(op) + ": mean and rstd must hold N*G = " + std::to_string(d.N * d.G) + " values, got " +
           s->shape.str());
  }
  Shape cs;
  cs.ndim = 1;
  cs.d[0] = d.C;
  Buffer* dx = a.output(0, x->shape, CMO_DTYPE_F32, op);
  bool dg_new = false, db_new = false;
  Buffer* dgamma = a.output(1, cs, CMO_DTYPE_F32, op, &dg_new);
  Buffer* dbeta = a.output(2, cs, CMO_DTYPE_F32, op, &db_new);
  Backend* be = a.backend;
  const int64_t N = d.N, C = d.C, S = d.S, G = d.G, Cg = d.C / d.G;
  const int64_t NC = N * C;
  if (NC == 0) return;
  Scratch sums(be, (size_t)NC * 2 * sizeof(double));  // [n,c]: sum dy, sum dy*x
  const float* xp = x->f32();
  const float* dyp = dy->f32();
  const float *gp = gamma->f32(), *mp = mean->f32(), *rp = rstd->f32();
  // dy is used as dy * act'(z), z recomputed from x on the fly (act' = 1 without an activation).
  Scratch zcoef(be, (size_t)NC * 2 * sizeof(float));
  const float* zc = zcoef.as<float>();
  affine_coefs(be, mp, rp, gp, fused ? beta->f32() : nullptr, N, C, G, zcoef.as<float>(), op);
  plane_sums<2>(be, NC, S, [=] __device__(int64_t plane, int64_t s, double* acc) {
    float xv = xp[plane * S + s];
    float gf = dyp[plane * S + s];
    gf *= cmo_common::norm_act_grad(xv * zc[2 * plane] + zc[2 * plane + 1], slope);
    double g = gf;
    acc[0] += g;
    acc[1] += g * (double)xv;
  }, sums.as<double>(), op);
  const double* sp = sums.as<double>();
  // per (n,g): coefficients of dx = c1[n,c]*dy + c2[n,g]*x + c3[n,g]
  Scratch coef(be, (size_t)N * G * 2 * sizeof(float));
  float* cf = coef.as<float>();
  const double M = (double)Cg * (double)S;
  launch_elementwise(be, N * G, [=] __device__(int64_t ng) {
    int64_t n = ng / G, g = ng % G;
    double m = mp[ng], r = rp[ng];
    double s1 = 0, s2 = 0;  // sum gamma*dy, sum gamma*dy*xhat over the group
    for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
      double sa = sp[2 * (n * C + c)], sb = sp[2 * (n * C + c) + 1];
      s1 += gp[c] * sa;
      s2 += gp[c] * (sb - m * sa) * r;
    }
    double c2 = M > 0 ? -r * r * s2 / M : 0.0;
    double c3 = M > 0 ? (-r * s1 + r * r * s2 * m) / M : 0.0;
    cf[2 * ng] = (float)c2;
    cf[2 * ng + 1] = (float)c3;
  }, op);
  float* dxp = dx->f32();
  const int64_t L = Cg * S;
  launch_elementwise(be, x->numel(), [=] __device__(int64_t i) {
    int64_t ng = i / L;
    int64_t nc = i / S;
    int64_t c = nc % C;
    float g = dyp[i];
    g *= cmo_common::norm_act_grad(xp[i] * zc[2 * nc] + zc[2 * nc + 1], slope);
    dxp[i] = rp[ng] * gp[c] * g + cf[2 * ng] * xp[i] + cf[2 * ng + 1];
  }, op);
  float *dgp = dgamma->f32(), *dbp = dbeta->f32();
  const bool acc_g = !dg_new, acc_b = !db_new;
  launch_elementwise(be, C, [=] __device__(int64_t c) {
    int64_t g = c / Cg;
    double vg = 0, vb = 0;
    for (int64_t n = 0; n < N; n++) {
      double sa = sp[2 * (n * C + c)], sb = sp[2 * (n * C + c) + 1];
      vb += sa;
      vg += (sb - (double)mp[n * G + g] * sa) * (double)rp[n * G + g];
    }
    dgp[c] = acc_g ? (float)(dgp[c] + vg) : (float)vg;
    dbp[c] = acc_b ? (float)(dbp[c] + vb) : (float)vb;
  }, op);
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_GROUP_NORM_FORWARD, group_norm_forward);
CMO_REGISTER_KERNEL(CMO_OP_GROUP_NORM_BACKWARD, group_norm_backward);

}  // namespace cmocu
