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

#include "internal.hpp"

namespace cmo {
namespace ku {

inline const char* dtype_name(cmo_dtype t) {
  switch (t) {
    case CMO_DTYPE_F32: return "f32";
    case CMO_DTYPE_I32: return "i32";
    case CMO_DTYPE_U8: return "u8";
  }
  return "unknown dtype";
}

inline int64_t elem_size(cmo_dtype t) { return t == CMO_DTYPE_U8 ? 1 : 4; }

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

// Fixed-size chunking of a flat range so results never depend on the thread count.
constexpr int64_t kChunk = 1 << 15;
inline int64_t n_chunks(int64_t n, int64_t chunk = kChunk) { return (n + chunk - 1) / chunk; }

// Runs fn(lo, hi) over [0, n) in fixed chunks, in parallel.
template <typename F>
void parallel_range(Backend* be, int64_t n, F&& fn, int64_t chunk = kChunk) {
  int64_t nc = n_chunks(n, chunk);
  parallel_for(be, nc, [&](int64_t c) {
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

}  // namespace ku
}  // namespace cmo
