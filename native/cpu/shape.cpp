// shape.cpp — CONCAT, SLICE, EXPAND, RESHAPE, COPY, FILL, ARGMAX.
//
// Data movement works on bytes, so f32, i32 and u8 tensors are all supported (ARGMAX: f32 input).
// BLOCKED16 fast paths: in nCdhw16c every sample n holds its channel blocks contiguously, so CONCAT
// along N or channels and SLICE along N or along channels at multiples of 16 are plain chunk copies
// and keep the blocked layout. Other cases run on plain data.
#include <cmath>

#include "kernel_util.hpp"

namespace cmo {
namespace {

// Copies `rows` rows: dst[r*dst_stride + dst_off .. +len] = src[r*src_stride + src_off ..] (bytes).
void copy_rows(Backend* be, int64_t rows, const char* src, int64_t src_stride, int64_t src_off, char* dst,
               int64_t dst_stride, int64_t dst_off, int64_t len) {
  if (rows == 0 || len == 0) return;
  int64_t per = std::max<int64_t>(1, (int64_t(1) << 17) / len);
  int64_t ntask = (rows + per - 1) / per;
  if (rows == 1) {
    // One long row: split it into fixed chunks.
    ku::parallel_range(be, len, [&](int64_t lo, int64_t hi) {
      std::memcpy(dst + dst_off + lo, src + src_off + lo, (size_t)(hi - lo));
    }, int64_t(1) << 18);
    return;
  }
  ku::parallel_tasks(be, ntask, rows * len / 4, [&](int64_t t) {
    int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
    for (int64_t r = r0; r < r1; r++)
      std::memcpy(dst + r * dst_stride + dst_off, src + r * src_stride + src_off, (size_t)len);
  });
}

// ------------------------------------------------------------------ CONCAT
void concat(const KernelArgs& a) {
  const auto& p = a.p<cmo_axis_params>("CONCAT");
  const Buffer* x0 = ku::input(a, 0, "x_0");
  const int nd = x0->shape.ndim;
  const int axis = ku::norm_axis(p.axis, nd, ("x_0 " + x0->shape.str()).c_str());
  Shape ys = x0->shape;
  ys.d[axis] = 0;
  bool all_blockable = true, any_blocked = false;
  for (int i = 0; i < a.n_in; i++) {
    const Buffer* xi = ku::input(a, i, "x_i");
    if (xi->dtype != x0->dtype)
      fail("x_" + std::to_string(i) + " " + xi->shape.str() + " has dtype " + ku::dtype_name(xi->dtype) +
           ", x_0 has " + ku::dtype_name(x0->dtype));
    bool ok = xi->shape.ndim == nd;
    for (int d = 0; ok && d < nd; d++)
      if (d != axis && xi->shape.d[d] != x0->shape.d[d]) ok = false;
    if (!ok)
      fail("x_" + std::to_string(i) + " " + xi->shape.str() + " does not match x_0 " + x0->shape.str() +
           " outside axis " + std::to_string(axis));
    ys.d[axis] += xi->shape.d[axis];
    all_blockable = all_blockable && ku::blockable(xi->shape, xi->dtype);
    any_blocked = any_blocked || xi->blocked();
  }
  // Along N or C, blocked inputs concatenate as whole chunks (per sample, channel blocks are contiguous).
  const bool chan_blocked = (axis == 0 || axis == 1) && all_blockable;
  cmo_layout natural = chan_blocked && any_blocked ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN;
  Buffer* y = a.output(0, ys, x0->dtype, natural, "CONCAT");
  const int64_t es = ku::elem_size(x0->dtype);
  auto run = [&](Buffer* out, cmo_layout in_layout) {
    // Plain (or blocked along channels): rows = prod(dims before axis), each input contributes a
    // contiguous run of dims[axis] * prod(dims after axis) elements per row.
    int64_t rows = 1, inner = 1;
    for (int d = 0; d < axis; d++) rows *= ys.d[d];
    for (int d = axis + 1; d < nd; d++) inner *= ys.d[d];
    const int64_t dst_row = ys.d[axis] * inner * es;
    int64_t off = 0;
    for (int i = 0; i < a.n_in; i++) {
      TempBuffer t;
      const Buffer* xi = as_layout(a.in[i], in_layout, t);
      const int64_t len = xi->shape.d[axis] * inner * es;
      copy_rows(a.backend, rows, static_cast<const char*>(xi->data), len, 0, static_cast<char*>(out->data),
                dst_row, off, len);
      off += len;
    }
  };
  if (y->blocked() && chan_blocked)
    run(y, CMO_LAYOUT_BLOCKED16);
  else
    ku::write_plain_into(a.backend, y, [&](Buffer* out) { run(out, CMO_LAYOUT_PLAIN); });
}

// ------------------------------------------------------------------ SLICE
void slice(const KernelArgs& a) {
  const auto& p = a.p<cmo_slice_params>("SLICE");
  const Buffer* x = ku::input(a, 0, "x");
  const int nd = x->shape.ndim;
  const int axis = ku::norm_axis(p.axis, nd, ("x " + x->shape.str()).c_str());
  const int64_t dim = x->shape.d[axis];
  if (p.start < 0 || p.length < 1 || p.start + p.length > dim)
    fail("slice start " + std::to_string(p.start) + " length " + std::to_string(p.length) +
         " does not fit axis " + std::to_string(axis) + " of x " + x->shape.str() + " (size " +
         std::to_string(dim) + ")");
  Shape ys = x->shape;
  ys.d[axis] = p.length;
  const bool blocked_ok = x->blocked() && (axis == 0 || (axis == 1 && p.start % 16 == 0 && p.length % 16 == 0));
  Buffer* y = a.output(0, ys, x->dtype, blocked_ok ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN, "SLICE");
  const int64_t es = ku::elem_size(x->dtype);
  auto run = [&](const Buffer* src, Buffer* out) {
    int64_t rows = 1, inner = 1;
    for (int d = 0; d < axis; d++) rows *= x->shape.d[d];
    for (int d = axis + 1; d < nd; d++) inner *= x->shape.d[d];
    copy_rows(a.backend, rows, static_cast<const char*>(src->data), dim * inner * es, p.start * inner * es,
              static_cast<char*>(out->data), p.length * inner * es, 0, p.length * inner * es);
  };
  if (y->blocked() && blocked_ok) {
    run(x, y);
  } else {
    TempBuffer t;
    const Buffer* px = ku::plain(x, t);
    ku::write_plain_into(a.backend, y, [&](Buffer* out) { run(px, out); });
  }
}

// ------------------------------------------------------------------ EXPAND
template <typename T>
void expand_plain(Backend* be, const T* x, const Shape& xs, T* y, const Shape& ys) {
  int64_t sx[CMO_MAX_DIMS];
  ku::broadcast_strides(xs, ys, sx);
  int nd = 0;
  int64_t dims[CMO_MAX_DIMS], st[CMO_MAX_DIMS];
  for (int i = 0; i < ys.ndim; i++) {
    if (ys.d[i] == 1) continue;
    if (nd > 0 && st[nd - 1] == sx[i] * ys.d[i]) {
      dims[nd - 1] *= ys.d[i];
      st[nd - 1] = sx[i];
    } else {
      dims[nd] = ys.d[i];
      st[nd] = sx[i];
      nd++;
    }
  }
  if (nd == 0) {
    y[0] = x[0];
    return;
  }
  const int64_t inner = dims[nd - 1], is = st[nd - 1];
  int64_t rows = 1;
  for (int i = 0; i < nd - 1; i++) rows *= dims[i];
  int64_t per = std::max<int64_t>(1, ku::kChunk / inner);
  ku::parallel_tasks(be, (rows + per - 1) / per, rows * inner, [&](int64_t t) {
    int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
    for (int64_t r = r0; r < r1; r++) {
      int64_t off = 0, rem = r;
      for (int i = nd - 2; i >= 0; i--) {
        off += (rem % dims[i]) * st[i];
        rem /= dims[i];
      }
      const T* px = x + off;
      T* py = y + r * inner;
      if (is == 0) {
        const T v = px[0];
        for (int64_t j = 0; j < inner; j++) py[j] = v;
      } else {
        for (int64_t j = 0; j < inner; j++) py[j] = px[j];
      }
    }
  });
}

Shape shape_param(const cmo_shape_params& p, const char* what) {
  if (p.ndim < 0 || p.ndim > CMO_MAX_DIMS)
    fail(std::string(what) + " has " + std::to_string(p.ndim) + " dimensions, expected 0.." +
         std::to_string(CMO_MAX_DIMS));
  Shape s;
  s.ndim = (int)p.ndim;
  for (int i = 0; i < s.ndim; i++) {
    if (p.dims[i] < 1) fail(std::string(what) + " has dimension " + std::to_string(i) + " = " +
                            std::to_string(p.dims[i]) + ", expected >= 1");
    s.d[i] = p.dims[i];
  }
  return s;
}

void expand(const KernelArgs& a) {
  const auto& p = a.p<cmo_shape_params>("EXPAND");
  const Buffer* x = ku::input(a, 0, "x");
  Shape ys = shape_param(p, "target shape");
  if (!ku::broadcastable_to(x->shape, ys))
    fail("x " + x->shape.str() + " cannot be broadcast to " + ys.str() +
         " (NumPy rules: right-aligned, each dim equal or 1)");
  // A per-(n, c) table expanded over a blockable 5-D shape (gradients of spatial sums and means)
  // is written straight into the backend's preferred BLOCKED16 layout.
  int64_t sn = 0, sc = 0;
  const bool nc_only = ku::blockable(ys, x->dtype) && ku::varies_only_nc(x->shape, ys, &sn, &sc);
  Buffer* y = a.output(0, ys, x->dtype, nc_only ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN, "EXPAND");
  TempBuffer t;
  const Buffer* px = ku::plain(x, t);
  if (y->blocked() && nc_only) {
    const int64_t N = ys.d[0], CB = ys.d[1] / 16, S = ys.d[2] * ys.d[3] * ys.d[4];
    const float* tab = px->f32();
    float* py = y->f32();
    ku::parallel_tasks(a.backend, N * CB, N * CB * S * 16, [&](int64_t t2) {
      const int64_t n = t2 / CB, cb = t2 % CB;
      float v[16];
      for (int l = 0; l < 16; l++) v[l] = tab[n * sn + (cb * 16 + l) * sc];
      float* q = py + t2 * S * 16;
      for (int64_t s2 = 0; s2 < S; s2++)
        for (int l = 0; l < 16; l++) q[s2 * 16 + l] = v[l];
    });
    return;
  }
  ku::write_plain_into(a.backend, y, [&](Buffer* out) {
    if (x->dtype == CMO_DTYPE_U8)
      expand_plain<uint8_t>(a.backend, static_cast<const uint8_t*>(px->data), x->shape,
                            static_cast<uint8_t*>(out->data), ys);
    else
      expand_plain<uint32_t>(a.backend, static_cast<const uint32_t*>(px->data), x->shape,
                             static_cast<uint32_t*>(out->data), ys);
  });
}

// ------------------------------------------------------------------ RESHAPE
void reshape(const KernelArgs& a) {
  const auto& p = a.p<cmo_shape_params>("RESHAPE");
  const Buffer* x = ku::input(a, 0, "x");
  Shape ys = shape_param(p, "target shape");
  if (ys.numel() != x->numel())
    fail("x " + x->shape.str() + " has " + std::to_string(x->numel()) + " elements, target shape " + ys.str() +
         " has " + std::to_string(ys.numel()));
  Buffer* y = a.output(0, ys, x->dtype, CMO_LAYOUT_PLAIN, "RESHAPE");
  if (y->blocked()) {
    // Only the row-major order matters: the blocked output is a reorder of the plain data.
    TempBuffer t;
    const Buffer* px = ku::plain(x, t);
    Buffer view = *px;
    view.shape = ys;
    reorder(&view, y);
    return;
  }
  if (x->blocked()) {
    Buffer view = *y;
    view.shape = x->shape;
    reorder(x, &view);
    return;
  }
  copy_rows(a.backend, 1, static_cast<const char*>(x->data), 0, 0, static_cast<char*>(y->data), 0, 0,
            x->numel() * ku::elem_size(x->dtype));
}

// ------------------------------------------------------------------ COPY
void copy(const KernelArgs& a) {
  const auto& p = a.p<cmo_copy_params>("COPY");
  const Buffer* x = ku::input(a, 0, "x");
  if (p.layout < CMO_LAYOUT_PLAIN || p.layout > CMO_LAYOUT_ANY)
    fail("layout " + std::to_string(p.layout) + " is not a cmo_layout (0..2)");
  cmo_layout want = p.layout == CMO_LAYOUT_ANY ? x->layout : (cmo_layout)p.layout;
  if (want == CMO_LAYOUT_BLOCKED16 && !ku::blockable(x->shape, x->dtype))
    fail(ku::desc("x", x) + " cannot be BLOCKED16: that needs a 5-D f32 tensor with C % 16 == 0");
  // A given output slot keeps its own layout (the data is converted into it).
  Buffer* y = a.output(0, x->shape, x->dtype, want, "COPY");
  if (y->layout == x->layout)
    copy_rows(a.backend, 1, static_cast<const char*>(x->data), 0, 0, static_cast<char*>(y->data), 0, 0,
              x->numel() * ku::elem_size(x->dtype));
  else
    reorder(x, y);
}

// ------------------------------------------------------------------ FILL
void fill(const KernelArgs& a) {
  const auto& p = a.p<cmo_fill_params>("FILL");
  if (a.n_out < 1 || a.out[0] == nullptr) fail("the output slot must be given (FILL does not allocate)");
  Buffer* y = a.out[0];
  const int64_t n = y->numel();
  switch (y->dtype) {
    case CMO_DTYPE_F32: {
      float v = (float)p.value, *py = y->f32();
      ku::parallel_range(a.backend, n, [&](int64_t lo, int64_t hi) { std::fill(py + lo, py + hi, v); });
      break;
    }
    case CMO_DTYPE_I32: {
      if (!std::isfinite(p.value) || p.value > 2147483647.0 || p.value < -2147483648.0)
        fail("value " + std::to_string(p.value) + " does not fit an i32 tensor " + y->shape.str());
      int32_t v = (int32_t)p.value, *py = y->i32();
      ku::parallel_range(a.backend, n, [&](int64_t lo, int64_t hi) { std::fill(py + lo, py + hi, v); });
      break;
    }
    case CMO_DTYPE_U8: {
      if (!(p.value >= 0 && p.value <= 255))
        fail("value " + std::to_string(p.value) + " does not fit a u8 tensor " + y->shape.str());
      uint8_t v = (uint8_t)p.value, *py = static_cast<uint8_t*>(y->data);
      ku::parallel_range(a.backend, n, [&](int64_t lo, int64_t hi) { std::fill(py + lo, py + hi, v); });
      break;
    }
  }
}

// ------------------------------------------------------------------ ARGMAX
void argmax(const KernelArgs& a) {
  const auto& p = a.p<cmo_axis_params>("ARGMAX");
  const Buffer* x = ku::input(a, 0, "x");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  const int axis = ku::norm_axis(p.axis, x->shape.ndim, ("x " + x->shape.str()).c_str());
  Shape ys = x->shape;
  ys.d[axis] = 1;
  Buffer* y = a.output(0, ys, CMO_DTYPE_I32, CMO_LAYOUT_PLAIN, "ARGMAX");
  if (y->blocked()) fail("output must be PLAIN (i32)");
  TempBuffer t;
  const float* px = ku::plain(x, t)->f32();
  int32_t* py = y->i32();
  const ku::AxisSplit sp = ku::split_axis(x->shape, axis);
  // Tasks: (outer, chunk of inner); first index of the maximum wins; NaN counts as the maximum.
  const int64_t cw = 1024, nic = (sp.inner + cw - 1) / cw;
  ku::parallel_tasks(a.backend, sp.outer * nic, sp.outer * sp.k * sp.inner, [&](int64_t t) {
    const int64_t o = t / nic, i0 = (t % nic) * cw, i1 = std::min(sp.inner, i0 + cw);
    const float* base = px + o * sp.k * sp.inner;
    float best[1024];
    int32_t* out = py + o * sp.inner;
    for (int64_t i = i0; i < i1; i++) {
      best[i - i0] = base[i];
      out[i] = 0;
    }
    for (int64_t k = 1; k < sp.k; k++) {
      const float* row = base + k * sp.inner;
      for (int64_t i = i0; i < i1; i++) {
        float v = row[i], b = best[i - i0];
        if (v > b || (v != v && b == b)) {
          best[i - i0] = v;
          out[i] = (int32_t)k;
        }
      }
    }
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_CONCAT, concat);
CMO_REGISTER_KERNEL(CMO_OP_SLICE, slice);
CMO_REGISTER_KERNEL(CMO_OP_EXPAND, expand);
CMO_REGISTER_KERNEL(CMO_OP_RESHAPE, reshape);
CMO_REGISTER_KERNEL(CMO_OP_COPY, copy);
CMO_REGISTER_KERNEL(CMO_OP_FILL, fill);
CMO_REGISTER_KERNEL(CMO_OP_ARGMAX, argmax);

}  // namespace cmo
