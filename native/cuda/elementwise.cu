// elementwise.cu — unary activations (forward and backward), broadcast binary ops, affine scalar,
// fill, copy, reshape, permute, expand, concat and slice.
#include <cmath>

#include "../common/permute_plan.hpp"
#include "internal.cuh"

namespace cmocu {
namespace {

// ------------------------------------------------------------------ unary
__device__ inline float unary_fwd(int kind, float x, float alpha) {
  switch (kind) {
    case CMO_UNARY_RELU: return x > 0.f ? x : 0.f;
    case CMO_UNARY_LEAKY_RELU: return x > 0.f ? x : alpha * x;
    case CMO_UNARY_SIGMOID: return 1.f / (1.f + expf(-x));
    case CMO_UNARY_GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case CMO_UNARY_EXP: return expf(x);
    case CMO_UNARY_LOG: return logf(x);
    case CMO_UNARY_TANH: return tanhf(x);
    case CMO_UNARY_SQRT: return sqrtf(x);
    case CMO_UNARY_ABS: return fabsf(x);
    case CMO_UNARY_NEG: return -x;
  }
  return 0.f;
}

// dy * f'(x), always from the forward input x
__device__ inline float unary_bwd(int kind, float x, float dy, float alpha) {
  switch (kind) {
    case CMO_UNARY_RELU: return x > 0.f ? dy : 0.f;
    case CMO_UNARY_LEAKY_RELU: return x > 0.f ? dy : alpha * dy;
    case CMO_UNARY_SIGMOID: {
      float s = 1.f / (1.f + expf(-x));
      return dy * s * (1.f - s);
    }
    case CMO_UNARY_GELU: {
      float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
      float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
      return dy * (cdf + x * pdf);
    }
    case CMO_UNARY_EXP: return dy * expf(x);
    case CMO_UNARY_LOG: return dy / x;
    case CMO_UNARY_TANH: {
      float t = tanhf(x);
      return dy * (1.f - t * t);
    }
    case CMO_UNARY_SQRT: return dy * 0.5f / sqrtf(x);
    case CMO_UNARY_ABS: return x > 0.f ? dy : (x < 0.f ? -dy : 0.f);
    case CMO_UNARY_NEG: return -dy;
  }
  return 0.f;
}

void check_unary_kind(int64_t kind, const char* op) {
  if (kind < CMO_UNARY_RELU || kind > CMO_UNARY_NEG)
    fail(std::string(op) + ": unknown unary kind " + std::to_string(kind));
}

void unary_forward(const KernelArgs& a) {
  const char* op = "UNARY_FORWARD";
  const auto& p = a.p<cmo_unary_params>(op);
  check_unary_kind(p.kind, op);
  const Buffer* x = a.in[0];
  need_f32(x, op, "x");
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, op);
  const float* xp = x->f32();
  float* yp = y->f32();
  int kind = (int)p.kind;
  float alpha = (float)p.alpha;
  launch_elementwise(a.backend, x->numel(), [=] __device__(int64_t i) { yp[i] = unary_fwd(kind, xp[i], alpha); }, op);
}

void unary_backward(const KernelArgs& a) {
  const char* op = "UNARY_BACKWARD";
  const auto& p = a.p<cmo_unary_params>(op);
  check_unary_kind(p.kind, op);
  const Buffer *x = a.in[0], *dy = a.in[1];
  need_f32(x, op, "x");
  need_f32(dy, op, "dy");
  if (x->shape != dy->shape) fail(std::string(op) + ": x " + x->shape.str() + " and dy " + dy->shape.str() + " differ");
  Buffer* dx = a.output(0, x->shape, CMO_DTYPE_F32, op);
  const float *xp = x->f32(), *dyp = dy->f32();
  float* dxp = dx->f32();
  int kind = (int)p.kind;
  float alpha = (float)p.alpha;
  launch_elementwise(a.backend, x->numel(),
                     [=] __device__(int64_t i) { dxp[i] = unary_bwd(kind, xp[i], dyp[i], alpha); }, op);
}

// ------------------------------------------------------------------ broadcasting
// Offsets of an output index into an input whose broadcast strides are given (0 on broadcast dims).
struct Bcast {
  int ndim;
  int64_t out_d[CMO_MAX_DIMS];
  int64_t a_s[CMO_MAX_DIMS];
  int64_t b_s[CMO_MAX_DIMS];
};

__device__ inline void bcast_offsets(const Bcast& bc, int64_t i, int64_t* oa, int64_t* ob) {
  int64_t ra = 0, rb = 0;
  for (int k = bc.ndim - 1; k >= 0; k--) {
    int64_t c = i % bc.out_d[k];
    i /= bc.out_d[k];
    ra += c * bc.a_s[k];
    rb += c * bc.b_s[k];
  }
  *oa = ra;
  *ob = rb;
}

// Right-aligned broadcast strides of `in` against `out` (fails when not broadcastable).
bool bcast_strides(const Shape& in, const Shape& out, int64_t* st) {
  int64_t s[CMO_MAX_DIMS];
  row_major_strides(in, s);
  int off = out.ndim - in.ndim;
  if (off < 0) return false;
  for (int k = 0; k < out.ndim; k++) {
    int j = k - off;
    if (j < 0) {
      st[k] = 0;
    } else if (in.d[j] == out.d[k]) {
      st[k] = in.d[j] == 1 ? 0 : s[j];
    } else if (in.d[j] == 1) {
      st[k] = 0;
    } else {
      return false;
    }
  }
  return true;
}

template <typename T>
__device__ inline T binary_apply(int kind, T x, T y) {
  switch (kind) {
    case CMO_BINARY_ADD: return x + y;
    case CMO_BINARY_SUB: return x - y;
    case CMO_BINARY_MUL: return x * y;
    case CMO_BINARY_DIV: return x / y;
    case CMO_BINARY_MAXIMUM:
      if (x != x || y != y) return x + y;  // NaN propagates, as torch.maximum
      return x > y ? x : y;
    case CMO_BINARY_EQUAL: return x == y ? T(1) : T(0);
  }
  return T(0);
}

template <typename T>
void binary_typed(Backend* be, int kind, const Buffer* A, const Buffer* B, Buffer* y, const Shape& out, const char* op) {
  const T* ap = static_cast<const T*>(A->data);
  const T* bp = static_cast<const T*>(B->data);
  T* yp = static_cast<T*>(y->data);
  int64_t n = out.numel();
  if (A->shape == out && B->shape == out) {
    launch_elementwise(be, n, [=] __device__(int64_t i) { yp[i] = binary_apply<T>(kind, ap[i], bp[i]); }, op);
  } else if (A->shape == out && B->numel() == 1) {
    launch_elementwise(be, n, [=] __device__(int64_t i) { yp[i] = binary_apply<T>(kind, ap[i], bp[0]); }, op);
  } else {
    Bcast bc{};
    bc.ndim = out.ndim;
    for (int k = 0; k < out.ndim; k++) bc.out_d[k] = out.d[k];
    bcast_strides(A->shape, out, bc.a_s);
    bcast_strides(B->shape, out, bc.b_s);
    launch_elementwise(be, n, [=] __device__(int64_t i) {
      int64_t oa, ob;
      bcast_offsets(bc, i, &oa, &ob);
      yp[i] = binary_apply<T>(kind, ap[oa], bp[ob]);
    }, op);
  }
}

void binary(const KernelArgs& a) {
  const char* op = "BINARY";
  const auto& p = a.p<cmo_binary_params>(op);
  if (p.kind < CMO_BINARY_ADD || p.kind > CMO_BINARY_EQUAL) fail(std::string(op) + ": unknown binary kind " + std::to_string(p.kind));
  const Buffer *A = a.in[0], *B = a.in[1];
  if (A->dtype != B->dtype)
    fail(std::string(op) + ": a " + A->shape.str() + " " + dtype_name(A->dtype) + " and b " + B->shape.str() + " " +
         dtype_name(B->dtype) + " must have the same dtype");
  if (A->dtype == CMO_DTYPE_U8) fail(std::string(op) + ": u8 is not supported, expected f32 or i32");
  if (A->dtype == CMO_DTYPE_I32 && p.kind == CMO_BINARY_DIV) fail(std::string(op) + ": DIV needs f32 tensors, got i32");
  Shape out;
  out.ndim = std::max(A->shape.ndim, B->shape.ndim);
  for (int k = 0; k < out.ndim; k++) {
    int ja = k - (out.ndim - A->shape.ndim), jb = k - (out.ndim - B->shape.ndim);
    int64_t da = ja >= 0 ? A->shape.d[ja] : 1, db = jb >= 0 ? B->shape.d[jb] : 1;
    if (da != db && da != 1 && db != 1)
      fail(std::string(op) + ": shapes " + A->shape.str() + " and " + B->shape.str() + " do not broadcast");
    out.d[k] = da == 1 ? db : da;
  }
  Buffer* y = a.output(0, out, A->dtype, op);
  if (A->dtype == CMO_DTYPE_F32)
    binary_typed<float>(a.backend, (int)p.kind, A, B, y, out, op);
  else
    binary_typed<int32_t>(a.backend, (int)p.kind, A, B, y, out, op);
}

void affine_scalar(const KernelArgs& a) {
  const char* op = "AFFINE_SCALAR";
  const auto& p = a.p<cmo_affine_scalar_params>(op);
  const Buffer* x = a.in[0];
  need_f32(x, op, "x");
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, op);
  const float* xp = x->f32();
  float* yp = y->f32();
  float al = (float)p.alpha, bt = (float)p.beta;
  launch_elementwise(a.backend, x->numel(), [=] __device__(int64_t i) { yp[i] = al * xp[i] + bt; }, op);
}

// ------------------------------------------------------------------ data movement (any dtype)
template <typename T>
void expand_typed(Backend* be, const Buffer* x, Buffer* y, const Bcast& bc, const char* op) {
  const T* xp = static_cast<const T*>(x->data);
  T* yp = static_cast<T*>(y->data);
  launch_elementwise(be, y->numel(), [=] __device__(int64_t i) {
    int64_t oa, ob;
    bcast_offsets(bc, i, &oa, &ob);
    yp[i] = xp[oa];
  }, op);
}

Shape shape_of(const cmo_shape_params& p, const char* op) {
  if (p.ndim < 0 || p.ndim > CMO_MAX_DIMS) fail(std::string(op) + ": ndim " + std::to_string(p.ndim) + " is outside 0..6");
  Shape s;
  s.ndim = (int)p.ndim;
  for (int i = 0; i < s.ndim; i++) {
    if (p.dims[i] < 0) fail(std::string(op) + ": dimension " + std::to_string(i) + " is negative");
    s.d[i] = p.dims[i];
  }
  return s;
}

void expand(const KernelArgs& a) {
  const char* op = "EXPAND";
  const auto& p = a.p<cmo_shape_params>(op);
  Shape out = shape_of(p, op);
  const Buffer* x = a.in[0];
  Bcast bc{};
  bc.ndim = out.ndim;
  for (int k = 0; k < out.ndim; k++) bc.out_d[k] = out.d[k];
  if (!bcast_strides(x->shape, out, bc.a_s))
    fail(std::string(op) + ": x " + x->shape.str() + " does not broadcast to " + out.str());
  Buffer* y = a.output(0, out, x->dtype, op);
  if (dtype_size(x->dtype) == 4)
    expand_typed<uint32_t>(a.backend, x, y, bc, op);
  else
    expand_typed<uint8_t>(a.backend, x, y, bc, op);
}

void copy_device(Backend* be, void* dst, const void* src, int64_t bytes, const char* op) {
  if (bytes <= 0 || dst == src) return;
  check_cuda(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToDevice, stream(be)), op);
}

void copy(const KernelArgs& a) {
  const char* op = "COPY";
  const auto& p = a.p<cmo_copy_params>(op);
  if (p.layout < CMO_LAYOUT_PLAIN || p.layout > CMO_LAYOUT_ANY) fail(std::string(op) + ": unknown layout " + std::to_string(p.layout));
  const Buffer* x = a.in[0];
  Buffer* y = a.output(0, x->shape, x->dtype, op);  // stored plain whatever the layout asked
  copy_device(a.backend, y->data, x->data, x->bytes, op);
}

void reshape(const KernelArgs& a) {
  const char* op = "RESHAPE";
  const auto& p = a.p<cmo_shape_params>(op);
  Shape out = shape_of(p, op);
  const Buffer* x = a.in[0];
  if (out.numel() != x->numel())
    fail(std::string(op) + ": cannot reshape " + x->shape.str() + " (" + std::to_string(x->numel()) + " elements) to " +
         out.str() + " (" + std::to_string(out.numel()) + " elements)");
  Buffer* y = a.output(0, out, x->dtype, op);
  copy_device(a.backend, y->data, x->data, x->bytes, op);
}

// PERMUTE: one thread per output element of the plan (native/common/permute_plan.hpp: size-1 axes
// dropped, neighbouring axes merged), reading x at the plan's strides. Writes are coalesced; reads
// are strided along the transposed axis.
template <typename T>
void permute_typed(Backend* be, const void* src, void* dst, const cmo_common::PermutePlan& pl, int64_t n,
                   const char* op) {
  const T* xp = static_cast<const T*>(src);
  T* yp = static_cast<T*>(dst);
  Dims6 g{};
  g.ndim = pl.ndim;
  for (int k = 0; k < pl.ndim; k++) {
    g.d[k] = pl.dims[k];
    g.s[k] = pl.strides[k];
  }
  launch_elementwise(be, n, [=] __device__(int64_t i) {
    int64_t off = 0, rem = i;
    for (int k = g.ndim - 1; k >= 0; k--) {
      off += (rem % g.d[k]) * g.s[k];
      rem /= g.d[k];
    }
    yp[i] = xp[off];
  }, op);
}

void permute(const KernelArgs& a) {
  const char* op = "PERMUTE";
  const auto& p = a.p<cmo_permute_params>(op);
  const Buffer* x = a.in[0];
  const cmo_common::PermutePlan pl = cmo_common::permute_plan(x->shape, p);
  Buffer* y = a.output(0, pl.out, x->dtype, op);
  if (pl.contiguous) {
    copy_device(a.backend, y->data, x->data, x->bytes, op);
    return;
  }
  if (dtype_size(x->dtype) == 4)
    permute_typed<uint32_t>(a.backend, x->data, y->data, pl, x->numel(), op);
  else
    permute_typed<uint8_t>(a.backend, x->data, y->data, pl, x->numel(), op);
}

template <typename T>
void fill_typed(Backend* be, Buffer* y, T v, const char* op) {
  T* yp = static_cast<T*>(y->data);
  launch_elementwise(be, y->numel(), [=] __device__(int64_t i) { yp[i] = v; }, op);
}

void fill(const KernelArgs& a) {
  const char* op = "FILL";
  const auto& p = a.p<cmo_fill_params>(op);
  Buffer* y = a.out[0];
  if (y == nullptr) fail(std::string(op) + ": the output slot must be given (non-NULL)");
  switch (y->dtype) {
    case CMO_DTYPE_F32: fill_typed<float>(a.backend, y, (float)p.value, op); break;
    case CMO_DTYPE_I32: fill_typed<int32_t>(a.backend, y, (int32_t)p.value, op); break;
    case CMO_DTYPE_U8: fill_typed<uint8_t>(a.backend, y, (uint8_t)p.value, op); break;
  }
}

// Copies x[outer, len_x*inner] into y[outer, len_y*inner] at element offset off*inner (concat), or
// the reverse window (slice, when `gather`).
template <typename T>
void window_copy(Backend* be, const void* src, void* dst, int64_t outer, int64_t inner, int64_t len_small,
                 int64_t len_big, int64_t off, bool gather, const char* op) {
  const T* s = static_cast<const T*>(src);
  T* d = static_cast<T*>(dst);
  const int64_t row = len_small * inner, big = len_big * inner, o = off * inner;
  launch_elementwise(be, outer * row, [=] __device__(int64_t i) {
    int64_t q = i / row, r = i % row;
    if (gather)
      d[i] = s[q * big + o + r];
    else
      d[q * big + o + r] = s[i];
  }, op);
}

void window(Backend* be, cmo_dtype dt, const void* src, void* dst, int64_t outer, int64_t inner, int64_t ls,
            int64_t lb, int64_t off, bool gather, const char* op) {
  if (dtype_size(dt) == 4)
    window_copy<uint32_t>(be, src, dst, outer, inner, ls, lb, off, gather, op);
  else
    window_copy<uint8_t>(be, src, dst, outer, inner, ls, lb, off, gather, op);
}

void concat(const KernelArgs& a) {
  const char* op = "CONCAT";
  const auto& p = a.p<cmo_axis_params>(op);
  const Buffer* x0 = a.in[0];
  int axis = norm_axis(p.axis, x0->shape, op);
  Shape out = x0->shape;
  out.d[axis] = 0;
  for (int i = 0; i < a.n_in; i++) {
    const Buffer* xi = a.in[i];
    bool ok = xi->shape.ndim == x0->shape.ndim && xi->dtype == x0->dtype;
    for (int k = 0; ok && k < x0->shape.ndim; k++)
      if (k != axis && xi->shape.d[k] != x0->shape.d[k]) ok = false;
    if (!ok)
      fail(std::string(op) + ": input " + std::to_string(i) + " " + xi->shape.str() + " " + dtype_name(xi->dtype) +
           " does not match input 0 " + x0->shape.str() + " " + dtype_name(x0->dtype) + " outside axis " +
           std::to_string(axis));
    out.d[axis] += xi->shape.d[axis];
  }
  Buffer* y = a.output(0, out, x0->dtype, op);
  int64_t outer, len, inner;
  split_axis(out, axis, &outer, &len, &inner);
  int64_t off = 0;
  for (int i = 0; i < a.n_in; i++) {
    int64_t li = a.in[i]->shape.d[axis];
    window(a.backend, x0->dtype, a.in[i]->data, y->data, outer, inner, li, len, off, false, op);
    off += li;
  }
}

void slice(const KernelArgs& a) {
  const char* op = "SLICE";
  const auto& p = a.p<cmo_slice_params>(op);
  const Buffer* x = a.in[0];
  int axis = norm_axis(p.axis, x->shape, op);
  if (p.start < 0 || p.length < 0 || p.start + p.length > x->shape.d[axis])
    fail(std::string(op) + ": window start " + std::to_string(p.start) + " length " + std::to_string(p.length) +
         " does not fit axis " + std::to_string(axis) + " of " + x->shape.str());
  Shape out = x->shape;
  out.d[axis] = p.length;
  Buffer* y = a.output(0, out, x->dtype, op);
  int64_t outer, len, inner;
  split_axis(x->shape, axis, &outer, &len, &inner);
  window(a.backend, x->dtype, x->data, y->data, outer, inner, p.length, len, p.start, true, op);
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_UNARY_FORWARD, unary_forward);
CMO_REGISTER_KERNEL(CMO_OP_UNARY_BACKWARD, unary_backward);
CMO_REGISTER_KERNEL(CMO_OP_BINARY, binary);
CMO_REGISTER_KERNEL(CMO_OP_AFFINE_SCALAR, affine_scalar);
CMO_REGISTER_KERNEL(CMO_OP_CONCAT, concat);
CMO_REGISTER_KERNEL(CMO_OP_SLICE, slice);
CMO_REGISTER_KERNEL(CMO_OP_EXPAND, expand);
CMO_REGISTER_KERNEL(CMO_OP_COPY, copy);
CMO_REGISTER_KERNEL(CMO_OP_FILL, fill);
CMO_REGISTER_KERNEL(CMO_OP_RESHAPE, reshape);
CMO_REGISTER_KERNEL(CMO_OP_PERMUTE, permute);

}  // namespace cmocu
