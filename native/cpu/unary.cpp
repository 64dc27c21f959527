// unary.cpp — UNARY_FORWARD / UNARY_BACKWARD (relu, leaky relu, sigmoid, exact GELU, exp, log, tanh,
// sqrt, abs, neg). Elementwise, so the output keeps the input's layout (or the given slot's layout).
// The backward pass always takes the forward INPUT x: dx = dy * f'(x).
// Vectorisation of the math below needs these (no FP exceptions or errno are relied on anywhere).
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <cmath>

#include "kernel_util.hpp"

namespace cmo {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

const char* kind_name(int64_t k) {
  static const char* names[] = {"relu", "leaky_relu", "sigmoid", "gelu", "exp",
                                "log",  "tanh",       "sqrt",    "abs",  "neg"};
  return (k >= 0 && k <= CMO_UNARY_NEG) ? names[k] : "unknown";
}

inline float sigmoidf(float x) { return 1.0f / (1.0f + ku::fast_exp(-x)); }

template <typename F>
void map1(Backend* be, int64_t n, const float* x, float* y, F f) {
  ku::parallel_range(be, n, [=](int64_t lo, int64_t hi) {
    const F fl = f;  // a local copy, so its captures are not reloaded after every store
    const float* __restrict xs = x + lo;
    float* __restrict ys = y + lo;
    for (int64_t i = 0; i < hi - lo; i++) ys[i] = fl(xs[i]);
  });
}

template <typename F>
void map2(Backend* be, int64_t n, const float* x, const float* dy, float* dx, F f) {
  ku::parallel_range(be, n, [=](int64_t lo, int64_t hi) {
    const F fl = f;
    const float* __restrict xs = x + lo;
    const float* __restrict gs = dy + lo;
    float* __restrict ds = dx + lo;
    for (int64_t i = 0; i < hi - lo; i++) ds[i] = fl(xs[i], gs[i]);
  });
}

void check_kind(int64_t kind) {
  if (kind < CMO_UNARY_RELU || kind > CMO_UNARY_NEG)
    fail("kind " + std::to_string(kind) + " is not a cmo_unary_kind (0..9)");
}

void unary_forward(const KernelArgs& a) {
  const auto& p = a.p<cmo_unary_params>("UNARY_FORWARD");
  check_kind(p.kind);
  const Buffer* x = ku::input(a, 0, "x");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  Buffer* y = a.output(0, x->shape, CMO_DTYPE_F32, x->layout, "UNARY_FORWARD");
  TempBuffer tx;
  const float* px = as_layout(x, y->layout, tx)->f32();
  float* py = y->f32();
  const int64_t n = x->numel();
  Backend* be = a.backend;
  const float al = (float)p.alpha;
  switch (p.kind) {
    case CMO_UNARY_RELU: map1(be, n, px, py, [](float v) { return v > 0.f ? v : 0.f; }); break;
    case CMO_UNARY_LEAKY_RELU: map1(be, n, px, py, [al](float v) { return v > 0.f ? v : v * al; }); break;
    case CMO_UNARY_SIGMOID: map1(be, n, px, py, [](float v) { return sigmoidf(v); }); break;
    case CMO_UNARY_GELU:
      map1(be, n, px, py, [](float v) { return 0.5f * v * (1.0f + std::erf(v * kInvSqrt2)); });
      break;
    case CMO_UNARY_EXP: map1(be, n, px, py, [](float v) { return ku::fast_exp(v); }); break;
    case CMO_UNARY_LOG: map1(be, n, px, py, [](float v) { return ku::fast_log(v); }); break;
    case CMO_UNARY_TANH: map1(be, n, px, py, [](float v) { return std::tanh(v); }); break;
    case CMO_UNARY_SQRT:
      ku::parallel_range(be, n, [=](int64_t lo, int64_t hi) { ku::sqrt_array(px + lo, py + lo, hi - lo); });
      break;
    case CMO_UNARY_ABS: map1(be, n, px, py, [](float v) { return std::fabs(v); }); break;
    case CMO_UNARY_NEG: map1(be, n, px, py, [](float v) { return -v; }); break;
  }
}

void unary_backward(const KernelArgs& a) {
  const auto& p = a.p<cmo_unary_params>("UNARY_BACKWARD");
  check_kind(p.kind);
  const Buffer* x = ku::input(a, 0, "x");
  const Buffer* dy = ku::input(a, 1, "dy");
  ku::need_dtype(x, "x", CMO_DTYPE_F32);
  ku::need_dtype(dy, "dy", CMO_DTYPE_F32);
  if (x->shape != dy->shape)
    fail(std::string("x ") + x->shape.str() + " and dy " + dy->shape.str() + " must have the same shape (" +
         kind_name(p.kind) + " backward)");
  cmo_layout natural = x->layout == dy->layout ? x->layout : CMO_LAYOUT_PLAIN;
  Buffer* dx = a.output(0, x->shape, CMO_DTYPE_F32, natural, "UNARY_BACKWARD");
  TempBuffer tx, tdy;
  const float* px = as_layout(x, dx->layout, tx)->f32();
  const float* pdy = as_layout(dy, dx->layout, tdy)->f32();
  float* pdx = dx->f32();
  const int64_t n = x->numel();
  Backend* be = a.backend;
  const float al = (float)p.alpha;
  switch (p.kind) {
    case CMO_UNARY_RELU: map2(be, n, px, pdy, pdx, [](float v, float g) { return v > 0.f ? g : 0.f; }); break;
    case CMO_UNARY_LEAKY_RELU:
      map2(be, n, px, pdy, pdx, [al](float v, float g) { return v > 0.f ? g : g * al; });
      break;
    case CMO_UNARY_SIGMOID:
      map2(be, n, px, pdy, pdx, [](float v, float g) {
        float s = sigmoidf(v);
        return g * s * (1.0f - s);
      });
      break;
    case CMO_UNARY_GELU:
      map2(be, n, px, pdy, pdx, [](float v, float g) {
        float cdf = 0.5f * (1.0f + std::erf(v * kInvSqrt2));
        float pdf = kInvSqrt2Pi * ku::fast_exp(-0.5f * v * v);
        return g * (cdf + v * pdf);
      });
      break;
    case CMO_UNARY_EXP: map2(be, n, px, pdy, pdx, [](float v, float g) { return g * ku::fast_exp(v); }); break;
    case CMO_UNARY_LOG: map2(be, n, px, pdy, pdx, [](float v, float g) { return g / v; }); break;
    case CMO_UNARY_TANH:
      map2(be, n, px, pdy, pdx, [](float v, float g) {
        float t = std::tanh(v);
        return g * (1.0f - t * t);
      });
      break;
    case CMO_UNARY_SQRT:
      ku::parallel_range(be, n, [=](int64_t lo, int64_t hi) {
        float* __restrict d = pdx + lo;
        const float* __restrict g = pdy + lo;
        ku::sqrt_array(px + lo, d, hi - lo);
        for (int64_t i = 0; i < hi - lo; i++) d[i] = g[i] / (2.0f * d[i]);
      });
      break;
    case CMO_UNARY_ABS:
      map2(be, n, px, pdy, pdx, [](float v, float g) { return v > 0.f ? g : (v < 0.f ? -g : 0.f); });
      break;
    case CMO_UNARY_NEG: map2(be, n, px, pdy, pdx, [](float, float g) { return -g; }); break;
  }
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_UNARY_FORWARD, unary_forward);
CMO_REGISTER_KERNEL(CMO_OP_UNARY_BACKWARD, unary_backward);

}  // namespace cmo
