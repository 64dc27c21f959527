// elementwise.cpp — BINARY (NumPy broadcasting) and AFFINE_SCALAR.
//
// Layouts: same-shape operands in the output's layout run as one flat loop. A BLOCKED16 output
// [N,C,D,H,W] combines directly with an operand that varies only over N and C (shapes that
// broadcast as [1|N, 1|C, 1, 1, 1], e.g. per-channel [1,C,1,1,1] or one element). Everything else
// runs the plain broadcast path (blocked operands converted), reordered into a blocked output slot
// when one was given.
// Vectorisation of the math below needs these (no FP exceptions or errno are relied on anywhere).
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <cmath>

#include "kernel_util.hpp"

namespace cmo {
namespace {

template <typename T>
struct OpAdd { static T f(T a, T b) { return a + b; } };
template <typename T>
struct OpSub { static T f(T a, T b) { return a - b; } };
template <typename T>
struct OpMul { static T f(T a, T b) { return a * b; } };
template <typename T>
struct OpDiv { static T f(T a, T b) { return a / b; } };
template <typename T>
struct OpMax {
  // NaN propagates as torch.maximum does.
  static T f(T a, T b) {
    if constexpr (std::is_floating_point<T>::value) {
      if (a != a || b != b) return a + b;
    }
    return a > b ? a : b;
  }
};
template <typename T>
struct OpEq { static T f(T a, T b) { return a == b ? T(1) : T(0); } };

// Plain broadcast loop: y[out] = op(a[out], b[out]) with broadcast strides (0 along broadcast dims).
template <typename T, typename Op>
void plain_broadcast(Backend* be, const T* a, const Shape& as, const T* b, const Shape& bs, T* y,
                     const Shape& ys) {
  int64_t sa[CMO_MAX_DIMS], sb[CMO_MAX_DIMS];
  ku::broadcast_strides(as, ys, sa);
  ku::broadcast_strides(bs, ys, sb);
  // Coalesce adjacent dims that stay contiguous for both operands.
  int nd = 0;
  int64_t dims[CMO_MAX_DIMS], ca[CMO_MAX_DIMS], cb[CMO_MAX_DIMS];
  for (int i = 0; i < ys.ndim; i++) {
    if (ys.d[i] == 1) continue;
    if (nd > 0 && ca[nd - 1] == sa[i] * ys.d[i] && cb[nd - 1] == sb[i] * ys.d[i]) {
      dims[nd - 1] *= ys.d[i];
      ca[nd - 1] = sa[i];
      cb[nd - 1] = sb[i];
    } else {
      dims[nd] = ys.d[i];
      ca[nd] = sa[i];
      cb[nd] = sb[i];
      nd++;
    }
  }
  if (nd == 0) {
    y[0] = Op::f(a[0], b[0]);
    return;
  }
  const int64_t inner = dims[nd - 1], ia = ca[nd - 1], ib = cb[nd - 1];
  int64_t rows = 1;
  for (int i = 0; i < nd - 1; i++) rows *= dims[i];
  // Rows are grouped so each task does a reasonable amount of work.
  int64_t per = std::max<int64_t>(1, ku::kChunk / std::max<int64_t>(inner, 1));
  int64_t ntask = (rows + per - 1) / per;
  ku::parallel_tasks(be, ntask, rows * inner, [&](int64_t t) {
    int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
    for (int64_t r = r0; r < r1; r++) {
      int64_t oa = 0, ob = 0, rem = r;
      for (int i = nd - 2; i >= 0; i--) {
        int64_t idx = rem % dims[i];
        rem /= dims[i];
        oa += idx * ca[i];
        ob += idx * cb[i];
      }
      const T* pa = a + oa;
      const T* pb = b + ob;
      T* py = y + r * inner;
      if (ia == 1 && ib == 1) {
        for (int64_t j = 0; j < inner; j++) py[j] = Op::f(pa[j], pb[j]);
      } else if (ia == 1 && ib == 0) {
        const T vb = pb[0];
        for (int64_t j = 0; j < inner; j++) py[j] = Op::f(pa[j], vb);
      } else if (ia == 0 && ib == 1) {
        const T va = pa[0];
        for (int64_t j = 0; j < inner; j++) py[j] = Op::f(va, pb[j]);
      } else {
        for (int64_t j = 0; j < inner; j++) py[j] = Op::f(pa[j * ia], pb[j * ib]);
      }
    }
  });
}

// Blocked output [N,C,D,H,W] (nCdhw16c); `full` has the output's shape and layout, `small` is a plain
// [n',c'] table (n' in {1,N}, c' in {1,C}). full_first: y = op(full, small) else op(small, full).
template <typename Op>
void blocked_with_small(Backend* be, const float* full, const float* small, int64_t sn, int64_t sc,
                        bool full_first, float* y, const Shape& ys) {
  const int64_t N = ys.d[0], CB = ys.d[1] / 16, S = ys.d[2] * ys.d[3] * ys.d[4];
  ku::parallel_tasks(be, N * CB, N * CB * S * 16, [&](int64_t t) {
    const int64_t n = t / CB, cb = t % CB;
    float v[16];
    for (int l = 0; l < 16; l++) v[l] = small[n * sn + (cb * 16 + l) * sc];
    const float* px = full + t * S * 16;
    float* py = y + t * S * 16;
    if (full_first) {
      for (int64_t s = 0; s < S; s++)
        for (int l = 0; l < 16; l++) py[s * 16 + l] = Op::f(px[s * 16 + l], v[l]);
    } else {
      for (int64_t s = 0; s < S; s++)
        for (int l = 0; l < 16; l++) py[s * 16 + l] = Op::f(v[l], px[s * 16 + l]);
    }
  });
}

template <typename T, template <typename> class OpT>
void run_binary(const KernelArgs& a, const Buffer* x0, const Buffer* x1, const Shape& ys, Buffer* y) {
  using Op = OpT<T>;
  Backend* be = a.backend;
  if (y->blocked()) {
    // Same-shape operands: flat loop in blocked order.
    const bool full0 = x0->shape == ys, full1 = x1->shape == ys;
    if (full0 && full1) {
      TempBuffer t0, t1;
      const float* p0 = as_layout(x0, CMO_LAYOUT_BLOCKED16, t0)->f32();
      const float* p1 = as_layout(x1, CMO_LAYOUT_BLOCKED16, t1)->f32();
      float* py = y->f32();
      ku::parallel_range(be, ys.numel(), [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; i++) py[i] = OpT<float>::f(p0[i], p1[i]);
      });
      return;
    }
    int64_t sn, sc;
    if (full0 && ku::varies_only_nc(x1->shape, ys, &sn, &sc)) {
      TempBuffer t0, t1;
      const float* p0 = as_layout(x0, CMO_LAYOUT_BLOCKED16, t0)->f32();
      const float* p1 = ku::plain(x1, t1)->f32();
      blocked_with_small<OpT<float>>(be, p0, p1, sn, sc, true, y->f32(), ys);
      return;
    }
    if (full1 && ku::varies_only_nc(x0->shape, ys, &sn, &sc)) {
      TempBuffer t0, t1;
      const float* p0 = ku::plain(x0, t0)->f32();
      const float* p1 = as_layout(x1, CMO_LAYOUT_BLOCKED16, t1)->f32();
      blocked_with_small<OpT<float>>(be, p1, p0, sn, sc, false, y->f32(), ys);
      return;
    }
  }
  TempBuffer t0, t1;
  const Buffer* p0 = ku::plain(x0, t0);
  const Buffer* p1 = ku::plain(x1, t1);
  ku::write_plain_into(be, y, [&](Buffer* out) {
    plain_broadcast<T, Op>(be, static_cast<const T*>(p0->data), p0->shape,
                           static_cast<const T*>(p1->data), p1->shape, static_cast<T*>(out->data),
                           ys);
  });
}

template <typename T>
void dispatch_binary(const KernelArgs& a, int64_t kind, const Buffer* x0, const Buffer* x1,
                     const Shape& ys, Buffer* y) {
  switch (kind) {
    case CMO_BINARY_ADD: return run_binary<T, OpAdd>(a, x0, x1, ys, y);
    case CMO_BINARY_SUB: return run_binary<T, OpSub>(a, x0, x1, ys, y);
    case CMO_BINARY_MUL: return run_binary<T, OpMul>(a, x0, x1, ys, y);
    case CMO_BINARY_DIV: return run_binary<T, OpDiv>(a, x0, x1, ys, y);
    case CMO_BINARY_MAXIMUM: return run_binary<T, OpMax>(a, x0, x1, ys, y);
    case CMO_BINARY_EQUAL: return run_binary<T, OpEq>(a, x0, x1, ys, y);
  }
}

void binary(const KernelArgs& a) {
  const auto& p = a.p<cmo_binary_params>("BINARY");
  const Buffer* x0 = ku::input(a, 0, "a");
  const Buffer* x1 = ku::input(a, 1, "b");
  if (p.kind < CMO_BINARY_ADD || p.kind > CMO_BINARY_EQUAL)
    fail("kind " + std::to_string(p.kind) + " is not a cmo_binary_kind (0..5)");
  if (x0->dtype != x1->dtype)
    fail(ku::desc("a", x0) + " and " + ku::desc("b", x1) + " must have the same dtype");
  if (x0->dtype == CMO_DTYPE_U8) fail(ku::desc("a", x0) + ": u8 is not supported, expected f32 or i32");
  if (x0->dtype == CMO_DTYPE_I32 && p.kind == CMO_BINARY_DIV)
    fail(ku::desc("a", x0) + ": DIV needs f32 tensors, got i32");
  Shape ys;
  if (!ku::broadcast_shapes(x0->shape, x1->shape, ys))
    fail("shapes a " + x0->shape.str() + " and b " + x1->shape.str() +
         " do not broadcast (NumPy rules: each dim equal or 1)");
  // Natural layout: blocked when a blocked operand already has the output's shape.
  cmo_layout natural = CMO_LAYOUT_PLAIN;
  if ((x0->blocked() && x0->shape == ys) || (x1->blocked() && x1->shape == ys)) natural = CMO_LAYOUT_BLOCKED16;
  Buffer* y = a.output(0, ys, x0->dtype, natural, "BINARY");
  if (x0->dtype == CMO_DTYPE_F32)
    dispatch_binary<float>(a, p.kind, x0, x1, ys, y);
  else
    dispatch_binary<int32_t>(a, p.kind, x0, x1, ys, y);
}

void affine_scalar(const KernelArgs& a) {
  const auto& p = a.p<cmo_affine_scalar_params>("AFFINE_SCALAR");
  const Buffer* x = ku::input(a, 0, "x");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, x->layout, "AFFINE_SCALAR");
  TempBuffer t;
  const float* px = as_layout(x, y->layout, t)->f32();
  float* py = y->f32();
  const float al = (float)p.alpha, bt = (float)p.beta;
  ku::parallel_range(a.backend, x->numel(), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) py[i] = al * px[i] + bt;
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_BINARY, binary);
CMO_REGISTER_KERNEL(CMO_OP_AFFINE_SCALAR, affine_scalar);

}  // namespace cmo
