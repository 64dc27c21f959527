// reduce.cpp — REDUCE (sum, mean, max over an axes mask, reduced dims kept as 1) and
// REDUCE_MAX_BACKWARD.
//
// One plain reducer does all the work: size-1 dims are dropped, neighbouring dims that are both
// reduced or both kept are merged, then either
//   (a) the innermost merged dim is reduced: every output sums contiguous runs, or
//   (b) the innermost merged dim is kept: outputs come as vectors that accumulate whole rows.
// Sums use double accumulators. Long reductions with few outputs are cut into chunks whose size
// depends only on the shapes, and the partials are combined in a fixed order, so results are
// bit-identical for any thread count.
// BLOCKED16 input with all spatial dims reduced (bias-like gradients over {0,2,3,4}, global pooling
// over {2,3,4}) is reduced in place as the plain view [N][C/16][S][16]; its kept order (n, c) is the
// plain output order. Other masks on blocked input convert the input first.
// Vectorisation of the math below needs these (no FP exceptions or errno are relied on anywhere).
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <cmath>
#include <limits>

#include "kernel_util.hpp"

namespace cmo {
namespace {

struct Groups {
  int n = 0;
  int64_t size[CMO_MAX_DIMS + 1];
  int64_t stride[CMO_MAX_DIMS + 1];
  bool red[CMO_MAX_DIMS + 1];
};

// Offset of linear index `lin` over dims (sizes, strides) listed outermost first.
inline int64_t offset_of(int64_t lin, int n, const int64_t* sizes, const int64_t* strides) {
  int64_t off = 0;
  for (int i = n - 1; i >= 0; i--) {
    off += (lin % sizes[i]) * strides[i];
    lin /= sizes[i];
  }
  return off;
}

// Contiguous double sum with eight independent accumulators (vectorisable, fixed order).
inline double sum_run(const float* x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; u++) acc[u] += x[j + u];
  double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < n; j++) s += x[j];
  return s;
}

inline float max_update(float acc, float v) { return (v > acc || v != v) ? v : acc; }

inline float max_run(const float* x, int64_t n, float acc) {
  for (int64_t j = 0; j < n; j++) acc = max_update(acc, x[j]);
  return acc;
}

// x: plain data with dims[nd]; reduces dims whose mask bit is set; y: kept dims in row-major order.
void reduce_plain(Backend* be, const float* x, const int64_t* dims, int nd, uint64_t mask, int kind, float* y) {
  Groups g;
  int64_t st = 1;
  int64_t strides[CMO_MAX_DIMS + 1];
  for (int i = nd - 1; i >= 0; i--) {
    strides[i] = st;
    st *= dims[i];
  }
  int64_t R = 1, O = 1;
  for (int i = 0; i < nd; i++) {
    if (dims[i] == 1) continue;
    bool r = (mask >> i) & 1;
    if (r) R *= dims[i]; else O *= dims[i];
    if (g.n > 0 && g.red[g.n - 1] == r) {
      g.size[g.n - 1] *= dims[i];
      g.stride[g.n - 1] = strides[i];
    } else {
      g.size[g.n] = dims[i];
      g.stride[g.n] = strides[i];
      g.red[g.n] = r;
      g.n++;
    }
  }
  const bool is_max = kind == CMO_REDUCE_MAX;
  const double scale = kind == CMO_REDUCE_MEAN ? 1.0 / (double)R : 1.0;
  if (R == 1) {  // nothing to reduce: a copy (mean and max of one element are the element)
    ku::parallel_range(be, O, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) y[i] = x[i];
    });
    return;
  }
  int nk = 0, nr = 0;
  int64_t ks[CMO_MAX_DIMS + 1], kst[CMO_MAX_DIMS + 1], rs[CMO_MAX_DIMS + 1], rst[CMO_MAX_DIMS + 1];
  for (int i = 0; i < g.n; i++) {
    if (g.red[i]) {
      rs[nr] = g.size[i];
      rst[nr++] = g.stride[i];
    } else {
      ks[nk] = g.size[i];
      kst[nk++] = g.stride[i];
    }
  }
  const float kNegInf = -std::numeric_limits<float>::infinity();
  if (g.red[g.n - 1]) {
    // (a) innermost reduced: rows of length L (stride 1) over the outer reduced dims.
    const int64_t L = rs[nr - 1];
    // Fixed chunking of the linear reduced index; no split when there are many outputs.
    const int64_t cs = O >= 64 ? R : ku::kChunk;
    const int64_t nc = (R + cs - 1) / cs;
    std::vector<double> part(nc > 1 ? (size_t)(O * nc) : 0);
    ku::parallel_tasks(be, O * nc, O * R, [&](int64_t t) {
      const int64_t o = t / nc, c = t % nc;
      const float* base = x + offset_of(o, nk, ks, kst);
      const int64_t r0 = c * cs, r1 = std::min(R, r0 + cs);
      double s = 0;
      float m = kNegInf;
      int64_t r = r0;
      while (r < r1) {
        const int64_t row = r / L, col = r % L;
        const int64_t len = std::min(L - col, r1 - r);
        const float* px = base + offset_of(row, nr - 1, rs, rst) + col;
        if (is_max) m = max_run(px, len, m); else s += sum_run(px, len);
        r += len;
      }
      if (nc > 1) part[(size_t)t] = is_max ? (double)m : s;
      else y[o] = is_max ? m : (float)(s * scale);
    });
    if (nc > 1) {
      ku::parallel_tasks(be, O, O * nc, [&](int64_t o) {
        if (is_max) {
          float m = kNegInf;
          for (int64_t c = 0; c < nc; c++) m = max_update(m, (float)part[(size_t)(o * nc + c)]);
          y[o] = m;
        } else {
          double s = 0;
          for (int64_t c = 0; c < nc; c++) s += part[(size_t)(o * nc + c)];
          y[o] = (float)(s * scale);
        }
      });
    }
    return;
  }
  // (b) innermost kept: vectors of L outputs accumulate over every reduced position.
  const int64_t L = ks[nk - 1];
  const int64_t KO = O / L;
  const int64_t W = std::min<int64_t>(L, 2048);
  const int64_t nl = (L + W - 1) / W;
  const int64_t rc = KO * nl >= 64 ? R : std::max<int64_t>(1, ku::kChunk / W);
  const int64_t nrc = (R + rc - 1) / rc;
  std::vector<double> part(nrc > 1 ? (size_t)(KO * nrc * L) : 0);
  ku::parallel_tasks(be, KO * nl * nrc, O * R, [&](int64_t t) {
    const int64_t c = t % nrc, li = (t / nrc) % nl, ko = t / (nrc * nl);
    const int64_t l0 = li * W, l1 = std::min(L, l0 + W), w = l1 - l0;
    const float* base = x + offset_of(ko, nk - 1, ks, kst) + l0;
    double acc[2048];
    float macc[2048];
    for (int64_t l = 0; l < w; l++) {
      acc[l] = 0;
      macc[l] = kNegInf;
    }
    // Walk the reduced positions as segments along the innermost reduced dim (stride sl).
    const int64_t r0 = c * rc, r1 = std::min(R, r0 + rc);
    const int64_t RL = rs[nr - 1], sl = rst[nr - 1];
    int64_t r = r0;
    while (r < r1) {
      const int64_t row = r / RL, col = r % RL, len = std::min(RL - col, r1 - r);
      const float* px = base + offset_of(row, nr - 1, rs, rst) + col * sl;
      for (int64_t j = 0; j < len; j++, px += sl) {
        if (is_max)
          for (int64_t l = 0; l < w; l++) macc[l] = max_update(macc[l], px[l]);
        else
          for (int64_t l = 0; l < w; l++) acc[l] += px[l];
      }
      r += len;
    }
    if (nrc > 1) {
      double* pp = part.data() + (ko * nrc + c) * L + l0;
      for (int64_t l = 0; l < w; l++) pp[l] = is_max ? (double)macc[l] : acc[l];
    } else {
      float* py = y + ko * L + l0;
      for (int64_t l = 0; l < w; l++) py[l] = is_max ? macc[l] : (float)(acc[l] * scale);
    }
  });
  if (nrc > 1) {
    ku::parallel_tasks(be, KO, O * nrc, [&](int64_t ko) {
      for (int64_t l = 0; l < L; l++) {
        if (is_max) {
          float m = kNegInf;
          for (int64_t c = 0; c < nrc; c++) m = max_update(m, (float)part[(size_t)((ko * nrc + c) * L + l)]);
          y[ko * L + l] = m;
        } else {
          double s = 0;
          for (int64_t c = 0; c < nrc; c++) s += part[(size_t)((ko * nrc + c) * L + l)];
          y[ko * L + l] = (float)(s * scale);
        }
      }
    });
  }
}

uint64_t check_mask(int64_t axes_mask, const Shape& xs) {
  const uint64_t full = (uint64_t(1) << xs.ndim) - 1;
  if (axes_mask < 0 || ((uint64_t)axes_mask & ~full) != 0)
    fail("axes_mask " + std::to_string(axes_mask) + " names dims outside x " + xs.str() + " (rank " +
         std::to_string(xs.ndim) + ")");
  return (uint64_t)axes_mask;
}

Shape reduced_shape(const Shape& xs, uint64_t mask) {
  Shape ys = xs;
  for (int i = 0; i < xs.ndim; i++)
    if ((mask >> i) & 1) ys.d[i] = 1;
  return ys;
}

void reduce(const KernelArgs& a) {
  const auto& p = a.p<cmo_reduce_params>("REDUCE");
  const Buffer* x = ku::input(a, 0, "x");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  if (p.kind < CMO_REDUCE_SUM || p.kind > CMO_REDUCE_MAX)
    fail("kind " + std::to_string(p.kind) + " is not a cmo_reduce_kind (0..2)");
  const uint64_t mask = check_mask(p.axes_mask, x->shape);
  const Shape ys = reduced_shape(x->shape, mask);
  Buffer* y = a.output(0, ys, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "REDUCE");
  const bool spatial_all = (mask & 0x1c) == 0x1c;
  ku::write_plain_into(a.backend, y, [&](Buffer* out) {
    if (x->blocked() && spatial_all) {
      const Shape& s = x->shape;
      const int64_t dims[4] = {s.d[0], s.d[1] / 16, s.d[2] * s.d[3] * s.d[4], 16};
      uint64_t m4 = 0x4;
      if (mask & 1) m4 |= 0x1;
      if (mask & 2) m4 |= 0x2 | 0x8;
      reduce_plain(a.backend, x->f32(), dims, 4, m4, (int)p.kind, out->f32());
      return;
    }
    TempBuffer t;
    const Buffer* px = ku::plain(x, t);
    reduce_plain(a.backend, px->f32(), x->shape.d, x->shape.ndim, mask, (int)p.kind, out->f32());
  });
}

// dx = (x == y) * dy / count, where count is the number of positions equal to the max.
void reduce_max_backward(const KernelArgs& a) {
  const auto& p = a.p<cmo_reduce_params>("REDUCE_MAX_BACKWARD");
  const Buffer* x = ku::input(a, 0, "x");
  const Buffer* y = ku::input(a, 1, "y");
  const Buffer* dy = ku::input(a, 2, "dy");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  ku::need_dtype(y, "y", CMO_DTYPE_F32);
  ku::need_dtype(dy, "dy", CMO_DTYPE_F32);
  const uint64_t mask = check_mask(p.axes_mask, x->shape);
  const Shape ys = reduced_shape(x->shape, mask);
  if (y->shape != ys || dy->shape != ys)
    fail("y " + y->shape.str() + " and dy " + dy->shape.str() + " must both be " + ys.str() + " (x " +
         x->shape.str() + " with the reduced dims kept as 1)");
  Buffer* dx = a.output(0, x->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "REDUCE_MAX_BACKWARD");
  TempBuffer tx, ty, tdy;
  const float* px = ku::plain(x, tx)->f32();
  const float* py = ku::plain(y, ty)->f32();
  const float* pdy = ku::plain(dy, tdy)->f32();
  const Shape& xs = x->shape;
  int64_t ystr[CMO_MAX_DIMS];
  ku::broadcast_strides(ys, xs, ystr);
  auto yoff = [&](int64_t i) {
    int64_t off = 0;
    for (int d = xs.ndim - 1; d >= 0; d--) {
      off += (i % xs.d[d]) * ystr[d];
      i /= xs.d[d];
    }
    return off;
  };
  const int64_t n = xs.numel();
  std::vector<float> eq((size_t)n), cnt((size_t)ys.numel());
  ku::parallel_range(a.backend, n, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      float m = py[yoff(i)], v = px[i];
      eq[(size_t)i] = (v == m || (v != v && m != m)) ? 1.0f : 0.0f;
    }
  });
  reduce_plain(a.backend, eq.data(), xs.d, xs.ndim, mask, CMO_REDUCE_SUM, cnt.data());
  ku::write_plain_into(a.backend, dx, [&](Buffer* out) {
    float* pdx = out->f32();
    ku::parallel_range(a.backend, n, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) {
        int64_t o = yoff(i);
        pdx[i] = eq[(size_t)i] != 0.0f ? pdy[o] / cnt[(size_t)o] : 0.0f;
      }
    });
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_REDUCE, reduce);
CMO_REGISTER_KERNEL(CMO_OP_REDUCE_MAX_BACKWARD, reduce_max_backward);

}  // namespace cmo
