// test_ops.cpp — checks the CPU library's non-conv, non-norm kernels against naive references on tiny
// shapes, through the C ABI only (comodal.h). Covers plain and BLOCKED16 inputs, NumPy broadcasting,
// error messages, and run-to-run / thread-count determinism of the reductions.
// Build: g++ -std=c++17 -O2 test_ops.cpp -L build -l:libcomodal_cpu.so -Wl,-rpath,...
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../include/comodal.h"

namespace {

using V = std::vector<float>;
using VI = std::vector<int32_t>;
using Dims = std::vector<int64_t>;

cmo_backend* g_be = nullptr;
int g_pass = 0, g_fail = 0;
std::string g_test;

void report(bool ok, const std::string& what) {
  if (ok) {
    g_pass++;
  } else {
    g_fail++;
    std::printf("FAIL [%s] %s\n", g_test.c_str(), what.c_str());
  }
}
#define CHECK(cond, what) report((cond), std::string(what) + " (" #cond ")")

uint64_t g_rng = 0x9e3779b97f4a7c15ull;
float frand() {  // uniform in [-1, 1)
  g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(g_rng >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}
V rnd(size_t n, float scale = 1.0f) {
  V v(n);
  for (auto& x : v) x = frand() * scale;
  return v;
}
int64_t numel(const Dims& d) {
  int64_t n = 1;
  for (auto x : d) n *= x;
  return n;
}

// Owns a buffer handle.
struct Buf {
  cmo_buffer* b = nullptr;
  Buf() = default;
  explicit Buf(cmo_buffer* x) : b(x) {}
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept : b(o.b) { o.b = nullptr; }
  Buf& operator=(Buf&& o) noexcept {
    reset();
    b = o.b;
    o.b = nullptr;
    return *this;
  }
  ~Buf() { reset(); }
  void reset() {
    if (b) cmo_buffer_release(b);
    b = nullptr;
  }
};

cmo_tensor_desc describe(const Buf& b) {
  cmo_tensor_desc d{};
  cmo_buffer_describe(b.b, &d);
  return d;
}

Buf make(const Dims& d, cmo_dtype t, cmo_layout l, const void* data, int64_t bytes) {
  cmo_tensor_desc desc{};
  desc.ndim = (int64_t)d.size();
  for (size_t i = 0; i < d.size(); i++) desc.dims[i] = d[i];
  desc.dtype = t;
  desc.layout = l;
  cmo_buffer* b = nullptr;
  if (cmo_buffer_create(g_be, &desc, &b) != CMO_OK) {
    std::printf("cannot create buffer: %s\n", cmo_last_error());
    return Buf();
  }
  if (data) cmo_buffer_write(b, data, bytes);
  return Buf(b);
}
Buf F(const Dims& d, const V& v, cmo_layout l = CMO_LAYOUT_PLAIN) {
  return make(d, CMO_DTYPE_F32, l, v.data(), (int64_t)(v.size() * 4));
}
Buf I(const Dims& d, const VI& v) { return make(d, CMO_DTYPE_I32, CMO_LAYOUT_PLAIN, v.data(), (int64_t)(v.size() * 4)); }

V readf(const Buf& b) {
  cmo_tensor_desc d = describe(b);
  int64_t n = 1;
  for (int i = 0; i < d.ndim; i++) n *= d.dims[i];
  V v((size_t)n);
  cmo_buffer_read(b.b, v.data(), n * 4);
  return v;
}
VI readi(const Buf& b) {
  cmo_tensor_desc d = describe(b);
  int64_t n = 1;
  for (int i = 0; i < d.ndim; i++) n *= d.dims[i];
  VI v((size_t)n);
  cmo_buffer_read(b.b, v.data(), n * 4);
  return v;
}
Dims dims_of(const Buf& b) {
  cmo_tensor_desc d = describe(b);
  return Dims(d.dims, d.dims + d.ndim);
}

template <typename P>
cmo_status run(cmo_op op, std::vector<const Buf*> in, std::vector<Buf*> out, const P& p) {
  std::vector<cmo_buffer*> ins, outs;
  for (auto* b : in) ins.push_back(b ? b->b : nullptr);
  for (auto* b : out) outs.push_back(b->b);
  cmo_status st = cmo_op_execute(g_be, op, ins.data(), (int32_t)ins.size(), outs.data(), (int32_t)outs.size(), &p,
                                 (int64_t)sizeof(P));
  for (size_t i = 0; i < out.size(); i++) out[i]->b = outs[i];
  return st;
}

// Runs an op that must succeed; reports the native message otherwise.
template <typename P>
bool ok(cmo_op op, std::vector<const Buf*> in, std::vector<Buf*> out, const P& p) {
  cmo_status st = run(op, in, out, p);
  if (st != CMO_OK) report(false, std::string("op failed: ") + cmo_last_error());
  return st == CMO_OK;
}

bool close(const V& got, const V& ref, double atol, double rtol, const std::string& what) {
  if (got.size() != ref.size()) {
    report(false, what + ": size " + std::to_string(got.size()) + " vs " + std::to_string(ref.size()));
    return false;
  }
  for (size_t i = 0; i < got.size(); i++) {
    double g = got[i], r = ref[i];
    if (std::isnan(r) && std::isnan(g)) continue;
    if (!(std::fabs(g - r) <= atol + rtol * std::fabs(r))) {
      report(false, what + ": element " + std::to_string(i) + " got " + std::to_string(g) + " expected " +
                        std::to_string(r));
      return false;
    }
  }
  report(true, what);
  return true;
}

bool has(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }

// Row-major offset of multi-index `idx` (of an output shape) in a broadcast input shape.
int64_t bcast_off(const Dims& in, const Dims& out, const std::vector<int64_t>& idx) {
  int64_t off = 0, st = 1;
  for (int i = (int)in.size() - 1; i >= 0; i--) {
    int j = i + (int)(out.size() - in.size());
    if (in[i] != 1) off += idx[j] * st;
    st *= in[i];
  }
  return off;
}
void unravel(int64_t lin, const Dims& d, std::vector<int64_t>& idx) {
  idx.resize(d.size());
  for (int i = (int)d.size() - 1; i >= 0; i--) {
    idx[i] = lin % d[i];
    lin /= d[i];
  }
}

// ------------------------------------------------------------------ elementwise
float ref_bin(int k, float a, float b) {
  switch (k) {
    case CMO_BINARY_ADD: return a + b;
    case CMO_BINARY_SUB: return a - b;
    case CMO_BINARY_MUL: return a * b;
    case CMO_BINARY_DIV: return a / b;
    case CMO_BINARY_MAXIMUM: return a > b ? a : b;
    default: return a == b ? 1.f : 0.f;
  }
}

V ref_binary(int k, const V& a, const Dims& ad, const V& b, const Dims& bd, const Dims& yd) {
  V y((size_t)numel(yd));
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < numel(yd); i++) {
    unravel(i, yd, idx);
    y[i] = ref_bin(k, a[bcast_off(ad, yd, idx)], b[bcast_off(bd, yd, idx)]);
  }
  return y;
}

void test_binary() {
  g_test = "binary";
  struct Case {
    Dims a, b, y;
  } cases[] = {{{2, 3, 4}, {3, 1}, {2, 3, 4}},
               {{4}, {2, 3, 4}, {2, 3, 4}},
               {{2, 1, 4}, {1, 3, 1}, {2, 3, 4}},
               {{1}, {5, 2}, {5, 2}},
               {{3, 5}, {3, 5}, {3, 5}}};
  for (auto& c : cases)
    for (int k = 0; k <= CMO_BINARY_EQUAL; k++) {
      V av = rnd((size_t)numel(c.a)), bv = rnd((size_t)numel(c.b));
      if (k == CMO_BINARY_EQUAL) bv[0] = av[0];
      if (k == CMO_BINARY_DIV)
        for (auto& v : bv) v = v >= 0 ? v + 0.5f : v - 0.5f;
      Buf a = F(c.a, av), b = F(c.b, bv), y;
      if (!ok(CMO_OP_BINARY, {&a, &b}, {&y}, cmo_binary_params{k})) continue;
      CHECK(dims_of(y) == c.y, "broadcast output shape");
      close(readf(y), ref_binary(k, av, c.a, bv, c.b, c.y), 1e-6, 1e-6, "binary kind " + std::to_string(k));
    }
  // Blocked operand with per-channel, per-(n,c), one-element, same-shape and W-broadcast partners.
  Dims xd = {2, 32, 3, 2, 2};
  V xv = rnd((size_t)numel(xd));
  Buf xb = F(xd, xv, CMO_LAYOUT_BLOCKED16);
  CHECK(describe(xb).layout == CMO_LAYOUT_BLOCKED16, "blocked buffer created");
  struct Partner {
    Dims d;
    bool blocked_out;
  } partners[] = {{{1, 32, 1, 1, 1}, true}, {{2, 32, 1, 1, 1}, true}, {{1}, true}, {{32, 1, 1, 1}, true},
                  {{2, 32, 3, 2, 2}, true}, {{2}, false}, {{1, 1, 3, 1, 1}, false}};
  for (auto& pt : partners)
    for (int order = 0; order < 2; order++)
      for (int k : {CMO_BINARY_SUB, CMO_BINARY_DIV, CMO_BINARY_MUL}) {
        V pv = rnd((size_t)numel(pt.d));
        for (auto& v : pv) v = v >= 0 ? v + 0.5f : v - 0.5f;
        Buf pb = F(pt.d, pv), y;
        std::string what = "blocked x with partner " + std::to_string(pt.d.size()) + "-D order " +
                           std::to_string(order) + " kind " + std::to_string(k);
        bool r = order == 0 ? ok(CMO_OP_BINARY, {&xb, &pb}, {&y}, cmo_binary_params{k})
                            : ok(CMO_OP_BINARY, {&pb, &xb}, {&y}, cmo_binary_params{k});
        if (!r) continue;
        V ref = order == 0 ? ref_binary(k, xv, xd, pv, pt.d, xd) : ref_binary(k, pv, pt.d, xv, xd, xd);
        close(readf(y), ref, 1e-6, 1e-6, what);
        if (pt.blocked_out) CHECK(describe(y).layout == CMO_LAYOUT_BLOCKED16, what + " keeps the blocked layout");
      }
  // A given PLAIN output slot with a blocked input.
  {
    Buf pc = F({1, 32, 1, 1, 1}, rnd(32)), y = F(xd, V((size_t)numel(xd)));
    V pv = readf(pc);
    if (ok(CMO_OP_BINARY, {&xb, &pc}, {&y}, cmo_binary_params{CMO_BINARY_ADD})) {
      CHECK(describe(y).layout == CMO_LAYOUT_PLAIN, "given plain slot stays plain");
      close(readf(y), ref_binary(CMO_BINARY_ADD, xv, xd, pv, {1, 32, 1, 1, 1}, xd), 1e-6, 1e-6, "into plain slot");
    }
  }
  // i32 EQUAL and error paths.
  {
    Buf a = I({4}, {1, 2, 3, 4}), b = I({4}, {1, 0, 3, 0}), y;
    if (ok(CMO_OP_BINARY, {&a, &b}, {&y}, cmo_binary_params{CMO_BINARY_EQUAL}))
      CHECK((readi(y) == VI{1, 0, 1, 0}), "i32 equal");
    Buf c = F({2, 3}, rnd(6)), d = F({4}, rnd(4)), z;
    CHECK(run(CMO_OP_BINARY, {&c, &d}, {&z}, cmo_binary_params{CMO_BINARY_ADD}) == CMO_ERR_INVALID_ARGUMENT,
          "incompatible shapes rejected");
    std::string msg = cmo_last_error();
    CHECK(has(msg, "[2,3]") && has(msg, "[4]") && has(msg, "broadcast"), "message names shapes: " + msg);
    Buf e = I({2, 3}, VI(6, 1)), w;
    CHECK(run(CMO_OP_BINARY, {&c, &e}, {&w}, cmo_binary_params{CMO_BINARY_ADD}) == CMO_ERR_INVALID_ARGUMENT,
          "mixed dtypes rejected");
  }
  g_test = "affine_scalar";
  {
    V v = rnd(2 * 16 * 8);
    Buf x = F({2, 16, 2, 2, 2}, v, CMO_LAYOUT_BLOCKED16), y;
    if (ok(CMO_OP_AFFINE_SCALAR, {&x}, {&y}, cmo_affine_scalar_params{2.5, -1.0})) {
      V ref(v.size());
      for (size_t i = 0; i < v.size(); i++) ref[i] = 2.5f * v[i] - 1.0f;
      close(readf(y), ref, 1e-6, 1e-6, "alpha*x+beta (blocked)");
    }
  }
}

// ------------------------------------------------------------------ unary
double ref_un(int k, double x, double al) {
  switch (k) {
    case CMO_UNARY_RELU: return x > 0 ? x : 0;
    case CMO_UNARY_LEAKY_RELU: return x > 0 ? x : al * x;
    case CMO_UNARY_SIGMOID: return 1 / (1 + std::exp(-x));
    case CMO_UNARY_GELU: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case CMO_UNARY_EXP: return std::exp(x);
    case CMO_UNARY_LOG: return std::log(x);
    case CMO_UNARY_TANH: return std::tanh(x);
    case CMO_UNARY_SQRT: return std::sqrt(x);
    case CMO_UNARY_ABS: return std::fabs(x);
    default: return -x;
  }
}

void test_unary() {
  g_test = "unary";
  const Dims d = {1, 16, 2, 3, 2};
  for (int k = 0; k <= CMO_UNARY_NEG; k++)
    for (int blocked = 0; blocked < 2; blocked++) {
      V xv = rnd((size_t)numel(d), 2.0f);
      if (k == CMO_UNARY_LOG || k == CMO_UNARY_SQRT)
        for (auto& v : xv) v = std::fabs(v) + 0.1f;
      for (auto& v : xv)
        if (std::fabs(v) < 1e-2f) v = 0.3f;  // keep finite differences away from kinks
      V gv = rnd(xv.size());
      Buf x = F(d, xv, blocked ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN), g = F(d, gv), y, dx;
      cmo_unary_params p{k, 0.1};
      std::string what = "kind " + std::to_string(k) + (blocked ? " blocked" : " plain");
      if (ok(CMO_OP_UNARY_FORWARD, {&x}, {&y}, p)) {
        V ref(xv.size());
        for (size_t i = 0; i < xv.size(); i++) ref[i] = (float)ref_un(k, xv[i], 0.1);
        close(readf(y), ref, 1e-6, 1e-5, "forward " + what);
        CHECK(describe(y).layout == (blocked ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN), "layout kept " + what);
      }
      if (ok(CMO_OP_UNARY_BACKWARD, {&x, &g}, {&dx}, p)) {
        V ref(xv.size());
        for (size_t i = 0; i < xv.size(); i++) {
          double h = 1e-4;
          ref[i] = (float)(gv[i] * (ref_un(k, xv[i] + h, 0.1) - ref_un(k, xv[i] - h, 0.1)) / (2 * h));
        }
        close(readf(dx), ref, 1e-4, 1e-3, "backward (central differences) " + what);
      }
    }
}

// ------------------------------------------------------------------ shape ops
void test_shape() {
  g_test = "concat";
  {
    V a = rnd(2 * 3 * 4), b = rnd(2 * 2 * 4);
    Buf x = F({2, 3, 4}, a), z = F({2, 2, 4}, b), y;
    if (ok(CMO_OP_CONCAT, {&x, &z}, {&y}, cmo_axis_params{1})) {
      V ref;
      for (int n = 0; n < 2; n++) {
        ref.insert(ref.end(), a.begin() + n * 12, a.begin() + n * 12 + 12);
        ref.insert(ref.end(), b.begin() + n * 8, b.begin() + n * 8 + 8);
      }
      CHECK((dims_of(y) == Dims{2, 5, 4}), "concat shape");
      close(readf(y), ref, 0, 0, "concat axis 1 plain");
    }
    Buf w;
    CHECK(run(CMO_OP_CONCAT, {&x, &z}, {&w}, cmo_axis_params{2}) == CMO_ERR_INVALID_ARGUMENT,
          "mismatched dims rejected");
    // negative axis
    Buf y2;
    if (ok(CMO_OP_CONCAT, {&x, &x}, {&y2}, cmo_axis_params{-1})) CHECK((dims_of(y2) == Dims{2, 3, 8}), "axis -1");
  }
  {
    Dims ad = {2, 16, 2, 2, 1}, bd = {2, 32, 2, 2, 1};
    V a = rnd((size_t)numel(ad)), b = rnd((size_t)numel(bd));
    Buf x = F(ad, a, CMO_LAYOUT_BLOCKED16), z = F(bd, b), y;
    if (ok(CMO_OP_CONCAT, {&x, &z}, {&y}, cmo_axis_params{1})) {
      CHECK(describe(y).layout == CMO_LAYOUT_BLOCKED16, "channel concat of blocked stays blocked");
      V ref;
      for (int n = 0; n < 2; n++) {
        ref.insert(ref.end(), a.begin() + n * 64, a.begin() + n * 64 + 64);
        ref.insert(ref.end(), b.begin() + n * 128, b.begin() + n * 128 + 128);
      }
      close(readf(y), ref, 0, 0, "concat axis 1 blocked");
    }
    Buf y0;
    if (ok(CMO_OP_CONCAT, {&x, &x}, {&y0}, cmo_axis_params{0})) {
      CHECK(describe(y0).layout == CMO_LAYOUT_BLOCKED16, "batch concat of blocked stays blocked");
      V ref(a);
      ref.insert(ref.end(), a.begin(), a.end());
      close(readf(y0), ref, 0, 0, "concat axis 0 blocked");
    }
    Buf y3;
    if (ok(CMO_OP_CONCAT, {&x, &x}, {&y3}, cmo_axis_params{2})) {
      V ref;
      for (int n = 0; n < 2; n++)
        for (int c = 0; c < 16; c++)
          for (int r = 0; r < 2; r++) ref.insert(ref.end(), a.begin() + (n * 16 + c) * 4, a.begin() + (n * 16 + c) * 4 + 4);
      close(readf(y3), ref, 0, 0, "concat axis 2 blocked");
    }
  }
  g_test = "slice";
  {
    Dims xd = {2, 32, 2, 1, 3};
    V v = rnd((size_t)numel(xd));
    for (int blocked = 0; blocked < 2; blocked++) {
      Buf x = F(xd, v, blocked ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN);
      struct S {
        int64_t axis, start, len;
      } ss[] = {{1, 16, 16}, {1, 3, 5}, {0, 1, 1}, {4, 1, 2}};
      for (auto s : ss) {
        Buf y;
        if (!ok(CMO_OP_SLICE, {&x}, {&y}, cmo_slice_params{s.axis, s.start, s.len})) continue;
        Dims yd = xd;
        yd[s.axis] = s.len;
        V ref((size_t)numel(yd));
        std::vector<int64_t> idx;
        for (int64_t i = 0; i < numel(yd); i++) {
          unravel(i, yd, idx);
          idx[s.axis] += s.start;
          int64_t off = 0;
          for (size_t j = 0; j < xd.size(); j++) off = off * xd[j] + idx[j];
          ref[i] = v[off];
        }
        close(readf(y), ref, 0, 0,
              "slice axis " + std::to_string(s.axis) + " start " + std::to_string(s.start) + (blocked ? " blocked" : ""));
      }
      Buf bad;
      CHECK(run(CMO_OP_SLICE, {&x}, {&bad}, cmo_slice_params{1, 30, 5}) == CMO_ERR_INVALID_ARGUMENT,
            "out-of-range slice rejected");
    }
  }
  g_test = "expand/reshape/copy/fill";
  {
    V v = rnd(3);
    Buf x = F({3, 1}, v), y;
    cmo_shape_params sp{3, {2, 3, 4, 0, 0, 0}};
    if (ok(CMO_OP_EXPAND, {&x}, {&y}, sp)) {
      V ref(24);
      for (int i = 0; i < 24; i++) ref[i] = v[(i / 4) % 3];
      close(readf(y), ref, 0, 0, "expand [3,1] -> [2,3,4]");
    }
    cmo_shape_params bad{2, {2, 3, 0, 0, 0, 0}};
    Buf z;
    CHECK(run(CMO_OP_EXPAND, {&x}, {&z}, bad) == CMO_ERR_INVALID_ARGUMENT, "bad expand rejected");
    // Per-channel table expanded over a blockable 5-D shape: written blocked, same values.
    V cv = rnd(2 * 32);
    Buf xc = F({2, 32, 1, 1, 1}, cv), yc;
    cmo_shape_params sp5{5, {2, 32, 2, 3, 1, 0}};
    if (ok(CMO_OP_EXPAND, {&xc}, {&yc}, sp5)) {
      CHECK(describe(yc).layout == CMO_LAYOUT_BLOCKED16, "per-channel expand to 5-D C%16 is blocked");
      V ref(2 * 32 * 6);
      for (size_t i = 0; i < ref.size(); i++) ref[i] = cv[i / 6];
      close(readf(yc), ref, 0, 0, "expand [2,32,1,1,1] -> [2,32,2,3,1]");
    }
    Buf xw = F({1, 1, 1, 3, 1}, rnd(3)), yw;
    if (ok(CMO_OP_EXPAND, {&xw}, {&yw}, sp5)) {
      V wv = readf(xw), ref(2 * 32 * 6);
      for (size_t i = 0; i < ref.size(); i++) ref[i] = wv[i % 3];
      close(readf(yw), ref, 0, 0, "expand over H of a 5-D shape");
    }
    Buf xi = I({2, 1}, {7, -3}), yi;
    cmo_shape_params sp2{2, {2, 3, 0, 0, 0, 0}};
    if (ok(CMO_OP_EXPAND, {&xi}, {&yi}, sp2)) CHECK((readi(yi) == VI{7, 7, 7, -3, -3, -3}), "expand i32");
  }
  {
    Dims xd = {1, 16, 2, 2, 2};
    V v = rnd(128);
    Buf x = F(xd, v, CMO_LAYOUT_BLOCKED16), y, c, back;
    cmo_shape_params sp{2, {16, 8, 0, 0, 0, 0}};
    if (ok(CMO_OP_RESHAPE, {&x}, {&y}, sp)) {
      CHECK(describe(y).layout == CMO_LAYOUT_PLAIN, "reshape output plain");
      close(readf(y), v, 0, 0, "reshape of blocked keeps row-major order");
    }
    Buf p = F(xd, v);
    if (ok(CMO_OP_COPY, {&p}, {&c}, cmo_copy_params{CMO_LAYOUT_BLOCKED16})) {
      CHECK(describe(c).layout == CMO_LAYOUT_BLOCKED16, "copy to blocked");
      close(readf(c), v, 0, 0, "copy plain -> blocked");
      if (ok(CMO_OP_COPY, {&c}, {&back}, cmo_copy_params{CMO_LAYOUT_PLAIN})) {
        CHECK(describe(back).layout == CMO_LAYOUT_PLAIN, "copy to plain");
        close(readf(back), v, 0, 0, "copy blocked -> plain");
      }
    }
    Buf q = F({3, 5}, rnd(15)), qb;
    CHECK(run(CMO_OP_COPY, {&q}, {&qb}, cmo_copy_params{CMO_LAYOUT_BLOCKED16}) == CMO_ERR_INVALID_ARGUMENT,
          "copy of a 2-D tensor to blocked rejected");
    Buf f = F({2, 3}, V(6, 0.0f)), fi = I({4}, VI(4, 0));
    if (ok(CMO_OP_FILL, {}, {&f}, cmo_fill_params{1.5})) close(readf(f), V(6, 1.5f), 0, 0, "fill f32");
    if (ok(CMO_OP_FILL, {}, {&fi}, cmo_fill_params{-7})) CHECK((readi(fi) == VI{-7, -7, -7, -7}), "fill i32");
    Buf none;
    CHECK(run(CMO_OP_FILL, {}, {&none}, cmo_fill_params{1}) == CMO_ERR_INVALID_ARGUMENT, "fill without slot rejected");
  }
  g_test = "permute";
  {
    // y[i] = x[j] with j[order[k]] = i_k, for a plain and a blocked x of the same values.
    auto ref_perm = [](const V& v, const Dims& d, const std::vector<int>& order) {
      Dims yd;
      for (int o : order) yd.push_back(d[(size_t)o]);
      std::vector<int64_t> xst(d.size(), 1);
      for (int i = (int)d.size() - 2; i >= 0; i--) xst[(size_t)i] = xst[(size_t)i + 1] * d[(size_t)i + 1];
      V y((size_t)numel(yd));
      std::vector<int64_t> idx;
      for (int64_t i = 0; i < numel(yd); i++) {
        unravel(i, yd, idx);
        int64_t off = 0;
        for (size_t k = 0; k < order.size(); k++) off += idx[k] * xst[(size_t)order[k]];
        y[(size_t)i] = v[(size_t)off];
      }
      return y;
    };
    auto params = [](const std::vector<int>& order) {
      cmo_permute_params p{};
      p.ndim = (int64_t)order.size();
      for (size_t i = 0; i < order.size(); i++) p.order[i] = order[i];
      return p;
    };
    struct PCase {
      Dims d;
      std::vector<int> order;
      cmo_layout layout;
    };
    for (const PCase& c : {PCase{{3, 4}, {1, 0}, CMO_LAYOUT_PLAIN}, PCase{{2, 5, 3}, {0, 2, 1}, CMO_LAYOUT_PLAIN},
                           PCase{{2, 1, 3, 4}, {3, 0, 2, 1}, CMO_LAYOUT_PLAIN},
                           PCase{{2, 3, 2, 2, 3, 2}, {0, 2, 4, 1, 3, 5}, CMO_LAYOUT_PLAIN},
                           PCase{{4, 1, 5}, {1, 0, 2}, CMO_LAYOUT_PLAIN},
                           PCase{{2, 32, 2, 3, 2}, {0, 2, 3, 4, 1}, CMO_LAYOUT_BLOCKED16},
                           PCase{{1, 16, 3, 2, 2}, {4, 1, 0, 3, 2}, CMO_LAYOUT_BLOCKED16}}) {
      V v = rnd((size_t)numel(c.d));
      Buf x = F(c.d, v, c.layout), y;
      std::string what = "permute " + std::to_string(c.d.size()) + "-D" +
                         (c.layout == CMO_LAYOUT_BLOCKED16 ? " blocked" : "");
      if (ok(CMO_OP_PERMUTE, {&x}, {&y}, params(c.order))) {
        CHECK(describe(y).layout == CMO_LAYOUT_PLAIN, what + ": output plain");
        close(readf(y), ref_perm(v, c.d, c.order), 0, 0, what);
      }
    }
    Buf xi = I({2, 3}, {1, 2, 3, 4, 5, 6}), yi;
    if (ok(CMO_OP_PERMUTE, {&xi}, {&yi}, params({1, 0}))) CHECK((readi(yi) == VI{1, 4, 2, 5, 3, 6}), "permute i32");
    Buf xb = F({2, 3}, rnd(6)), yb, yc;
    CHECK(run(CMO_OP_PERMUTE, {&xb}, {&yb}, params({0, 0})) == CMO_ERR_INVALID_ARGUMENT &&
              has(cmo_last_error(), "not a permutation"),
          "permute with a repeated axis rejected");
    CHECK(run(CMO_OP_PERMUTE, {&xb}, {&yc}, params({0, 1, 2})) == CMO_ERR_INVALID_ARGUMENT,
          "permute with the wrong rank rejected");
  }
  g_test = "argmax";
  {
    // [2,3,4] along axis 1, with a tie (first index wins)
    V v = rnd(24);
    v[0 * 12 + 0 * 4 + 1] = 5;
    v[0 * 12 + 2 * 4 + 1] = 5;
    Buf x = F({2, 3, 4}, v), y;
    if (ok(CMO_OP_ARGMAX, {&x}, {&y}, cmo_axis_params{1})) {
      VI ref(8);
      for (int n = 0; n < 2; n++)
        for (int i = 0; i < 4; i++) {
          int best = 0;
          for (int k = 1; k < 3; k++)
            if (v[n * 12 + k * 4 + i] > v[n * 12 + best * 4 + i]) best = k;
          ref[n * 4 + i] = best;
        }
      CHECK((dims_of(y) == Dims{2, 1, 4}), "argmax keeps dim as 1");
      CHECK(readi(y) == ref, "argmax values (tie -> first)");
    }
  }
}

// ------------------------------------------------------------------ matmul
void test_matmul() {
  g_test = "matmul";
  struct Case {
    int64_t Ba, Bb, M, K, N;
  } cases[] = {{1, 1, 3, 5, 4}, {2, 2, 4, 3, 5}, {1, 3, 2, 6, 3}, {3, 1, 5, 2, 2}, {1, 1, 4, 70000, 3},
               {2, 2, 2, 40000, 3}, {1, 1, 64, 48, 80}};
  for (auto c : cases)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        const int64_t B = std::max(c.Ba, c.Bb);
        V av = rnd((size_t)(c.Ba * c.M * c.K)), bv = rnd((size_t)(c.Bb * c.K * c.N));
        Dims ad = ta ? Dims{c.Ba, c.K, c.M} : Dims{c.Ba, c.M, c.K};
        Dims bd = tb ? Dims{c.Bb, c.N, c.K} : Dims{c.Bb, c.K, c.N};
        Buf a = F(ad, av), b = F(bd, bv), y;
        std::string what = "B" + std::to_string(c.Ba) + "x" + std::to_string(c.Bb) + " M" + std::to_string(c.M) +
                           " K" + std::to_string(c.K) + " N" + std::to_string(c.N) + " ta" + std::to_string(ta) +
                           " tb" + std::to_string(tb);
        if (!ok(CMO_OP_MATMUL, {&a, &b}, {&y}, cmo_matmul_params{ta, tb})) continue;
        CHECK((dims_of(y) == Dims{B, c.M, c.N}), "shape " + what);
        V ref((size_t)(B * c.M * c.N));
        for (int64_t bi = 0; bi < B; bi++)
          for (int64_t m = 0; m < c.M; m++)
            for (int64_t n = 0; n < c.N; n++) {
              double s = 0;
              const float* A = av.data() + (c.Ba == 1 ? 0 : bi) * c.M * c.K;
              const float* Bm = bv.data() + (c.Bb == 1 ? 0 : bi) * c.K * c.N;
              for (int64_t k = 0; k < c.K; k++)
                s += (double)(ta ? A[k * c.M + m] : A[m * c.K + k]) * (tb ? Bm[n * c.K + k] : Bm[k * c.N + n]);
              ref[(size_t)((bi * c.M + m) * c.N + n)] = (float)s;
            }
        close(readf(y), ref, 1e-4, 1e-4, what);
      }
  {
    V av = rnd(6), bv = rnd(6);
    Buf a = F({2, 3}, av), b = F({3, 2}, bv), y;
    if (ok(CMO_OP_MATMUL, {&a, &b}, {&y}, cmo_matmul_params{0, 0})) CHECK((dims_of(y) == Dims{2, 2}), "rank-2 output");
    Buf bad = F({4, 2}, rnd(8)), z;
    CHECK(run(CMO_OP_MATMUL, {&a, &bad}, {&z}, cmo_matmul_params{0, 0}) == CMO_ERR_INVALID_ARGUMENT, "K mismatch");
    CHECK(has(cmo_last_error(), "K=3") && has(cmo_last_error(), "K=4"), std::string("message: ") + cmo_last_error());
  }
}

// ------------------------------------------------------------------ reductions
V ref_reduce(const V& x, const Dims& d, uint64_t mask, int kind, Dims& yd) {
  yd = d;
  for (size_t i = 0; i < d.size(); i++)
    if ((mask >> i) & 1) yd[i] = 1;
  std::vector<double> acc((size_t)numel(yd), kind == CMO_REDUCE_MAX ? -INFINITY : 0.0);
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < numel(d); i++) {
    unravel(i, d, idx);
    int64_t o = bcast_off(yd, d, idx);
    if (kind == CMO_REDUCE_MAX) acc[o] = std::max(acc[o], (double)x[i]);
    else acc[o] += x[i];
  }
  double cnt = (double)numel(d) / (double)numel(yd);
  V y(acc.size());
  for (size_t i = 0; i < acc.size(); i++) y[i] = (float)(kind == CMO_REDUCE_MEAN ? acc[i] / cnt : acc[i]);
  return y;
}

void test_reduce() {
  g_test = "reduce";
  Dims d = {2, 3, 4, 5};
  V xv = rnd((size_t)numel(d));
  Buf x = F(d, xv);
  for (uint64_t mask = 0; mask < 16; mask++)
    for (int kind = 0; kind <= CMO_REDUCE_MAX; kind++) {
      Buf y;
      if (!ok(CMO_OP_REDUCE, {&x}, {&y}, cmo_reduce_params{kind, (int64_t)mask})) continue;
      Dims yd;
      V ref = ref_reduce(xv, d, mask, kind, yd);
      CHECK(dims_of(y) == yd, "reduced dims kept as 1");
      close(readf(y), ref, 1e-5, 1e-5, "plain mask " + std::to_string(mask) + " kind " + std::to_string(kind));
    }
  Dims bd = {2, 32, 3, 2, 3};
  V bv = rnd((size_t)numel(bd));
  Buf xb = F(bd, bv, CMO_LAYOUT_BLOCKED16);
  for (uint64_t mask : {0x1dull, 0x1cull, 0x1eull, 0x1full, 0x4ull, 0x2ull, 0x1ull})
    for (int kind = 0; kind <= CMO_REDUCE_MAX; kind++) {
      Buf y;
      if (!ok(CMO_OP_REDUCE, {&xb}, {&y}, cmo_reduce_params{kind, (int64_t)mask})) continue;
      Dims yd;
      V ref = ref_reduce(bv, bd, mask, kind, yd);
      close(readf(y), ref, 1e-5, 1e-5, "blocked mask " + std::to_string(mask) + " kind " + std::to_string(kind));
    }
  // Long reductions: chunked partials (few outputs, many inputs) in both inner layouts.
  {
    Dims ld = {3, 150001};
    V lv = rnd((size_t)numel(ld));
    for (auto& v : lv) v += 0.25f;
    Buf l = F(ld, lv);
    for (uint64_t mask : {0x2ull, 0x3ull, 0x1ull}) {
      Buf y;
      if (!ok(CMO_OP_REDUCE, {&l}, {&y}, cmo_reduce_params{CMO_REDUCE_SUM, (int64_t)mask})) continue;
      Dims yd;
      close(readf(y), ref_reduce(lv, ld, mask, CMO_REDUCE_SUM, yd), 1e-4, 1e-6, "long sum mask " + std::to_string(mask));
    }
    Dims td = {200003, 5};
    V tv = rnd((size_t)numel(td));
    Buf t = F(td, tv), y, y1, y2;
    if (ok(CMO_OP_REDUCE, {&t}, {&y}, cmo_reduce_params{CMO_REDUCE_MEAN, 1})) {
      Dims yd;
      close(readf(y), ref_reduce(tv, td, 1, CMO_REDUCE_MEAN, yd), 1e-7, 1e-5, "tall mean over axis 0");
    }
    // Same bits for 1 and 2 threads and run to run.
    cmo_backend_set_threads(g_be, 1);
    ok(CMO_OP_REDUCE, {&l}, {&y1}, cmo_reduce_params{CMO_REDUCE_SUM, 0x3});
    cmo_backend_set_threads(g_be, 2);
    ok(CMO_OP_REDUCE, {&l}, {&y2}, cmo_reduce_params{CMO_REDUCE_SUM, 0x3});
    CHECK(readf(y1) == readf(y2), "sum bit-identical for 1 and 2 threads");
  }
  g_test = "reduce_max_backward";
  {
    Dims md = {2, 3, 4};
    V mv = rnd(24);
    mv[1 * 4 + 2] = 3;  // n=0, c=1, two ties at positions 2 and 3
    mv[1 * 4 + 3] = 3;
    Buf m = F(md, mv), y, dy, dx;
    cmo_reduce_params p{CMO_REDUCE_MAX, 0x4};
    if (ok(CMO_OP_REDUCE, {&m}, {&y}, p)) {
      V gv = rnd(6);
      dy = F({2, 3, 1}, gv);
      if (ok(CMO_OP_REDUCE_MAX_BACKWARD, {&m, &y, &dy}, {&dx}, p)) {
        V yv = readf(y), ref(24, 0.0f);
        for (int o = 0; o < 6; o++) {
          int c = 0;
          for (int i = 0; i < 4; i++) c += mv[o * 4 + i] == yv[o];
          for (int i = 0; i < 4; i++)
            if (mv[o * 4 + i] == yv[o]) ref[o * 4 + i] = gv[o] / c;
        }
        close(readf(dx), ref, 1e-7, 1e-6, "max backward with ties");
        CHECK(std::fabs(readf(dx)[6] - gv[1] / 2) < 1e-7, "tie split in half");
      }
    }
  }
}

// ------------------------------------------------------------------ softmax / l2 normalize
void test_softmax_l2() {
  g_test = "softmax";
  for (int which = 0; which < 3; which++) {
    Dims d = which == 0 ? Dims{2, 5, 3, 7} : which == 1 ? Dims{3, 9} : Dims{1, 16, 2, 3, 1};
    int axis = which == 1 ? 1 : 1;
    cmo_layout lay = which == 2 ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN;
    V xv = rnd((size_t)numel(d), 3.0f), gv = rnd((size_t)numel(d));
    Buf x = F(d, xv, lay), y, g = F(d, gv), dx;
    if (!ok(CMO_OP_SOFTMAX_FORWARD, {&x}, {&y}, cmo_axis_params{axis})) continue;
    int64_t outer = d[0], K = d[1], inner = numel(d) / (outer * K);
    V ref(xv.size()), dref(xv.size());
    for (int64_t o = 0; o < outer; o++)
      for (int64_t i = 0; i < inner; i++) {
        double m = -1e30, s = 0, dot = 0;
        for (int64_t k = 0; k < K; k++) m = std::max(m, (double)xv[(o * K + k) * inner + i]);
        for (int64_t k = 0; k < K; k++) s += std::exp(xv[(o * K + k) * inner + i] - m);
        for (int64_t k = 0; k < K; k++) {
          int64_t j = (o * K + k) * inner + i;
          ref[j] = (float)(std::exp(xv[j] - m) / s);
          dot += (double)ref[j] * gv[j];
        }
        for (int64_t k = 0; k < K; k++) {
          int64_t j = (o * K + k) * inner + i;
          dref[j] = (float)(ref[j] * (gv[j] - dot));
        }
      }
    close(readf(y), ref, 1e-6, 1e-5, "softmax forward case " + std::to_string(which));
    if (ok(CMO_OP_SOFTMAX_BACKWARD, {&y, &g}, {&dx}, cmo_axis_params{axis}))
      close(readf(dx), dref, 1e-6, 1e-4, "softmax backward case " + std::to_string(which));
  }
  g_test = "l2_normalize";
  for (int which = 0; which < 2; which++) {
    Dims d = which == 0 ? Dims{2, 4, 3} : Dims{4, 6};
    V xv = rnd((size_t)numel(d)), gv = rnd((size_t)numel(d));
    if (which == 0)
      for (int k = 0; k < 4; k++) xv[(size_t)(k * 3)] = 0.0f;  // a zero vector: norm below eps
    const double eps = 1e-6;
    Buf x = F(d, xv), g = F(d, gv), y, dx;
    cmo_l2_normalize_params p{1, eps};
    if (!ok(CMO_OP_L2_NORMALIZE_FORWARD, {&x}, {&y}, p)) continue;
    int64_t outer = d[0], K = d[1], inner = numel(d) / (outer * K);
    auto f = [&](const V& xx, V& out) {
      out.assign(xx.size(), 0);
      for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
          double s = 0;
          for (int64_t k = 0; k < K; k++) s += (double)xx[(o * K + k) * inner + i] * xx[(o * K + k) * inner + i];
          double n = std::max(std::sqrt(s), eps);
          for (int64_t k = 0; k < K; k++) out[(o * K + k) * inner + i] = (float)(xx[(o * K + k) * inner + i] / n);
        }
    };
    V ref;
    f(xv, ref);
    close(readf(y), ref, 1e-6, 1e-5, "l2 forward case " + std::to_string(which));
    if (ok(CMO_OP_L2_NORMALIZE_BACKWARD, {&x, &g}, {&dx}, p)) {
      // Finite differences of sum(y * g), in double through the reference.
      V num(xv.size());
      for (size_t j = 0; j < xv.size(); j++) {
        if (xv[j] == 0.0f) {
          num[j] = (float)(gv[j] / eps);
          continue;
        }
        V xp = xv, xm = xv, yp, ym;
        const float h = 1e-2f;
        xp[j] += h;
        xm[j] -= h;
        f(xp, yp);
        f(xm, ym);
        double s = 0;
        for (size_t i = 0; i < xv.size(); i++) s += (double)gv[i] * (yp[i] - ym[i]);
        num[j] = (float)(s / (2 * h));
      }
      close(readf(dx), num, 2e-3, 2e-2, "l2 backward vs finite differences case " + std::to_string(which));
    }
  }
}

// ------------------------------------------------------------------ pooling
void test_pool() {
  g_test = "adaptive_avg_pool3d";
  struct Case {
    Dims x;
    int64_t od, oh, ow;
    bool blocked;
  } cases[] = {{{1, 2, 5, 7, 6}, 2, 3, 4, false}, {{2, 16, 5, 4, 3}, 2, 2, 2, true}, {{1, 3, 4, 4, 4}, 1, 1, 1, false},
               {{1, 16, 3, 2, 2}, 4, 3, 2, true}};
  for (auto& c : cases) {
    V xv = rnd((size_t)numel(c.x));
    Buf x = F(c.x, xv, c.blocked ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN), y;
    cmo_pool_params p{{c.od, c.oh, c.ow}, {0, 0, 0}};
    std::string what = std::string(c.blocked ? "blocked " : "plain ") + std::to_string(c.x[2]) + "->" + std::to_string(c.od);
    if (!ok(CMO_OP_ADAPTIVE_AVG_POOL3D_FORWARD, {&x}, {&y}, p)) continue;
    const int64_t P = c.x[0] * c.x[1], D = c.x[2], H = c.x[3], W = c.x[4];
    V ref((size_t)(P * c.od * c.oh * c.ow));
    auto st = [](int64_t i, int64_t in, int64_t out) { return (i * in) / out; };
    auto en = [](int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; };
    for (int64_t pl = 0; pl < P; pl++)
      for (int64_t a = 0; a < c.od; a++)
        for (int64_t b = 0; b < c.oh; b++)
          for (int64_t e = 0; e < c.ow; e++) {
            double s = 0;
            int64_t n = 0;
            for (int64_t d = st(a, D, c.od); d < en(a, D, c.od); d++)
              for (int64_t h = st(b, H, c.oh); h < en(b, H, c.oh); h++)
                for (int64_t w = st(e, W, c.ow); w < en(e, W, c.ow); w++, n++) s += xv[((pl * D + d) * H + h) * W + w];
            ref[(size_t)(((pl * c.od + a) * c.oh + b) * c.ow + e)] = (float)(s / n);
          }
    close(readf(y), ref, 1e-6, 1e-5, "forward " + what);
    CHECK(describe(y).layout == (c.blocked ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN), "layout kept " + what);
    // Backward is the adjoint: <pool(x), g> == <x, pool_backward(g)>.
    V gv = rnd(ref.size());
    Buf g = F(dims_of(y), gv, c.blocked ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN), dx;
    cmo_pool_params pb{{c.od, c.oh, c.ow}, {D, H, W}};
    if (ok(CMO_OP_ADAPTIVE_AVG_POOL3D_BACKWARD, {&g}, {&dx}, pb)) {
      CHECK(dims_of(dx) == c.x, "backward shape " + what);
      V dxv = readf(dx);
      double lhs = 0, rhs = 0;
      for (size_t i = 0; i < ref.size(); i++) lhs += (double)ref[i] * gv[i];
      for (size_t i = 0; i < xv.size(); i++) rhs += (double)xv[i] * dxv[i];
      CHECK(std::fabs(lhs - rhs) < 1e-4 * (1 + std::fabs(lhs)), "adjoint identity " + what);
    }
  }
}

// ------------------------------------------------------------------ losses
void test_losses() {
  g_test = "softmax_cross_entropy";
  {
    const int64_t N = 2, K = 3, S = 20;
    V xv = rnd((size_t)(N * K * S), 3.0f);
    VI lv((size_t)(N * S));
    for (size_t i = 0; i < lv.size(); i++) lv[i] = (int32_t)(i * 7 % 3);
    lv[3] = -100;
    lv[11] = -100;
    Buf x = F({N, K, 4, 5}, xv), l = I({N, 1, 4, 5}, lv), loss, probs;
    cmo_cross_entropy_params p{-100};
    if (ok(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {&x, &l}, {&loss, &probs}, p)) {
      double tot = 0;
      int cnt = 0;
      V pref(xv.size()), dref(xv.size(), 0.0f);
      for (int64_t n = 0; n < N; n++)
        for (int64_t s = 0; s < S; s++) {
          double m = -1e30, z = 0;
          for (int64_t k = 0; k < K; k++) m = std::max(m, (double)xv[(n * K + k) * S + s]);
          for (int64_t k = 0; k < K; k++) z += std::exp(xv[(n * K + k) * S + s] - m);
          for (int64_t k = 0; k < K; k++) pref[(n * K + k) * S + s] = (float)(std::exp(xv[(n * K + k) * S + s] - m) / z);
          int32_t lab = lv[n * S + s];
          if (lab == -100) continue;
          tot += m + std::log(z) - xv[(n * K + lab) * S + s];
          cnt++;
        }
      close(readf(loss), {(float)(tot / cnt)}, 1e-6, 1e-5, "CE loss (mean over non-ignored)");
      close(readf(probs), pref, 1e-6, 1e-5, "CE probs");
      Buf dl = F({1}, {2.0f}), dx;
      if (ok(CMO_OP_SOFTMAX_CROSS_ENTROPY_BACKWARD, {&probs, &l, &dl}, {&dx}, p)) {
        for (int64_t n = 0; n < N; n++)
          for (int64_t s = 0; s < S; s++) {
            int32_t lab = lv[n * S + s];
            if (lab == -100) continue;
            for (int64_t k = 0; k < K; k++)
              dref[(n * K + k) * S + s] = (float)(2.0 * (pref[(n * K + k) * S + s] - (lab == k)) / cnt);
          }
        close(readf(dx), dref, 1e-6, 1e-5, "CE backward");
      }
    }
    // 2-D logits with [N] labels; all ignored -> 0
    Buf x2 = F({3, 4}, rnd(12)), l2 = I({3}, {-1, -1, -1}), lo2, pr2;
    if (ok(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {&x2, &l2}, {&lo2, &pr2}, cmo_cross_entropy_params{-1}))
      CHECK(readf(lo2)[0] == 0.0f, "all ignored -> loss 0");
    // invalid label
    VI bad = lv;
    bad[5] = 7;
    Buf lb = I({N, 4, 5}, bad), lo3, pr3;
    CHECK(run(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {&x, &lb}, {&lo3, &pr3}, p) == CMO_ERR_INVALID_ARGUMENT,
          "invalid label rejected");
    std::string msg = cmo_last_error();
    CHECK(has(msg, "label 7") && has(msg, "K = 3"), "message names value and K: " + msg);
    Buf lw = I({N, 5, 4}, lv), lo4, pr4;
    CHECK(run(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {&x, &lw}, {&lo4, &pr4}, p) == CMO_ERR_INVALID_ARGUMENT,
          "label shape mismatch rejected");
  }
  g_test = "dice_stats";
  {
    const int64_t N = 2, K = 3, S = 12;
    V pv = rnd((size_t)(N * K * S));
    for (auto& v : pv) v = std::fabs(v);
    VI lv((size_t)(N * S));
    for (size_t i = 0; i < lv.size(); i++) lv[i] = (int32_t)(i * 5 % 3);
    // Ignored positions (ignore_index -100) are in none of the sums and get no gradient.
    lv[2] = lv[7] = lv[S + 4] = -100;
    V soft = rnd(pv.size());
    for (auto& v : soft) v = std::fabs(v);
    Buf pr = F({N, K, 3, 4}, pv), lab = I({N, 3, 4}, lv), sf = F({N, K, 3, 4}, soft);
    const cmo_dice_params dp_params{-100};
    for (int mode = 0; mode < 2; mode++) {
      Buf st, dp;
      const Buf* tg = mode == 0 ? &lab : &sf;
      if (!ok(CMO_OP_DICE_STATS_FORWARD, {&pr, tg}, {&st}, dp_params)) continue;
      V ref((size_t)(3 * K), 0.0f);
      std::vector<double> acc((size_t)(3 * K), 0.0);
      auto skip = [&](int64_t n, int64_t s) { return mode == 0 && lv[n * S + s] == -100; };
      auto t = [&](int64_t n, int64_t k, int64_t s) {
        return mode == 0 ? (lv[n * S + s] == k ? 1.0 : 0.0) : (double)soft[(n * K + k) * S + s];
      };
      for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
          for (int64_t s = 0; s < S; s++) {
            if (skip(n, s)) continue;
            double p = pv[(n * K + k) * S + s];
            acc[k] += p * t(n, k, s);
            acc[K + k] += p;
            acc[2 * K + k] += t(n, k, s);
          }
      for (size_t i = 0; i < acc.size(); i++) ref[i] = (float)acc[i];
      close(readf(st), ref, 1e-5, 1e-5, mode == 0 ? "dice stats with labels" : "dice stats with soft targets");
      V dsv = rnd((size_t)(3 * K));
      Buf ds = F({3, K}, dsv);
      if (ok(CMO_OP_DICE_STATS_BACKWARD, {&pr, tg, &ds}, {&dp}, dp_params)) {
        V dref(pv.size());
        for (int64_t n = 0; n < N; n++)
          for (int64_t k = 0; k < K; k++)
            for (int64_t s = 0; s < S; s++)
              dref[(n * K + k) * S + s] = skip(n, s) ? 0.0f : (float)(dsv[k] * t(n, k, s) + dsv[K + k]);
        V got = readf(dp);
        close(got, dref, 1e-6, 1e-5, mode == 0 ? "dice backward labels" : "dice backward soft");
        if (mode == 0)
          for (int64_t k = 0; k < K; k++)
            CHECK(got[(size_t)(k * S + 2)] == 0.0f && got[(size_t)((K + k) * S + 4)] == 0.0f,
                  "dice backward exactly 0 at ignored positions");
      }
    }
    // A label outside 0..K-1 that is not ignore_index is rejected, naming the value.
    VI bad = lv;
    bad[5] = -1;
    Buf lb = I({N, 3, 4}, bad), st3;
    CHECK(run(CMO_OP_DICE_STATS_FORWARD, {&pr, &lb}, {&st3}, dp_params) == CMO_ERR_INVALID_ARGUMENT,
          "dice: label -1 rejected when ignore_index is -100");
    std::string msg = cmo_last_error();
    CHECK(has(msg, "label -1") && has(msg, "ignore_index -100"), "dice message names value and ignore_index: " + msg);
  }
}

// ------------------------------------------------------------------ optimisers
void test_optim() {
  g_test = "optimisers";
  const size_t n = 37;
  for (int nesterov = 0; nesterov < 2; nesterov++) {
    V w = rnd(n), wref(w.begin(), w.end());
    Buf pw = F({n}, w), pg, pm = F({(int64_t)n}, V(n, 0.0f));
    std::vector<double> buf(n), ww(wref.begin(), wref.end());
    bool first = true;
    const double lr = 0.1, mom = 0.9, wd = 1e-2;
    for (int step = 0; step < 3; step++) {
      V g = rnd(n);
      pg = F({(int64_t)n}, g);
      ok(CMO_OP_SGD_UPDATE, {&pw, &pg, &pm}, {}, cmo_sgd_params{lr, mom, wd, nesterov});
      // torch.optim.SGD reference (buffer = clone(grad) on the first step)
      for (size_t i = 0; i < n; i++) {
        double gi = g[i] + wd * ww[i];
        buf[i] = first ? gi : mom * buf[i] + gi;
        double stp = nesterov ? gi + mom * buf[i] : buf[i];
        ww[i] -= lr * stp;
      }
      first = false;
    }
    V wr(ww.begin(), ww.end());
    close(readf(pw), wr, 1e-6, 1e-5, nesterov ? "SGD nesterov 3 steps" : "SGD momentum 3 steps");
  }
  {
    V w = rnd(n);
    Dims d = {1, 16, 1, 1, 2};  // 32 elements, blocked param with plain grad and state
    V w32 = rnd(32);
    Buf pw = F(d, w32, CMO_LAYOUT_BLOCKED16), m = F(d, V(32, 0.0f)), v = F(d, V(32, 0.0f));
    std::vector<double> ww(w32.begin(), w32.end()), mm(32, 0), vv(32, 0);
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.05;
    for (int step = 1; step <= 3; step++) {
      V g = rnd(32);
      Buf pg = F(d, g);
      ok(CMO_OP_ADAMW_UPDATE, {&pw, &pg, &m, &v}, {}, cmo_adamw_params{lr, b1, b2, eps, wd, step});
      for (size_t i = 0; i < 32; i++) {
        ww[i] *= 1 - lr * wd;
        mm[i] = b1 * mm[i] + (1 - b1) * g[i];
        vv[i] = b2 * vv[i] + (1 - b2) * g[i] * g[i];
        double mh = mm[i] / (1 - std::pow(b1, step)), vh = vv[i] / (1 - std::pow(b2, step));
        ww[i] -= lr * mh / (std::sqrt(vh) + eps);
      }
    }
    V wr(ww.begin(), ww.end()), mr(mm.begin(), mm.end());
    close(readf(pw), wr, 1e-6, 1e-5, "AdamW 3 steps (blocked param)");
    close(readf(m), mr, 1e-6, 1e-5, "AdamW first moment");
    CHECK(describe(pw).layout == CMO_LAYOUT_BLOCKED16, "param keeps its layout");
    Buf bad = F({n}, w), pg = F({n}, w);
    Buf m2 = F({n}, V(n, 0.0f)), v2 = F({n}, V(n, 0.0f));
    CHECK(run(CMO_OP_ADAMW_UPDATE, {&bad, &pg, &m2, &v2}, {}, cmo_adamw_params{lr, b1, b2, eps, wd, 0}) ==
              CMO_ERR_INVALID_ARGUMENT,
          "step 0 rejected");
  }
  {
    V e = rnd(n), p = rnd(n);
    Buf pe = F({(int64_t)n}, e), pp = F({(int64_t)n}, p);
    ok(CMO_OP_EMA_UPDATE, {&pe, &pp}, {}, cmo_ema_params{0.99});
    V ref(n);
    for (size_t i = 0; i < n; i++) ref[i] = (float)(0.99 * e[i] + 0.01 * p[i]);
    close(readf(pe), ref, 1e-6, 1e-6, "EMA update");
    Buf wrong = F({(int64_t)n + 1}, rnd(n + 1));
    CHECK(run(CMO_OP_EMA_UPDATE, {&pe, &wrong}, {}, cmo_ema_params{0.99}) == CMO_ERR_INVALID_ARGUMENT,
          "shape mismatch rejected");
  }
}

// ------------------------------------------------------------------ precision at volume sizes
// CE loss, Dice statistics and a spatial sum over a [1,4,64,64,64] volume against double references
// (the project needs 1e-5 relative agreement with PyTorch at 96^3), and bit-identical results for 1
// and 2 threads.
void test_volume_precision() {
  g_test = "volume precision";
  const int64_t K = 4, S = 64 * 64 * 64;
  V xv((size_t)(K * S));
  for (auto& v : xv) v = frand() * 4.0f;
  VI lv((size_t)S);
  for (int64_t i = 0; i < S; i++) lv[(size_t)i] = (int32_t)((i * 2654435761u >> 7) % 4);
  Buf x = F({1, K, 64, 64, 64}, xv), l = I({1, 64, 64, 64}, lv);
  std::vector<float> loss_bits, stat_bits, sum_bits;
  for (int threads : {1, 2}) {
    cmo_backend_set_threads(g_be, threads);
    Buf loss, probs, st, sm;
    if (!ok(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {&x, &l}, {&loss, &probs}, cmo_cross_entropy_params{-100})) return;
    if (!ok(CMO_OP_DICE_STATS_FORWARD, {&probs, &l}, {&st}, cmo_dice_params{-100})) return;
    if (!ok(CMO_OP_REDUCE, {&probs}, {&sm}, cmo_reduce_params{CMO_REDUCE_SUM, 0x1d})) return;
    V lossv = readf(loss), stv = readf(st), smv = readf(sm);
    if (threads == 1) {
      V pv = readf(probs);
      double tot = 0;
      std::vector<double> acc((size_t)(3 * K), 0.0);
      for (int64_t s = 0; s < S; s++) {
        double m = -1e30, z = 0;
        for (int64_t k = 0; k < K; k++) m = std::max(m, (double)xv[(size_t)(k * S + s)]);
        for (int64_t k = 0; k < K; k++) z += std::exp((double)xv[(size_t)(k * S + s)] - m);
        tot += m + std::log(z) - xv[(size_t)(lv[(size_t)s] * S + s)];
        for (int64_t k = 0; k < K; k++) {
          double p = std::exp((double)xv[(size_t)(k * S + s)] - m) / z;
          acc[(size_t)k] += lv[(size_t)s] == k ? p : 0.0;
          acc[(size_t)(K + k)] += p;
          acc[(size_t)(2 * K + k)] += lv[(size_t)s] == k;
        }
      }
      close(lossv, {(float)(tot / S)}, 0, 1e-6, "CE loss over 64^3 within 1e-6 relative");
      V ref(acc.begin(), acc.end());
      close(stv, ref, 0, 2e-6, "dice stats over 64^3 within 2e-6 relative");
      V sref(ref.begin() + K, ref.begin() + 2 * K);
      close(smv, sref, 0, 2e-6, "sum over {0,2,3,4} of probs within 2e-6 relative");
      (void)pv;
      loss_bits = lossv;
      stat_bits = stv;
      sum_bits = smv;
    } else {
      CHECK(lossv == loss_bits, "CE loss bit-identical for 1 and 2 threads");
      CHECK(stv == stat_bits, "dice stats bit-identical for 1 and 2 threads");
      CHECK(smv == sum_bits, "sum bit-identical for 1 and 2 threads");
    }
  }
  // Matmul with a long reduction (K-split): identical for 1 and 2 threads.
  Buf a = F({4, 100000}, rnd(400000)), b = F({8, 100000}, rnd(800000)), y1, y2;
  cmo_backend_set_threads(g_be, 1);
  ok(CMO_OP_MATMUL, {&a, &b}, {&y1}, cmo_matmul_params{0, 1});
  cmo_backend_set_threads(g_be, 2);
  ok(CMO_OP_MATMUL, {&a, &b}, {&y2}, cmo_matmul_params{0, 1});
  CHECK(readf(y1) == readf(y2), "K-split matmul bit-identical for 1 and 2 threads");
}

void test_supported() {
  g_test = "supports_op";
  for (int op : {CMO_OP_UNARY_FORWARD, CMO_OP_UNARY_BACKWARD, CMO_OP_BINARY, CMO_OP_AFFINE_SCALAR, CMO_OP_CONCAT,
                 CMO_OP_SLICE, CMO_OP_MATMUL, CMO_OP_SOFTMAX_FORWARD, CMO_OP_SOFTMAX_BACKWARD, CMO_OP_REDUCE,
                 CMO_OP_EXPAND, CMO_OP_ADAPTIVE_AVG_POOL3D_FORWARD, CMO_OP_ADAPTIVE_AVG_POOL3D_BACKWARD,
                 CMO_OP_L2_NORMALIZE_FORWARD, CMO_OP_L2_NORMALIZE_BACKWARD, CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD,
                 CMO_OP_SOFTMAX_CROSS_ENTROPY_BACKWARD, CMO_OP_DICE_STATS_FORWARD, CMO_OP_DICE_STATS_BACKWARD,
                 CMO_OP_SGD_UPDATE, CMO_OP_ADAMW_UPDATE, CMO_OP_EMA_UPDATE, CMO_OP_ARGMAX, CMO_OP_COPY, CMO_OP_FILL,
                 CMO_OP_REDUCE_MAX_BACKWARD, CMO_OP_RESHAPE, CMO_OP_PERMUTE})
    CHECK(cmo_backend_supports_op(g_be, op) == 1, "op " + std::to_string(op) + " supported");
}

}  // namespace

int main() {
  if (cmo_backend_create(0, &g_be) != CMO_OK) {
    std::printf("cannot create the CPU backend: %s\n", cmo_last_error());
    return 1;
  }
  cmo_backend_set_threads(g_be, 2);
  test_supported();
  test_binary();
  test_unary();
  test_shape();
  test_matmul();
  test_reduce();
  test_softmax_l2();
  test_pool();
  test_losses();
  test_optim();
  test_volume_precision();
  cmo_memory_stats ms{};
  cmo_backend_memory_stats(g_be, &ms);
  g_test = "memory";
  CHECK(ms.live_buffers == 0, "no live buffers at the end (" + std::to_string(ms.live_buffers) + ")");
  cmo_backend_destroy(g_be);
  std::printf("test_ops: %d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
