// kernel_util.hpp — small helpers shared by the CPU op files of the non-conv, non-norm ops
// (elementwise, unary, shape, matmul, reduce, softmax, pool, l2norm, losses, optim).
// Not part of the ABI; everything is inline and lives in cmo::ku.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "../common/abi_tables.hpp"
#include "internal.hpp"

namespace cmo {
namespace ku {

using cmo_abi::dtype_name;

inline int64_t elem_size(cmo_dtype t) { return cmo_abi::dtype_size(t); }

// "x [2,16,8,8,8] f32"
inline std::string desc(const char* name, const Buffer* b) {
  return std::string(name) + " " + b->shape.str() + " " + dtype_name(b->dtype);
}

inline std::string shape_str(const Shape& s) { return s.str(); }

inline Shape make_shape(std::initializer_list<int64_t> dims) {
  Shape s;
  for (int64_t v : dims) s.d[s.ndim++] = v;
  return s;
}

// Input i; fails when it is missing.
inline const Buffer* input(const KernelArgs& a, int i, const char* name) {
  if (i >= a.n_in || a.in[i] == nullptr)
    fail(std::string("input ") + std::to_string(i) + " (" + name + ") is missing");
  return a.in[i];
}

inline void need_dtype(const Buffer* b, const char* name, cmo_dtype t) {
  if (b->dtype != t)
    fail(desc(name, b) + " has dtype " + dtype_name(b->dtype) + ", expected " + dtype_name(t));
}

inline void need_same_shape(const Buffer* a, const char* an, const Buffer* b, const char* bn) {
  if (a->shape != b->shape)
    fail(std::string(an) + " " + a->shape.str() + " and " + bn + " " + b->shape.str() +
         " must have the same shape");
}

// Normalises a possibly negative axis; fails when out of range.
inline int norm_axis(int64_t axis, int ndim, const char* what) {
  int64_t ax = axis < 0 ? axis + ndim : axis;
  if (ax < 0 || ax >= ndim)
    fail(std::string("axis ") + std::to_string(axis) + " is out of range for " + what + " with " +
         std::to_string(ndim) + " dimensions");
  return (int)ax;
}

inline bool blockable(const Shape& s, cmo_dtype t) {
  return t == CMO_DTYPE_F32 && s.ndim == 5 && s.d[1] % 16 == 0 && s.d[1] > 0;
}

// Row-major strides of a plain shape.
inline void strides_of(const Shape& s, int64_t* st) {
  int64_t acc = 1;
  for (int i = s.ndim - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= s.d[i];
  }
}

// NumPy broadcast of two shapes (right-aligned). Returns false when incompatible.
inline bool broadcast_shapes(const Shape& a, const Shape& b, Shape& out) {
  int nd = std::max(a.ndim, b.ndim);
  out = Shape();
  out.ndim = nd;
  for (int i = 0; i < nd; i++) {
    int ia = i - (nd - a.ndim), ib = i - (nd - b.ndim);
    int64_t da = ia >= 0 ? a.d[ia] : 1, db = ib >= 0 ? b.d[ib] : 1;
    if (da != db && da != 1 && db != 1) return false;
    out.d[i] = da == 1 ? db : da;
  }
  return true;
}

// Strides of `in` viewed with shape `out` (right-aligned), 0 along broadcast dims.
inline void broadcast_strides(const Shape& in, const Shape& out, int64_t* st) {
  int64_t ist[CMO_MAX_DIMS];
  strides_of(in, ist);
  for (int i = 0; i < out.ndim; i++) {
    int j = i - (out.ndim - in.ndim);
    st[i] = (j >= 0 && in.d[j] != 1) ? ist[j] : 0;
  }
}

// True when `in` can be broadcast to `out` (NumPy rules, in.ndim <= out.ndim).
inline bool broadcastable_to(const Shape& in, const Shape& out) {
  if (in.ndim > out.ndim) return false;
  for (int i = 0; i < in.ndim; i++) {
    int64_t di = in.d[i], dout = out.d[i + out.ndim - in.ndim];
    if (di != dout && di != 1) return false;
  }
  return true;
}

// True when `s` broadcasts to the 5-D shape `ys` varying only over N and C (shapes like [1,C,1,1,1],
// [N,C,1,1,1], [C,1,1,1] or one element); gives the strides of the plain [n', c'] table.
inline bool varies_only_nc(const Shape& s, const Shape& ys, int64_t* sn, int64_t* sc) {
  if (s.ndim > 5 || ys.ndim != 5) return false;
  int64_t d5[5] = {1, 1, 1, 1, 1};
  for (int i = 0; i < s.ndim; i++) d5[i + 5 - s.ndim] = s.d[i];
  if (d5[2] != 1 || d5[3] != 1 || d5[4] != 1) return false;
  if (d5[0] != 1 && d5[0] != ys.d[0]) return false;
  if (d5[1] != 1 && d5[1] != ys.d[1]) return false;
  *sc = d5[1] == 1 ? 0 : 1;
  *sn = d5[0] == 1 ? 0 : d5[1];
  return true;
}

// Fixed-size chunking of a flat range so results never depend on the thread count.
constexpr int64_t kChunk = 1 << 15;
inline int64_t n_chunks(int64_t n, int64_t chunk = kChunk) { return (n + chunk - 1) / chunk; }

// Runs f(i) for i in [0, n): in parallel when the whole job touches at least kSerialWork elements,
// otherwise on the calling thread (a parallel region costs more than small jobs, and much more on
// a busy machine). Task boundaries never depend on this choice, so results do not either.
constexpr int64_t kSerialWork = int64_t(1) << 16;
template <typename F>
void parallel_tasks(Backend* be, int64_t n, int64_t work, F&& f) {
  if (work < kSerialWork || n <= 1) {
    for (int64_t i = 0; i < n; i++) f(i);
    return;
  }
  parallel_for(be, n, f);
}

// Runs fn(lo, hi) over [0, n) in fixed chunks, in parallel.
template <typename F>
void parallel_range(Backend* be, int64_t n, F&& fn, int64_t chunk = kChunk) {
  int64_t nc = n_chunks(n, chunk);
  parallel_tasks(be, nc, n, [&](int64_t c) {
    int64_t lo = c * chunk, hi = std::min(n, lo + chunk);
    fn(lo, hi);
  });
}

// Writes into out in its layout: when out is PLAIN, fn(out) directly; otherwise fn writes a plain
// temporary which is then reordered into out (out is blocked).
template <typename F>
void write_plain_into(Backend* be, Buffer* out, F&& fn) {
  if (!out->blocked()) {
    fn(out);
    return;
  }
  TempBuffer tmp;
  tmp.buf = alloc_buffer(be, out->shape, out->dtype, CMO_LAYOUT_PLAIN);
  fn(tmp.buf);
  reorder(tmp.buf, out);
}

// Plain view of x (converted when blocked).
inline const Buffer* plain(const Buffer* x, TempBuffer& tmp) { return as_layout(x, CMO_LAYOUT_PLAIN, tmp); }

// An in-place operand (optimiser state) seen in a given layout; writes back on commit().
struct InPlace {
  Buffer* orig;
  Buffer* view;
  TempBuffer tmp;
  InPlace(Buffer* b, cmo_layout layout) : orig(b), view(b) {
    if (b->layout != layout) {
      view = const_cast<Buffer*>(as_layout(b, layout, tmp));
    }
  }
  void commit() {
    if (view != orig) reorder(view, orig);
  }
};

// Splits a tensor shape around an axis: outer * k * inner.
struct AxisSplit {
  int64_t outer = 1, k = 1, inner = 1;
};
inline AxisSplit split_axis(const Shape& s, int axis) {
  AxisSplit r;
  for (int i = 0; i < axis; i++) r.outer *= s.d[i];
  r.k = s.d[axis];
  for (int i = axis + 1; i < s.ndim; i++) r.inner *= s.d[i];
  return r;
}

// y[i] = sqrt(x[i]) for n floats (x and y may be the same). std::sqrt in a loop is not vectorised
// unless the whole build uses -fno-math-errno, so this uses AVX directly where available.
inline void sqrt_array(const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; i++) y[i] = std::sqrt(x[i]);
}

// exp and log for float that GCC vectorises (Cephes polynomials, max relative error ~1e-7 over the
// float range). Callers compile with -fno-trapping-math (see the pragma at the top of the op files),
// otherwise the selects below are not if-converted. exp: 0 below -87.3, inf above 88.7, NaN stays NaN.
inline float fast_exp(float x) {
  float xc = x < -87.3f ? -87.3f : x;
  xc = xc > 88.7f ? 88.7f : xc;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  float v = p * scale;
  v = x < -87.3f ? 0.0f : v;
  v = x > 88.7f ? HUGE_VALF : v;
  return x != x ? x : v;
}

// Natural log; log(0) = -inf, log(negative) = NaN, log(inf) = inf, denormals included.
inline float fast_log(float x) {
  const bool den = x < 1.17549435e-38f;  // scale denormals into the normal range
  const float xs = den ? x * 8388608.0f : x;
  int32_t bits;
  std::memcpy(&bits, &xs, 4);
  const int32_t e = ((bits >> 23) & 0xff) - (den ? 126 + 23 : 126);
  const int32_t mb = (bits & 0x007fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &mb, 4);
  const bool small = m < 0.707106781186547524f;
  float ef = (float)e;
  ef = small ? ef - 1.0f : ef;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * ef;
  y += -0.5f * z;
  float r = m + y + 0.693359375f * ef;
  r = x == 0.0f ? -HUGE_VALF : r;
  r = x < 0.0f ? NAN : r;
  r = x == HUGE_VALF ? x : r;
  return x != x ? x : r;
}

}  // namespace ku
}  // namespace cmo
