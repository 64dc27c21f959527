// loss.cu — fused softmax + cross-entropy (forward and backward) and the soft Dice statistics
// (forward and backward). Sums are deterministic (plane_sums.cuh).
#include <cfloat>

#include "internal.cuh"
#include "plane_sums.cuh"

namespace cmocu {
namespace {

struct ClassDims {
  int64_t N, K, S;
};

ClassDims class_dims(const Buffer* x, const char* op, const char* role) {
  need_f32(x, op, role);
  if (x->shape.ndim < 2) fail(std::string(op) + ": " + role + " must be [N,K,...], got " + x->shape.str());
  ClassDims d{x->shape.d[0], x->shape.d[1], 1};
  for (int i = 2; i < x->shape.ndim; i++) d.S *= x->shape.d[i];
  return d;
}

// labels [N,...] or [N,1,...] I32 matching x [N,K,...]
void check_labels(const Buffer* labels, const Buffer* x, const char* op) {
  if (labels->dtype != CMO_DTYPE_I32)
    fail(std::string(op) + ": labels must be i32, got " + dtype_name(labels->dtype) + " " + labels->shape.str());
  const Shape &l = labels->shape, &s = x->shape;
  bool ok = false;
  if (l.ndim == s.ndim - 1) {
    ok = l.d[0] == s.d[0];
    for (int i = 1; ok && i < l.ndim; i++) ok = l.d[i] == s.d[i + 1];
  } else if (l.ndim == s.ndim) {
    ok = l.d[0] == s.d[0] && l.d[1] == 1;
    for (int i = 2; ok && i < l.ndim; i++) ok = l.d[i] == s.d[i];
  }
  if (!ok)
    fail(std::string(op) + ": labels " + l.str() + " do not match " + s.str() + " (expected [N,...] or [N,1,...])");
}

void ce_forward(const KernelArgs& a) {
  const char* op = "SOFTMAX_CROSS_ENTROPY_FORWARD";
  const auto& p = a.p<cmo_cross_entropy_params>(op);
  const Buffer *logits = a.in[0], *labels = a.in[1];
  ClassDims d = class_dims(logits, op, "logits");
  check_labels(labels, logits, op);
  Shape ls;
  ls.ndim = 1;
  ls.d[0] = 1;
  Buffer* loss = a.output(0, ls, CMO_DTYPE_F32, op);
  Buffer* probs = a.output(1, logits->shape, CMO_DTYPE_F32, op);
  Backend* be = a.backend;
  const int64_t K = d.K, S = d.S, P = d.N * d.S;
  const int32_t ignore = (int32_t)p.ignore_index;
  const float* xp = logits->f32();
  const int32_t* lp = labels->i32();
  float* pp = probs->f32();
  Scratch flag(be, 2 * sizeof(int32_t));  // [0] = bad label seen, [1] = the label
  int32_t* fp = flag.as<int32_t>();
  check_cuda(cudaMemsetAsync(fp, 0, 2 * sizeof(int32_t), stream(be)), op);
  Scratch tot(be, 2 * sizeof(double));
  double* tp = tot.as<double>();
  if (P > 0) {
    plane_sums<2>(be, 1, P, [=] __device__(int64_t, int64_t pos, double* acc) {
      int64_t n = pos / S, s = pos % S;
      const float* row = xp + n * K * S + s;
      float* prow = pp + n * K * S + s;
      float m = -FLT_MAX;
      for (int64_t k = 0; k < K; k++) m = fmaxf(m, row[k * S]);
      float sum = 0.f;
      for (int64_t k = 0; k < K; k++) sum += expf(row[k * S] - m);
      float inv = 1.f / sum;
      for (int64_t k = 0; k < K; k++) prow[k * S] = expf(row[k * S] - m) * inv;
      int32_t lab = lp[pos];
      if (lab == ignore) return;
      if (lab < 0 || lab >= K) {
        fp[0] = 1;
        fp[1] = lab;
        return;
      }
      acc[0] += (double)logf(sum) + (double)m - (double)row[lab * S];
      acc[1] += 1.0;
    }, tp, op);
  } else {
    check_cuda(cudaMemsetAsync(tp, 0, 2 * sizeof(double), stream(be)), op);
  }
  float* lossp = loss->f32();
  launch_elementwise(be, 1, [=] __device__(int64_t) { lossp[0] = tp[1] > 0 ? (float)(tp[0] / tp[1]) : 0.f; }, op);
  int32_t host_flag[2] = {0, 0};
  check_cuda(cudaMemcpyAsync(host_flag, fp, sizeof(host_flag), cudaMemcpyDeviceToHost, stream(be)), op);
  sync(be);
  if (host_flag[0])
    fail(std::string(op) + ": label " + std::to_string(host_flag[1]) + " is outside 0.." + std::to_string(K - 1) +
         " and is not ignore_index " + std::to_string(ignore) + " (logits " + logits->shape.str() + ")");
}

void ce_backward(const KernelArgs& a) {
  const char* op = "SOFTMAX_CROSS_ENTROPY_BACKWARD";
  const auto& p = a.p<cmo_cross_entropy_params>(op);
  const Buffer *probs = a.in[0], *labels = a.in[1], *dloss = a.in[2];
  ClassDims d = class_dims(probs, op, "probs");
  check_labels(labels, probs, op);
  need_f32(dloss, op, "dloss");
  if (dloss->numel() != 1) fail(std::string(op) + ": dloss must hold one value, got " + dloss->shape.str());
  Buffer* dx = a.output(0, probs->shape, CMO_DTYPE_F32, op);
  Backend* be = a.backend;
  const int64_t K = d.K, S = d.S, P = d.N * d.S;
  const int32_t ignore = (int32_t)p.ignore_index;
  const int32_t* lp = labels->i32();
  Scratch cnt(be, sizeof(double));
  double* cp = cnt.as<double>();
  if (P == 0) return;
  plane_sums<1>(be, 1, P, [=] __device__(int64_t, int64_t pos, double* acc) {
    int32_t l = lp[pos];
    if (l != ignore && l >= 0 && l < K) acc[0] += 1.0;
  }, cp, op);
  const float *pp = probs->f32(), *dl = dloss->f32();
  float* dxp = dx->f32();
  launch_elementwise(be, probs->numel(), [=] __device__(int64_t i) {
    int64_t s = i % S, k = (i / S) % K, n = i / (S * K);
    int32_t l = lp[n * S + s];
    if (l == ignore || l < 0 || l >= K || cp[0] <= 0) {
      dxp[i] = 0.f;
      return;
    }
    float g = dl[0] / (float)cp[0];
    dxp[i] = (pp[i] - (k == l ? 1.f : 0.f)) * g;
  }, op);
}

// target: labels (one-hot implied) or soft targets [N,K,...]
bool dice_target(const Buffer* target, const Buffer* probs, const char* op) {
  if (target->dtype == CMO_DTYPE_F32 && target->shape == probs->shape) return false;
  if (target->dtype == CMO_DTYPE_F32)
    fail(std::string(op) + ": soft targets " + target->shape.str() + " must have the shape of probs " + probs->shape.str());
  check_labels(target, probs, op);
  return true;
}

void dice_forward(const KernelArgs& a) {
  const char* op = "DICE_STATS_FORWARD";
  const auto& p = a.p<cmo_dice_params>(op);
  const Buffer *probs = a.in[0], *target = a.in[1];
  ClassDims d = class_dims(probs, op, "probs");
  bool labels = dice_target(target, probs, op);
  Shape ss;
  ss.ndim = 2;
  ss.d[0] = 3;
  ss.d[1] = d.K;
  Buffer* stats = a.output(0, ss, CMO_DTYPE_F32, op);
  Backend* be = a.backend;
  const int64_t K = d.K, S = d.S, E = d.N * d.S;
  const int32_t ignore = (int32_t)p.ignore_index;
  if (K == 0) return;
  Scratch tot(be, (size_t)K * 3 * sizeof(double));
  double* tp = tot.as<double>();
  const float* pp = probs->f32();
  const int32_t* lp = labels ? target->i32() : nullptr;
  const float* sp = labels ? nullptr : target->f32();
  Scratch flag(be, 2 * sizeof(int32_t));  // [0] = bad label seen, [1] = the label
  int32_t* fp = flag.as<int32_t>();
  check_cuda(cudaMemsetAsync(fp, 0, 2 * sizeof(int32_t), stream(be)), op);
  if (E > 0) {
    plane_sums<3>(be, K, E, [=] __device__(int64_t k, int64_t e, double* acc) {
      int64_t n = e / S, s = e % S;
      int64_t i = (n * K + k) * S + s;
      double pv = pp[i];
      if (lp && lp[e] == ignore) return;  // ignored: in none of the sums
      if (lp && k == 0 && (lp[e] < 0 || lp[e] >= K)) {
        fp[0] = 1;
        fp[1] = lp[e];
      }
      double tv = lp ? (lp[e] == k ? 1.0 : 0.0) : (double)sp[i];
      acc[0] += pv * tv;
      acc[1] += pv;
      acc[2] += tv;
    }, tp, op);
  } else {
    check_cuda(cudaMemsetAsync(tp, 0, (size_t)K * 3 * sizeof(double), stream(be)), op);
  }
  float* out = stats->f32();
  launch_elementwise(be, 3 * K, [=] __device__(int64_t i) {
    int64_t r = i / K, k = i % K;
    out[i] = (float)tp[k * 3 + r];
  }, op);
  if (lp) {
    int32_t host_flag[2] = {0, 0};
    check_cuda(cudaMemcpyAsync(host_flag, fp, sizeof(host_flag), cudaMemcpyDeviceToHost, stream(be)), op);
    sync(be);
    if (host_flag[0])
      fail(std::string(op) + ": label " + std::to_string(host_flag[1]) + " is outside 0.." + std::to_string(K - 1) +
           " and is not ignore_index " + std::to_string(ignore) + " (probs " + probs->shape.str() + ")");
  }
}

void dice_backward(const KernelArgs& a) {
  const char* op = "DICE_STATS_BACKWARD";
  const auto& p = a.p<cmo_dice_params>(op);
  const Buffer *probs = a.in[0], *target = a.in[1], *dstats = a.in[2];
  ClassDims d = class_dims(probs, op, "probs");
  bool labels = dice_target(target, probs, op);
  need_f32(dstats, op, "dstats");
  if (dstats->numel() != 3 * d.K) fail(std::string(op) + ": dstats must be [3," + std::to_string(d.K) + "], got " + dstats->shape.str());
  Buffer* dp = a.output(0, probs->shape, CMO_DTYPE_F32, op);
  const int64_t K = d.K, S = d.S;
  const int32_t ignore = (int32_t)p.ignore_index;
  const int32_t* lp = labels ? target->i32() : nullptr;
  const float* sp = labels ? nullptr : target->f32();
  const float* g = dstats->f32();
  float* out = dp->f32();
  launch_elementwise(a.backend, probs->numel(), [=] __device__(int64_t i) {
    int64_t s = i % S, k = (i / S) % K, n = i / (S * K);
    if (lp && lp[n * S + s] == ignore) {
      out[i] = 0.f;
      return;
    }
    float tv = lp ? (lp[n * S + s] == k ? 1.f : 0.f) : sp[i];
    out[i] = g[k] * tv + g[K + k];
  }, op);
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, ce_forward);
CMO_REGISTER_KERNEL(CMO_OP_SOFTMAX_CROSS_ENTROPY_BACKWARD, ce_backward);
CMO_REGISTER_KERNEL(CMO_OP_DICE_STATS_FORWARD, dice_forward);
CMO_REGISTER_KERNEL(CMO_OP_DICE_STATS_BACKWARD, dice_backward);

}  // namespace cmocu
