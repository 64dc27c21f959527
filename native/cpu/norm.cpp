// norm.cpp — group normalisation (GROUP_NORM_FORWARD / GROUP_NORM_BACKWARD of comodal.h); instance
// norm is groups == C. Own kernels for PLAIN and BLOCKED16 tensors: statistics are gathered per
// channel over fixed-size chunks of the spatial extent (float lanes flushed into double sums, so the
// result does not depend on the thread count), combined per group in double, then applied in a second
// parallel pass. Variance: per chunk two passes (the second from cache), merged with Chan's formula;
// biased, as PyTorch.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "internal.hpp"

namespace cmo {
namespace {

constexpr int kLanes = 16;
constexpr int64_t kFlush = 1024;  // float lanes are flushed into double sums every kFlush elements

// A tensor [N, C, spatial...] viewed as units (rows of `len` floats sharing the same channels):
// plain: unit = (n, c), L = 1 channel per unit; blocked: unit = (n, c/16), L = 16 lanes = channels.
struct View {
  int64_t N = 0, C = 0, S = 0;  // S = spatial size
  int L = 1;                    // channels interleaved in a unit (1 plain, 16 blocked)
  int64_t units_per_n = 0;      // C (plain) or C/16 (blocked)
  int64_t chunk_pts = 0;        // spatial points per chunk
  int64_t chunks = 0;           // chunks per unit
  int64_t tasks() const { return N * units_per_n * chunks; }
  int64_t channel(int64_t unit_in_n, int lane) const { return L == 1 ? unit_in_n : unit_in_n * 16 + lane; }
};

View make_view(const Buffer* x) {
  View v;
  v.N = x->shape.d[0];
  v.C = x->shape.d[1];
  v.S = 1;
  for (int i = 2; i < x->shape.ndim; i++) v.S *= x->shape.d[i];
  v.L = x->blocked() ? 16 : 1;
  v.units_per_n = x->blocked() ? v.C / 16 : v.C;
  v.chunk_pts = x->blocked() ? 4096 : 16384;
  v.chunks = std::max<int64_t>(1, (v.S + v.chunk_pts - 1) / v.chunk_pts);
  return v;
}

// Per-lane sums over `len` floats (len % 16 == 0 when L == 16): out[l] += sum f(a[i], b[i], m[l])
// for i with i % 16 == l. For L == 1 the caller adds the 16 lanes together.
template <typename F>
void lane_sums(const float* a, const float* b, int64_t len, const float* m, double* out, F f) {
  int64_t i = 0;
  while (i + kLanes <= len) {
    float acc[kLanes] = {};
    int64_t end = std::min(len, i + kFlush) / kLanes * kLanes;
    if (end <= i) break;
    for (; i < end; i += kLanes)
#pragma omp simd
      for (int l = 0; l < kLanes; l++) acc[l] += f(a[i + l], b ? b[i + l] : 0.0f, m[l]);
    for (int l = 0; l < kLanes; l++) out[l] += acc[l];
  }
  for (; i < len; i++) out[0] += f(a[i], b ? b[i] : 0.0f, m[0]);  // plain tail
}

// Runs `per_chunk(unit_global, chunk, float* base_offset, len, task)` over all tasks in parallel,
// then reduces per-task lane sums into per-channel double sums [N*C] (nsums arrays).
template <typename Body>
void channel_sums(Backend* be, const View& v, int nsums, std::vector<std::vector<double>>& sums, Body body) {
  const int64_t T = v.tasks();
  std::vector<double> part((size_t)(T * nsums * kLanes), 0.0);
  parallel_for(be, T, [&](int64_t t) {
    int64_t chunk = t % v.chunks, unit = t / v.chunks;
    int64_t p0 = chunk * v.chunk_pts, p1 = std::min(v.S, p0 + v.chunk_pts);
    int64_t off = unit * v.S * v.L + p0 * v.L;
    body(unit, off, (p1 - p0) * v.L, &part[(size_t)(t * nsums * kLanes)]);
  });
  sums.assign((size_t)nsums, std::vector<double>((size_t)(v.N * v.C), 0.0));
  for (int64_t t = 0; t < T; t++) {  // fixed order: deterministic
    int64_t unit = t / v.chunks;
    int64_t n = unit / v.units_per_n, u = unit % v.units_per_n;
    for (int k = 0; k < nsums; k++) {
      const double* pp = &part[(size_t)((t * nsums + k) * kLanes)];
      if (v.L == 1) {
        double s = 0;
        for (int l = 0; l < kLanes; l++) s += pp[l];
        sums[(size_t)k][(size_t)(n * v.C + u)] += s;
      } else {
        for (int l = 0; l < kLanes; l++) sums[(size_t)k][(size_t)(n * v.C + u * 16 + l)] += pp[l];
      }
    }
  }
}

using cmo_common::norm_act_apply;
using cmo_common::norm_act_grad;

// The two backward sums: per lane l, s1[l] += g and s2[l] += g * (x - m[l]) with g = dy * act'(x *
// sc[l] + sh[l]) (act' = 1 without an activation: slope 1). Plain tensors have the same values in
// every lane.
void backward_lane_sums(const float* dy, const float* x, int64_t len, const float* m, const float* sc,
                     const float* sh, float slope, double* s1, double* s2) {
  int64_t i = 0;
  while (i + kLanes <= len) {
    float a1[kLanes] = {}, a2[kLanes] = {};
    int64_t end = std::min(len, i + kFlush) / kLanes * kLanes;
    if (end <= i) break;
    for (; i < end; i += kLanes)
#pragma omp simd
      for (int l = 0; l < kLanes; l++) {
        float xv = x[i + l];
        float g = dy[i + l] * norm_act_grad(xv * sc[l] + sh[l], slope);
        a1[l] += g;
        a2[l] += g * (xv - m[l]);
      }
    for (int l = 0; l < kLanes; l++) {
      s1[l] += a1[l];
      s2[l] += a2[l];
    }
  }
  for (; i < len; i++) {  // plain tail
    float g = dy[i] * norm_act_grad(x[i] * sc[0] + sh[0], slope);
    s1[0] += g;
    s2[0] += g * (x[i] - m[0]);
  }
}

// Per-lane values of a per-(n, channel) array for one unit.
void unit_lanes(const View& v, int64_t unit, const std::vector<float>& per_nc, float* lanes) {
  int64_t n = unit / v.units_per_n, u = unit % v.units_per_n;
  for (int l = 0; l < kLanes; l++)
    lanes[l] = per_nc[(size_t)(n * v.C + (v.L == 1 ? u : u * 16 + l))];
}

// Plain tensors with little spatial extent (e.g. tokens [T, C], S = 1): the chunked per-channel path
// spends its time on bookkeeping per (n, c). Here one task is one (n, group), a contiguous run of
// Cg * S floats in the plain layout, reduced in double in a fixed order (thread-count independent).
constexpr int64_t kSmallS = 256;

void small_forward(Backend* be, const float* x, float* y, float* mo, float* ro, const float* gamma,
                   const float* beta, int64_t N, int64_t C, int64_t G, int64_t S, double eps, float slope) {
  const int64_t Cg = C / G, L = Cg * S;
  parallel_for(be, N * G, [&](int64_t ng) {
    const float* xp = x + ng * L;
    double sum = 0;
    for (int64_t i = 0; i < L; i++) sum += xp[i];
    const double mean = L > 0 ? sum / (double)L : 0.0;
    double m2 = 0;
    for (int64_t i = 0; i < L; i++) {
      double d = xp[i] - mean;
      m2 += d * d;
    }
    mo[ng] = (float)mean;
    ro[ng] = (float)(1.0 / std::sqrt((L > 0 ? m2 / (double)L : 0.0) + eps));
    const int64_t g = ng % G;
    float* yp = y + ng * L;
    for (int64_t j = 0; j < Cg; j++) {
      const int64_t c = g * Cg + j;
      const double sc = (double)ro[ng] * (double)gamma[c];
      const float s = (float)sc, h = (float)((double)beta[c] - (double)mo[ng] * sc);
      for (int64_t k = 0; k < S; k++) yp[j * S + k] = norm_act_apply(xp[j * S + k] * s + h, slope);
    }
  });
}

// dx, and per (n, c) the sums of dy (into db_nc) and dy * xhat (into dg_nc), with dy multiplied by
// act'(z) (1 without an activation: slope 1, and beta may then be NULL).
void small_backward(Backend* be, const float* x, const float* dy, float* dx, const float* gamma, const float* beta,
                    const float* mean, const float* rstd, int64_t N, int64_t C, int64_t G, int64_t S, float slope,
                    std::vector<double>& dg_nc, std::vector<double>& db_nc) {
  const int64_t Cg = C / G, L = Cg * S;
  parallel_for(be, N * G, [&](int64_t ng) {
    const int64_t n = ng / G, g = ng % G;
    const float* xp = x + ng * L;
    const float* gp = dy + ng * L;
    const double m = mean[ng], r = rstd[ng];
    auto geff = [&](int64_t c, int64_t i) {
      const double sc = r * (double)gamma[c];
      return gp[i] * norm_act_grad(xp[i] * (float)sc + (float)((beta ? (double)beta[c] : 0.0) - m * sc), slope);
    };
    double A = 0, B = 0;
    for (int64_t j = 0; j < Cg; j++) {
      const int64_t c = g * Cg + j;
      double s1 = 0, s2 = 0;
      for (int64_t k = 0; k < S; k++) {
        const double ge = geff(c, j * S + k);
        s1 += ge;
        s2 += ge * ((double)xp[j * S + k] - m);
      }
      s2 *= r;  // sum dy * xhat
      db_nc[(size_t)(n * C + c)] = s1;
      dg_nc[(size_t)(n * C + c)] = s2;
      A += (double)gamma[c] * s1;
      B += (double)gamma[c] * s2;
    }
    const double Md = (double)L;
    float* op_ = dx + ng * L;
    for (int64_t j = 0; j < Cg; j++) {
      const int64_t c = g * Cg + j;
      for (int64_t k = 0; k < S; k++) {
        const int64_t i = j * S + k;
        const double xhat = ((double)xp[i] - m) * r;
        op_[i] = (float)(r * ((double)gamma[c] * (double)geff(c, i) - (A + xhat * B) / Md));
      }
    }
  });
}

struct GnCommon {
  int64_t G = 0, Cg = 0;
};

GnCommon check_common(const Buffer* x, int64_t groups, const char* op) {
  if (x->dtype != CMO_DTYPE_F32) fail(std::string(op) + ": x must be f32");
  if (x->shape.ndim < 2) fail(std::string(op) + ": x " + x->shape.str() + " must be [N,C,...]");
  int64_t C = x->shape.d[1];
  if (groups < 1 || C % groups != 0)
    fail(std::string(op) + ": " + std::to_string(C) + " channels of x " + x->shape.str() +
         " cannot be split into " + std::to_string(groups) + " groups");
  return {groups, C / groups};
}

void check_vec(const Buffer* b, int64_t C, const char* op, const char* what) {
  if (b == nullptr) fail(std::string(op) + ": " + what + " is NULL");
  if (b->dtype != CMO_DTYPE_F32 || b->shape.numel() != C || b->shape.ndim < 1)
    fail(std::string(op) + ": " + what + " " + b->shape.str() + " must be f32 with " + std::to_string(C) +
         " elements");
}

void check_stats(const Buffer* b, int64_t N, int64_t G, const char* op, const char* what) {
  if (b->dtype != CMO_DTYPE_F32 || b->shape.numel() != N * G || b->layout != CMO_LAYOUT_PLAIN)
    fail(std::string(op) + ": " + what + " " + b->shape.str() + " must be plain f32 [" + std::to_string(N) +
         "," + std::to_string(G) + "]");
}

// ------------------------------------------------------------------------------ forward
void group_norm_forward(const KernelArgs& a) {
  const char* op = "GROUP_NORM_FORWARD";
  const auto& prm = a.p<cmo_group_norm_params>(op);
  const Buffer* x = a.in[0];
  GnCommon gc = check_common(x, prm.groups, op);
  const int64_t N = x->shape.d[0], C = x->shape.d[1], G = gc.G, Cg = gc.Cg;
  check_vec(a.in[1], C, op, "gamma");
  check_vec(a.in[2], C, op, "beta");
  if (!(prm.eps >= 0)) fail(std::string(op) + ": eps must be >= 0");
  const float slope = cmo_common::norm_activation_slope(prm, op);
  const float* gamma = a.in[1]->f32();
  const float* beta = a.in[2]->f32();
  Backend* be = a.backend;

  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, x->layout, op);
  Buffer* mean_b = a.output(1, Shape{2, {N, G, 0, 0, 0, 0}}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, op);
  Buffer* rstd_b = a.output(2, Shape{2, {N, G, 0, 0, 0, 0}}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, op);
  if (mean_b->layout != CMO_LAYOUT_PLAIN || rstd_b->layout != CMO_LAYOUT_PLAIN)
    fail(std::string(op) + ": mean and rstd outputs must be plain");
  TempBuffer yt;
  Buffer* yw = y;
  if (y->layout != x->layout || y == x) {
    yt.buf = alloc_buffer(be, x->shape, CMO_DTYPE_F32, x->layout);
    yw = yt.buf;
  }

  View v = make_view(x);
  if (!x->blocked() && v.S < kSmallS) {
    small_forward(be, x->f32(), yw->f32(), mean_b->f32(), rstd_b->f32(), gamma, beta, N, C, G, v.S, prm.eps, slope);
    if (yw != y) reorder(yw, y);
    return;
  }
  const float* xd = x->f32();
  const double M = (double)Cg * (double)v.S;
  // Statistics in one read of x: per (unit, chunk) task the chunk's per-channel mean and sum of
  // squared deviations (the chunk is read a second time from cache), then chunks and the channels of
  // a group are merged in a fixed order with Chan's pairwise formula (numerically stable, and
  // independent of the thread count).
  const int64_t T = v.tasks();
  std::vector<double> cmean((size_t)(T * kLanes)), cm2((size_t)(T * kLanes)), ccount((size_t)T);
  parallel_for(be, T, [&](int64_t t) {
    int64_t chunk = t % v.chunks, unit = t / v.chunks;
    int64_t p0 = chunk * v.chunk_pts, p1 = std::min(v.S, p0 + v.chunk_pts);
    int64_t off = unit * v.S * v.L + p0 * v.L, len = (p1 - p0) * v.L;
    const float* xp = xd + off;
    double sum[kLanes] = {}, m2[kLanes] = {};
    const float zeros[kLanes] = {};
    lane_sums(xp, nullptr, len, zeros, sum, [](float xv, float, float) { return xv; });
    float m[kLanes];
    const double npts = (double)(p1 - p0);
    if (v.L == 1) {
      double total = 0;
      for (int l = 0; l < kLanes; l++) total += sum[l];
      for (int l = 0; l < kLanes; l++) m[l] = len > 0 ? (float)(total / (double)len) : 0.0f;
    } else {
      for (int l = 0; l < kLanes; l++) m[l] = npts > 0 ? (float)(sum[l] / npts) : 0.0f;
    }
    lane_sums(xp, nullptr, len, m, m2, [](float xv, float, float mv) {
      float d = xv - mv;
      return d * d;
    });
    // The float chunk mean is the shift; correct for its rounding: M2 = sum (x-m)^2 - n (mean-m)^2.
    if (v.L == 1) {
      double total = 0, dev = 0;
      for (int l = 0; l < kLanes; l++) {
        total += sum[l];
        dev += m2[l];
      }
      double mean = len > 0 ? total / (double)len : 0.0, d = mean - (double)m[0];
      cmean[(size_t)(t * kLanes)] = mean;
      cm2[(size_t)(t * kLanes)] = std::max(0.0, dev - (double)len * d * d);
    } else {
      for (int l = 0; l < kLanes; l++) {
        double mean = npts > 0 ? sum[l] / npts : 0.0, d = mean - (double)m[l];
        cmean[(size_t)(t * kLanes + l)] = mean;
        cm2[(size_t)(t * kLanes + l)] = std::max(0.0, m2[l] - npts * d * d);
      }
    }
    ccount[(size_t)t] = v.L == 1 ? (double)len : npts;
  });
  // Merge (count, mean, M2) pairs.
  struct Acc {
    double n = 0, mean = 0, m2 = 0;
    void add(double nb, double mb, double m2b) {
      if (nb <= 0) return;
      double nn = n + nb, d = mb - mean;
      mean += d * nb / nn;
      m2 += m2b + d * d * n * nb / nn;
      n = nn;
    }
  };
  std::vector<Acc> chan((size_t)(N * C));
  for (int64_t t = 0; t < T; t++) {
    int64_t unit = t / v.chunks;
    int64_t n = unit / v.units_per_n, u = unit % v.units_per_n;
    for (int l = 0; l < v.L; l++) {
      int64_t c = v.channel(u, l);
      chan[(size_t)(n * C + c)].add(ccount[(size_t)t], cmean[(size_t)(t * kLanes + l)], cm2[(size_t)(t * kLanes + l)]);
    }
  }
  std::vector<Acc> grp((size_t)(N * G));
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) {
      const Acc& a = chan[(size_t)(n * C + c)];
      grp[(size_t)(n * G + c / Cg)].add(a.n, a.mean, a.m2);
    }
  std::vector<double> gmean((size_t)(N * G)), gvar((size_t)(N * G));
  for (int64_t i = 0; i < N * G; i++) {
    gmean[(size_t)i] = grp[(size_t)i].mean;
    gvar[(size_t)i] = grp[(size_t)i].m2;
  }
  float* mo = mean_b->f32();
  float* ro = rstd_b->f32();
  std::vector<float> scale_nc((size_t)(N * C)), shift_nc((size_t)(N * C));
  for (int64_t i = 0; i < N * G; i++) {
    double var = M > 0 ? gvar[(size_t)i] / M : 0.0;
    double rstd = 1.0 / std::sqrt(var + prm.eps);
    mo[i] = (float)gmean[(size_t)i];
    ro[i] = (float)rstd;
  }
  // From the stored (float) mean and rstd, exactly as the backward recomputes the pre-activation.
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) {
      size_t g = (size_t)(n * G + c / Cg);
      double sc = (double)ro[g] * (double)gamma[c];
      scale_nc[(size_t)(n * C + c)] = (float)sc;
      shift_nc[(size_t)(n * C + c)] = (float)((double)beta[c] - (double)mo[g] * sc);
    }
  // Pass 3: y = act(x * scale + shift).
  float* yd = yw->f32();
  parallel_for(be, v.tasks(), [&](int64_t t) {
    int64_t chunk = t % v.chunks, unit = t / v.chunks;
    int64_t p0 = chunk * v.chunk_pts, p1 = std::min(v.S, p0 + v.chunk_pts);
    int64_t off = unit * v.S * v.L + p0 * v.L, len = (p1 - p0) * v.L;
    float sc[kLanes], sh[kLanes];
    unit_lanes(v, unit, scale_nc, sc);
    unit_lanes(v, unit, shift_nc, sh);
    const float* xp = xd + off;
    float* yp = yd + off;
    if (v.L == 1) {
      const float s0 = sc[0], h0 = sh[0];
#pragma omp simd
      for (int64_t i = 0; i < len; i++) yp[i] = norm_act_apply(xp[i] * s0 + h0, slope);
    } else {
      for (int64_t i = 0; i < len; i += kLanes)
#pragma omp simd
        for (int l = 0; l < kLanes; l++) yp[i + l] = norm_act_apply(xp[i + l] * sc[l] + sh[l], slope);
    }
  });
  if (yw != y) reorder(yw, y);
}

// ------------------------------------------------------------------------------ backward
// dx = rstd * (gamma*dy - (A + xhat*B) / M), xhat = (x - mean) * rstd, with per group
// A = sum gamma*dy and B = sum gamma*dy*xhat; dgamma += sum dy*xhat; dbeta += sum dy.
// With a fused activation dy is first multiplied by act'(z), z = x*scale + shift recomputed from x
// (the same float expression as the forward, so the sign decisions agree).
void group_norm_backward(const KernelArgs& a) {
  const char* op = "GROUP_NORM_BACKWARD";
  const auto& prm = a.p<cmo_group_norm_params>(op);
  const Buffer* x = a.in[0];
  const Buffer* dy = a.in[1];
  GnCommon gc = check_common(x, prm.groups, op);
  const int64_t N = x->shape.d[0], C = x->shape.d[1], G = gc.G, Cg = gc.Cg;
  if (dy->dtype != CMO_DTYPE_F32 || dy->shape != x->shape)
    fail(std::string(op) + ": dy " + dy->shape.str() + " must be f32 with the shape of x " + x->shape.str());
  check_vec(a.in[2], C, op, "gamma");
  check_stats(a.in[3], N, G, op, "mean");
  check_stats(a.in[4], N, G, op, "rstd");
  const float* gamma = a.in[2]->f32();
  const float* meanp = a.in[3]->f32();
  const float* rstdp = a.in[4]->f32();
  const float slope = cmo_common::norm_activation_slope(prm, op);
  const bool fused = prm.activation != CMO_NORM_ACT_NONE;
  if (fused) check_vec(a.in[5], C, op, "beta (required with a fused activation)");
  const float* beta = fused ? a.in[5]->f32() : nullptr;
  Backend* be = a.backend;

  TempBuffer dyt;
  const Buffer* dyu = as_layout(dy, x->layout, dyt);
  bool dg_alloc = false, db_alloc = false;
  Buffer* dx = a.output(0, x->shape, CMO_DTYPE_F32, x->layout, op);
  Buffer* dgamma = a.output(1, Shape{1, {C, 0, 0, 0, 0, 0}}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, op, &dg_alloc);
  Buffer* dbeta = a.output(2, Shape{1, {C, 0, 0, 0, 0, 0}}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, op, &db_alloc);
  TempBuffer dxt;
  Buffer* dxw = dx;
  if (dx->layout != x->layout || dx == x || dx == dy) {
    dxt.buf = alloc_buffer(be, x->shape, CMO_DTYPE_F32, x->layout);
    dxw = dxt.buf;
  }

  View v = make_view(x);
  if (!x->blocked() && v.S < kSmallS) {
    std::vector<double> dg_nc((size_t)(N * C)), db_nc((size_t)(N * C));
    small_backward(be, x->f32(), dyu->f32(), dxw->f32(), gamma, beta, meanp, rstdp, N, C, G, v.S, slope, dg_nc,
                   db_nc);
    if (dxw != dx) reorder(dxw, dx);
    float* dgo = dgamma->f32();
    float* dbo = dbeta->f32();
    for (int64_t c = 0; c < C; c++) {
      double vg = 0, vb = 0;
      for (int64_t n = 0; n < N; n++) {  // fixed order: deterministic
        vg += dg_nc[(size_t)(n * C + c)];
        vb += db_nc[(size_t)(n * C + c)];
      }
      dgo[c] = dg_alloc ? (float)vg : dgo[c] + (float)vg;
      dbo[c] = db_alloc ? (float)vb : dbo[c] + (float)vb;
    }
    return;
  }
  const float* xd = x->f32();
  const float* gd = dyu->f32();
  const double M = (double)Cg * (double)v.S;
  std::vector<float> mean_nc((size_t)(N * C)), scale_nc((size_t)(N * C)), shift_nc((size_t)(N * C));
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) {
      size_t i = (size_t)(n * C + c), g = (size_t)(n * G + c / Cg);
      mean_nc[i] = meanp[g];
      // The forward's scale and shift, computed the same way (beta only matters with an activation).
      double sc = (double)rstdp[g] * (double)gamma[c];
      scale_nc[i] = (float)sc;
      shift_nc[i] = (float)((beta ? (double)beta[c] : 0.0) - (double)meanp[g] * sc);
    }
  // Per channel: s1 = sum dy, s2 = sum dy * (x - mean), where dy means dy * act'(z), computed on the
  // fly in this pass and in the last one (no extra tensor, no extra pass).
  std::vector<std::vector<double>> sums;
  channel_sums(be, v, 2, sums, [&](int64_t unit, int64_t off, int64_t len, double* out) {
    float m[kLanes], sc[kLanes], sh[kLanes];
    unit_lanes(v, unit, mean_nc, m);
    unit_lanes(v, unit, scale_nc, sc);
    unit_lanes(v, unit, shift_nc, sh);
    backward_lane_sums(gd + off, xd + off, len, m, sc, sh, slope, out, out + kLanes);
  });
  std::vector<double> A((size_t)(N * G), 0.0), B((size_t)(N * G), 0.0);
  std::vector<double> dgam((size_t)C, 0.0), dbet((size_t)C, 0.0);
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) {
      size_t g = (size_t)(n * G + c / Cg);
      double s1 = sums[0][(size_t)(n * C + c)];
      double s2 = sums[1][(size_t)(n * C + c)] * (double)rstdp[g];  // sum dy * xhat
      dbet[(size_t)c] += s1;
      dgam[(size_t)c] += s2;
      A[g] += (double)gamma[c] * s1;
      B[g] += (double)gamma[c] * s2;
    }
  // dx = k1 * dy + k2 * x + k3 per (n, c).
  std::vector<float> k1((size_t)(N * C)), k2((size_t)(N * C)), k3((size_t)(N * C));
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) {
      size_t g = (size_t)(n * G + c / Cg);
      double r = rstdp[g], m = meanp[g];
      double c2 = M > 0 ? -r * r * B[g] / M : 0.0;
      double c3 = M > 0 ? -r * A[g] / M - c2 * m : 0.0;
      size_t i = (size_t)(n * C + c);
      k1[i] = (float)(r * (double)gamma[c]);
      k2[i] = (float)c2;
      k3[i] = (float)c3;
    }
  float* dxd = dxw->f32();
  parallel_for(be, v.tasks(), [&](int64_t t) {
    int64_t chunk = t % v.chunks, unit = t / v.chunks;
    int64_t p0 = chunk * v.chunk_pts, p1 = std::min(v.S, p0 + v.chunk_pts);
    int64_t off = unit * v.S * v.L + p0 * v.L, len = (p1 - p0) * v.L;
    float a1[kLanes], a2[kLanes], a3[kLanes];
    unit_lanes(v, unit, k1, a1);
    unit_lanes(v, unit, k2, a2);
    unit_lanes(v, unit, k3, a3);
    const float* xp = xd + off;
    const float* gp = gd + off;
    float* op_ = dxd + off;
    float sc[kLanes], sh[kLanes];
    unit_lanes(v, unit, scale_nc, sc);
    unit_lanes(v, unit, shift_nc, sh);
    if (v.L == 1) {
      const float b1 = a1[0], b2 = a2[0], b3 = a3[0], s0 = sc[0], h0 = sh[0];
#pragma omp simd
      for (int64_t i = 0; i < len; i++) op_[i] = gp[i] * norm_act_grad(xp[i] * s0 + h0, slope) * b1 + xp[i] * b2 + b3;
    } else {
      for (int64_t i = 0; i < len; i += kLanes)
#pragma omp simd
        for (int l = 0; l < kLanes; l++)
          op_[i + l] = gp[i + l] * norm_act_grad(xp[i + l] * sc[l] + sh[l], slope) * a1[l] + xp[i + l] * a2[l] + a3[l];
    }
  });
  if (dxw != dx) reorder(dxw, dx);
  float* dgo = dgamma->f32();
  float* dbo = dbeta->f32();
  for (int64_t c = 0; c < C; c++) {
    dgo[c] = dg_alloc ? (float)dgam[(size_t)c] : dgo[c] + (float)dgam[(size_t)c];
    dbo[c] = db_alloc ? (float)dbet[(size_t)c] : dbo[c] + (float)dbet[(size_t)c];
  }
}

CMO_REGISTER_KERNEL(CMO_OP_GROUP_NORM_FORWARD, group_norm_forward);
CMO_REGISTER_KERNEL(CMO_OP_GROUP_NORM_BACKWARD, group_norm_backward);

}  // namespace
}  // namespace cmo
