// test_cuda_parity.cpp — runs every op of CMO_OP_LIST on the same random inputs through both
// build/libcomodal_cpu.so (the reference) and build/libcomodal_cuda.so, and compares every output
// with |cuda - cpu| <= atol + rtol * |cpu|. Both libraries are dlopen'ed (RTLD_LOCAL) into one
// process, so they share nothing but this driver.
//
// Also checks: += accumulation into given gradient slots, error codes agreeing on bad input,
// deterministic mode giving bit-identical results, no leaked buffers, and the caching pool not
// growing in steady state. With --bench it times conv3d forward + backward (data + weights) at
// batch 2 on 128^3-scale shapes and prints ms and GFLOP/s.
//
// Build:  g++ -std=c++17 -O2 -I native/include native/cuda/tests/test_cuda_parity.cpp -ldl -o build/test_cuda_parity
// Run:    build/test_cuda_parity [--cpu build/libcomodal_cpu.so] [--cuda build/libcomodal_cuda.so] [--bench]
//         (with only --cuda and no CPU library, the CUDA library is probed and the ops run alone)
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "comodal.h"

namespace {

// ------------------------------------------------------------------ library binding
struct Lib {
  std::string name;
  void* h = nullptr;
  int32_t (*library_device)(void);
  const char* (*version_string)(void);
  const char* (*last_error)(void);
  cmo_status (*backend_create)(int32_t, cmo_backend**);
  cmo_status (*backend_destroy)(cmo_backend*);
  cmo_status (*set_deterministic)(cmo_backend*, int32_t);
  int32_t (*supports_op)(cmo_backend*, int32_t);
  cmo_status (*memory_stats)(cmo_backend*, cmo_memory_stats*);
  cmo_status (*synchronize)(cmo_backend*);
  cmo_status (*buffer_create)(cmo_backend*, const cmo_tensor_desc*, cmo_buffer**);
  cmo_status (*buffer_release)(cmo_buffer*);
  cmo_status (*buffer_describe)(const cmo_buffer*, cmo_tensor_desc*);
  cmo_status (*buffer_write)(cmo_buffer*, const void*, int64_t);
  cmo_status (*buffer_read)(const cmo_buffer*, void*, int64_t);
  cmo_status (*op_execute)(cmo_backend*, int32_t, cmo_buffer* const*, int32_t, cmo_buffer**, int32_t, const void*,
                           int64_t);
  cmo_backend* be = nullptr;
};

template <typename F>
void sym(Lib& l, F& f, const char* s) {
  f = reinterpret_cast<F>(dlsym(l.h, s));
  if (!f) {
    std::fprintf(stderr, "%s lacks symbol %s\n", l.name.c_str(), s);
    std::exit(2);
  }
}

bool load(Lib& l, const std::string& path) {
  l.name = path;
  l.h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!l.h) {
    std::printf("cannot load %s: %s\n", path.c_str(), dlerror());
    return false;
  }
  sym(l, l.library_device, "cmo_library_device");
  sym(l, l.version_string, "cmo_version_string");
  sym(l, l.last_error, "cmo_last_error");
  sym(l, l.backend_create, "cmo_backend_create");
  sym(l, l.backend_destroy, "cmo_backend_destroy");
  sym(l, l.set_deterministic, "cmo_backend_set_deterministic");
  sym(l, l.supports_op, "cmo_backend_supports_op");
  sym(l, l.memory_stats, "cmo_backend_memory_stats");
  sym(l, l.synchronize, "cmo_backend_synchronize");
  sym(l, l.buffer_create, "cmo_buffer_create");
  sym(l, l.buffer_release, "cmo_buffer_release");
  sym(l, l.buffer_describe, "cmo_buffer_describe");
  sym(l, l.buffer_write, "cmo_buffer_write");
  sym(l, l.buffer_read, "cmo_buffer_read");
  sym(l, l.op_execute, "cmo_op_execute");
  return true;
}

// ------------------------------------------------------------------ host tensors
using Dims = std::vector<int64_t>;

struct HT {  // host tensor
  Dims dims;
  cmo_dtype dt = CMO_DTYPE_F32;
  std::vector<float> f;
  std::vector<int32_t> i;
  std::vector<uint8_t> u;
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
  const void* data() const {
    return dt == CMO_DTYPE_F32 ? (const void*)f.data() : dt == CMO_DTYPE_I32 ? (const void*)i.data() : (const void*)u.data();
  }
  void* mdata() { return dt == CMO_DTYPE_F32 ? (void*)f.data() : dt == CMO_DTYPE_I32 ? (void*)i.data() : (void*)u.data(); }
  int64_t bytes() const { return numel() * (dt == CMO_DTYPE_U8 ? 1 : 4); }
  void alloc() {
    if (dt == CMO_DTYPE_F32) f.assign((size_t)numel(), 0.f);
    if (dt == CMO_DTYPE_I32) i.assign((size_t)numel(), 0);
    if (dt == CMO_DTYPE_U8) u.assign((size_t)numel(), 0);
  }
};

uint64_t g_rng = 0x2545f4914f6cdd1dull;
double urand() {
  g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(g_rng >> 11) / (double)(1ull << 53);
}
HT randf(Dims d, float lo = -1.f, float hi = 1.f) {
  HT t;
  t.dims = std::move(d);
  t.alloc();
  for (auto& v : t.f) v = (float)(lo + (hi - lo) * urand());
  return t;
}
HT randi(Dims d, int lo, int hi) {  // [lo, hi)
  HT t;
  t.dims = std::move(d);
  t.dt = CMO_DTYPE_I32;
  t.alloc();
  for (auto& v : t.i) v = lo + (int)(urand() * (hi - lo));
  return t;
}
HT quantized(Dims d, int levels) {  // values with many ties
  HT t = randf(std::move(d));
  for (auto& v : t.f) v = std::round(v * levels) / levels;
  return t;
}

// ------------------------------------------------------------------ running one case on one library
struct Case {
  std::string name;
  int op = 0;
  std::vector<HT> in;
  std::vector<bool> in_null;  // per input: pass NULL
  int n_out = 1;
  std::vector<HT> out_init;   // per output: given (pre-filled) slot when dims non-empty or dt set
  std::vector<bool> out_given;
  std::vector<char> params;
  double atol = 1e-5, rtol = 1e-4;
  bool inplace = false;        // optimisers: compare the inputs after the op
  int expect_status = CMO_OK;  // for error cases: both libraries must return this
};

template <typename P>
std::vector<char> pbytes(const P& p) {
  std::vector<char> v(sizeof(P));
  std::memcpy(v.data(), &p, sizeof(P));
  return v;
}

struct Result {
  cmo_status st = CMO_OK;
  std::string err;
  std::vector<HT> outs;
};

cmo_buffer* upload(Lib& L, const HT& t) {
  cmo_tensor_desc d{};
  d.ndim = (int64_t)t.dims.size();
  for (size_t k = 0; k < t.dims.size(); k++) d.dims[k] = t.dims[k];
  d.dtype = t.dt;
  d.layout = CMO_LAYOUT_PLAIN;  // the CPU backend wants plain weights; activations work either way
  cmo_buffer* b = nullptr;
  if (L.buffer_create(L.be, &d, &b) != CMO_OK) {
    std::printf("%s: buffer_create failed: %s\n", L.name.c_str(), L.last_error());
    std::exit(3);
  }
  if (L.buffer_write(b, t.data(), t.bytes()) != CMO_OK) {
    std::printf("%s: buffer_write failed: %s\n", L.name.c_str(), L.last_error());
    std::exit(3);
  }
  return b;
}

HT download(Lib& L, cmo_buffer* b) {
  cmo_tensor_desc d{};
  L.buffer_describe(b, &d);
  HT t;
  t.dims.assign(d.dims, d.dims + d.ndim);
  t.dt = (cmo_dtype)d.dtype;
  t.alloc();
  if (L.buffer_read(b, t.mdata(), t.bytes()) != CMO_OK) {
    std::printf("%s: buffer_read failed: %s\n", L.name.c_str(), L.last_error());
    std::exit(3);
  }
  return t;
}

Result run_case(Lib& L, const Case& c) {
  Result r;
  std::vector<cmo_buffer*> ins;
  for (size_t k = 0; k < c.in.size(); k++)
    ins.push_back(k < c.in_null.size() && c.in_null[k] ? nullptr : upload(L, c.in[k]));
  std::vector<cmo_buffer*> outs((size_t)c.n_out, nullptr);
  for (int k = 0; k < c.n_out; k++)
    if (k < (int)c.out_given.size() && c.out_given[k]) outs[(size_t)k] = upload(L, c.out_init[(size_t)k]);
  r.st = L.op_execute(L.be, c.op, ins.data(), (int32_t)ins.size(), outs.data(), c.n_out, c.params.data(),
                      (int64_t)c.params.size());
  if (r.st != CMO_OK) r.err = L.last_error();
  if (r.st == CMO_OK) {
    if (c.inplace) {
      for (auto* b : ins)
        if (b) r.outs.push_back(download(L, b));
    }
    for (auto* b : outs)
      if (b) r.outs.push_back(download(L, b));
  }
  for (auto* b : ins)
    if (b) L.buffer_release(b);
  for (auto* b : outs)
    if (b) L.buffer_release(b);
  return r;
}

// ------------------------------------------------------------------ comparison
int g_pass = 0, g_fail = 0;
std::vector<std::string> g_failed;

std::string dims_str(const Dims& d) {
  std::string s = "[";
  for (size_t k = 0; k < d.size(); k++) s += (k ? "," : "") + std::to_string(d[k]);
  return s + "]";
}

bool compare(const Case& c, const Result& ref, const Result& got, std::string* why, double* worst) {
  *worst = 0;
  if (ref.st != got.st) {
    *why = "status cpu " + std::to_string(ref.st) + " (" + ref.err + ") vs cuda " + std::to_string(got.st) + " (" + got.err + ")";
    return false;
  }
  if (ref.st != c.expect_status) {
    *why = "status " + std::to_string(ref.st) + " expected " + std::to_string(c.expect_status) + ": " + ref.err;
    return false;
  }
  if (ref.st != CMO_OK) return true;
  if (ref.outs.size() != got.outs.size()) {
    *why = "output count differs";
    return false;
  }
  for (size_t o = 0; o < ref.outs.size(); o++) {
    const HT &a = ref.outs[o], &b = got.outs[o];
    if (a.dims != b.dims || a.dt != b.dt) {
      *why = "output " + std::to_string(o) + " shape cpu " + dims_str(a.dims) + " vs cuda " + dims_str(b.dims);
      return false;
    }
    for (int64_t i = 0; i < a.numel(); i++) {
      if (a.dt == CMO_DTYPE_F32) {
        float x = a.f[(size_t)i], y = b.f[(size_t)i];
        if (std::isnan(x) && std::isnan(y)) continue;
        double err = std::fabs((double)x - (double)y);
        double tol = c.atol + c.rtol * std::fabs((double)x);
        if (err / tol > *worst) *worst = err / tol;
        if (!(err <= tol)) {
          char buf[200];
          std::snprintf(buf, sizeof buf, "output %zu element %lld: cpu %.8g cuda %.8g (|diff| %.3g > tol %.3g)", o,
                        (long long)i, x, y, err, tol);
          *why = buf;
          return false;
        }
      } else if (a.dt == CMO_DTYPE_I32) {
        if (a.i[(size_t)i] != b.i[(size_t)i]) {
          *why = "output " + std::to_string(o) + " element " + std::to_string(i) + ": cpu " + std::to_string(a.i[(size_t)i]) +
                 " cuda " + std::to_string(b.i[(size_t)i]);
          return false;
        }
      } else if (a.u[(size_t)i] != b.u[(size_t)i]) {
        *why = "output " + std::to_string(o) + " element " + std::to_string(i) + " differs";
        return false;
      }
    }
  }
  return true;
}

void check(bool ok, const std::string& name, const std::string& why) {
  if (ok) {
    g_pass++;
  } else {
    g_fail++;
    g_failed.push_back(name);
    std::printf("FAIL %-52s %s\n", name.c_str(), why.c_str());
  }
}

// ------------------------------------------------------------------ the cases
cmo_conv3d_params conv_p(int s, int pad, int dil, int bias, Dims in) {
  cmo_conv3d_params p{};
  for (int i = 0; i < 3; i++) {
    p.stride[i] = s;
    p.padding[i] = pad;
    p.dilation[i] = dil;
    p.in_dims[i] = in.empty() ? 0 : in[(size_t)i];
  }
  p.has_bias = bias;
  return p;
}

Case mk(const std::string& name, int op, std::vector<HT> in, int n_out, std::vector<char> params, double atol = 1e-5,
        double rtol = 1e-4) {
  Case c;
  c.name = name;
  c.op = op;
  c.in = std::move(in);
  c.n_out = n_out;
  c.params = std::move(params);
  c.atol = atol;
  c.rtol = rtol;
  return c;
}

Case with_given(Case c, std::vector<HT> init) {  // pre-filled output slots (accumulate)
  c.out_init = std::move(init);
  c.out_given.assign(c.out_init.size(), true);
  return c;
}

int64_t conv_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }

std::vector<Case> build_cases() {
  std::vector<Case> cs;
  const double ca = 2e-4, cr = 2e-4;  // conv: different summation orders
  // ---- convolution
  struct CC {
    const char* tag;
    Dims x;
    Dims w;
    int s, p, d, bias;
  };
  for (const CC& t : {CC{"3x3x3 s1 p1 bias", {2, 8, 12, 10, 9}, {16, 8, 3, 3, 3}, 1, 1, 1, 1},
                      CC{"3x3x3 s2 p1", {2, 4, 11, 10, 8}, {8, 4, 3, 3, 3}, 2, 1, 1, 0},
                      CC{"3x3x3 dil2 p2 bias", {1, 3, 10, 9, 9}, {5, 3, 3, 3, 3}, 1, 2, 2, 1},
                      CC{"1x1x1 bias", {2, 16, 6, 5, 4}, {3, 16, 1, 1, 1}, 1, 0, 1, 1},
                      CC{"2x2x2 s2", {2, 8, 8, 8, 6}, {16, 8, 2, 2, 2}, 2, 0, 1, 0},
                      CC{"1x3x3 C3 K5 bias", {2, 3, 9, 17, 10}, {5, 3, 1, 3, 3}, 1, 1, 1, 1},
                      CC{"3x3x3 C1 K16", {1, 1, 20, 19, 18}, {16, 1, 3, 3, 3}, 1, 1, 1, 0},
                      CC{"3x3x3 C16 K16 many tiles", {2, 16, 34, 33, 40}, {16, 16, 3, 3, 3}, 1, 1, 1, 1},
                      CC{"3x3x3 C40 K24", {1, 40, 12, 11, 13}, {24, 40, 3, 3, 3}, 1, 1, 1, 0}}) {
    Dims o = {t.x[0], t.w[0]};
    for (int i = 0; i < 3; i++) o.push_back(conv_out(t.x[2 + (size_t)i], t.w[2 + (size_t)i], t.s, t.p, t.d));
    Dims sp(t.x.begin() + 2, t.x.end());
    auto p = pbytes(conv_p(t.s, t.p, t.d, t.bias, sp));
    HT x = randf(t.x), w = randf(t.w, -0.3f, 0.3f), b = randf({t.w[0]}), dy = randf(o);
    Case f = mk(std::string("conv fwd ") + t.tag, CMO_OP_CONV3D_FORWARD, {x, w, b}, 1, p, ca, cr);
    if (!t.bias) f.in_null = {false, false, true};
    cs.push_back(f);
    cs.push_back(mk(std::string("conv bwd data ") + t.tag, CMO_OP_CONV3D_BACKWARD_DATA, {dy, w}, 1, p, ca, cr));
    // dw slot given as zeros: with stride 2 the kernel size cannot be inferred from x and dy alone
    HT dwz = randf(t.w);
    std::fill(dwz.f.begin(), dwz.f.end(), 0.f);
    Case bw = mk(std::string("conv bwd weights ") + t.tag, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, dy}, 2, p, 1e-3, cr);
    bw.out_init = {dwz, HT{}};
    bw.out_given = {true, false};
    cs.push_back(bw);
    if (t.s == 1) cs.push_back(mk(std::string("conv bwd weights (dw inferred) ") + t.tag, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, dy}, 2, p, 1e-3, cr));
    HT dw0 = randf(t.w), db0 = randf({t.w[0]});
    Case acc = mk(std::string("conv bwd weights += ") + t.tag, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, dy}, 2,
                  pbytes(conv_p(t.s, t.p, t.d, 1, sp)), 1e-3, cr);
    cs.push_back(with_given(acc, {dw0, db0}));
  }
  struct DC {
    const char* tag;
    Dims x;
    Dims w;  // [Ci,Co,k]
    int s, p, bias;
  };
  for (const DC& t : {DC{"2x2x2 s2 bias", {2, 16, 5, 4, 6}, {16, 8, 2, 2, 2}, 2, 0, 1},
                      DC{"3x3x3 s1 p1", {2, 4, 6, 6, 5}, {4, 6, 3, 3, 3}, 1, 1, 0}}) {
    Dims o = {t.x[0], t.w[1]};
    for (int i = 0; i < 3; i++) o.push_back((t.x[2 + (size_t)i] - 1) * t.s - 2 * t.p + t.w[2 + (size_t)i]);
    Dims sp(t.x.begin() + 2, t.x.end());
    auto p = pbytes(conv_p(t.s, t.p, 1, t.bias, sp));
    HT x = randf(t.x), w = randf(t.w, -0.3f, 0.3f), b = randf({t.w[1]}), dy = randf(o);
    Case f = mk(std::string("deconv fwd ") + t.tag, CMO_OP_CONV_TRANSPOSE3D_FORWARD, {x, w, b}, 1, p, ca, cr);
    if (!t.bias) f.in_null = {false, false, true};
    cs.push_back(f);
    cs.push_back(mk(std::string("deconv bwd data ") + t.tag, CMO_OP_CONV_TRANSPOSE3D_BACKWARD_DATA, {dy, w}, 1, p, ca, cr));
    cs.push_back(mk(std::string("deconv bwd weights ") + t.tag, CMO_OP_CONV_TRANSPOSE3D_BACKWARD_WEIGHTS, {x, dy}, 2, p, 1e-3, cr));
    Case acc = mk(std::string("deconv bwd weights += ") + t.tag, CMO_OP_CONV_TRANSPOSE3D_BACKWARD_WEIGHTS, {x, dy}, 2,
                  pbytes(conv_p(t.s, t.p, 1, 1, sp)), 1e-3, cr);
    cs.push_back(with_given(acc, {randf(t.w), randf({t.w[1]})}));
  }
  // ---- group norm
  for (int groups : {4, 16, 1}) {
    Dims xd = {2, 16, 10, 9, 8};
    cmo_group_norm_params p{groups, 1e-5, CMO_NORM_ACT_NONE, 0.0};
    HT x = randf(xd, -2.f, 3.f), g = randf({16}, 0.5f, 1.5f), b = randf({16}), dy = randf(xd);
    cs.push_back(mk("group norm fwd G=" + std::to_string(groups), CMO_OP_GROUP_NORM_FORWARD, {x, g, b}, 3, pbytes(p), 1e-5, 1e-4));
    // mean/rstd from a CPU forward are needed as inputs: recompute them host-side in double
    int64_t N = 2, C = 16, S = 10 * 9 * 8, Cg = C / groups;
    HT mean, rstd;
    mean.dims = rstd.dims = {N, groups};
    mean.alloc();
    rstd.alloc();
    for (int64_t n = 0; n < N; n++)
      for (int64_t gi = 0; gi < groups; gi++) {
        double s = 0, s2 = 0;
        int64_t L = Cg * S;
        const float* base = x.f.data() + (n * C + gi * Cg) * S;
        for (int64_t i = 0; i < L; i++) s += base[i];
        double m = s / L;
        for (int64_t i = 0; i < L; i++) s2 += (base[i] - m) * (base[i] - m);
        mean.f[(size_t)(n * groups + gi)] = (float)m;
        rstd.f[(size_t)(n * groups + gi)] = (float)(1.0 / std::sqrt(s2 / L + 1e-5));
      }
    cs.push_back(mk("group norm bwd G=" + std::to_string(groups), CMO_OP_GROUP_NORM_BACKWARD,
                    {x, dy, g, mean, rstd, b}, 3, pbytes(p), 1e-4, 1e-3));
    cs.back().in_null = {false, false, false, false, false, true};
    cs.push_back(with_given(mk("group norm bwd += G=" + std::to_string(groups), CMO_OP_GROUP_NORM_BACKWARD,
                               {x, dy, g, mean, rstd, b}, 3, pbytes(p), 1e-4, 1e-3),
                            {HT{}, randf({16}), randf({16})}));
    cs.back().in_null = {false, false, false, false, false, true};
    cs.back().out_given = {false, true, true};
    // Fused activations: forward, and backward recomputing the pre-activation from x.
    for (int act : {(int)CMO_NORM_ACT_RELU, (int)CMO_NORM_ACT_LEAKY_RELU}) {
      cmo_group_norm_params pa{groups, 1e-5, act, act == CMO_NORM_ACT_LEAKY_RELU ? 0.01 : 0.0};
      std::string tag = std::string(act == CMO_NORM_ACT_RELU ? " relu" : " leaky") + " G=" + std::to_string(groups);
      cs.push_back(mk("group norm fwd" + tag, CMO_OP_GROUP_NORM_FORWARD, {x, g, b}, 3, pbytes(pa), 1e-5, 1e-4));
      cs.push_back(with_given(mk("group norm bwd +=" + tag, CMO_OP_GROUP_NORM_BACKWARD, {x, dy, g, mean, rstd, b}, 3,
                                 pbytes(pa), 1e-4, 1e-3),
                              {HT{}, randf({16}), randf({16})}));
      cs.back().out_given = {false, true, true};
    }
  }
  // ---- unary
  const char* un[] = {"relu", "leaky", "sigmoid", "gelu", "exp", "log", "tanh", "sqrt", "abs", "neg"};
  for (int k = 0; k <= CMO_UNARY_NEG; k++) {
    bool pos = k == CMO_UNARY_LOG || k == CMO_UNARY_SQRT;
    Dims d = {3, 7, 11, 13};
    HT x = pos ? randf(d, 0.05f, 3.f) : randf(d, -3.f, 3.f), dy = randf(d);
    cmo_unary_params p{k, 0.01};
    cs.push_back(mk(std::string("unary fwd ") + un[k], CMO_OP_UNARY_FORWARD, {x}, 1, pbytes(p), 1e-6, 2e-6));
    cs.push_back(mk(std::string("unary bwd ") + un[k], CMO_OP_UNARY_BACKWARD, {x, dy}, 1, pbytes(p), 1e-6, 2e-6));
  }
  // ---- binary
  const char* bn[] = {"add", "sub", "mul", "div", "max", "eq"};
  struct BS {
    Dims a, b;
  };
  for (int k = 0; k <= CMO_BINARY_EQUAL; k++)
    for (const BS& s : {BS{{2, 16, 5, 4, 3}, {2, 16, 5, 4, 3}}, BS{{2, 16, 5, 4, 3}, {1, 16, 1, 1, 1}},
                        BS{{4, 1, 6}, {5, 1}}, BS{{3}, {2, 3, 1, 1}}, BS{{2, 3, 4}, {1}}}) {
      HT a = quantized(s.a, 4), b = quantized(s.b, 4);
      if (k == CMO_BINARY_DIV)
        for (auto& v : b.f) v = v >= 0 ? v + 0.5f : v - 0.5f;
      cmo_binary_params p{k};
      cs.push_back(mk(std::string("binary ") + bn[k] + " " + dims_str(s.a) + "x" + dims_str(s.b), CMO_OP_BINARY, {a, b}, 1,
                      pbytes(p), 1e-6, 1e-6));
    }
  for (int k : {CMO_BINARY_ADD, CMO_BINARY_MUL, CMO_BINARY_EQUAL, CMO_BINARY_MAXIMUM}) {
    cmo_binary_params p{k};
    cs.push_back(mk(std::string("binary i32 ") + bn[k], CMO_OP_BINARY, {randi({2, 3, 4}, -3, 4), randi({3, 1}, -3, 4)}, 1, pbytes(p)));
  }
  cs.push_back(mk("affine scalar", CMO_OP_AFFINE_SCALAR, {randf({5, 6, 7})}, 1, pbytes(cmo_affine_scalar_params{-1.5, 0.25}), 1e-6, 1e-6));
  // ---- shape ops
  cs.push_back(mk("concat axis 1", CMO_OP_CONCAT, {randf({2, 3, 4, 5}), randf({2, 5, 4, 5}), randf({2, 1, 4, 5})}, 1,
                  pbytes(cmo_axis_params{1}), 0, 0));
  cs.push_back(mk("concat axis -1 i32", CMO_OP_CONCAT, {randi({3, 2}, 0, 9), randi({3, 4}, 0, 9)}, 1, pbytes(cmo_axis_params{-1}), 0, 0));
  cs.push_back(mk("slice axis 2", CMO_OP_SLICE, {randf({2, 3, 10, 4})}, 1, pbytes(cmo_slice_params{2, 3, 5}), 0, 0));
  cs.push_back(mk("slice axis 0", CMO_OP_SLICE, {randf({6, 3})}, 1, pbytes(cmo_slice_params{0, 2, 3}), 0, 0));
  {
    cmo_shape_params sp{};
    sp.ndim = 5;
    Dims to = {2, 16, 4, 5, 6};
    for (int i = 0; i < 5; i++) sp.dims[i] = to[(size_t)i];
    cs.push_back(mk("expand [16,1,1,1]", CMO_OP_EXPAND, {randf({16, 1, 1, 1})}, 1, pbytes(sp), 0, 0));
    cs.push_back(mk("expand [2,1,4,1,6]", CMO_OP_EXPAND, {randf({2, 1, 4, 1, 6})}, 1, pbytes(sp), 0, 0));
    cmo_shape_params rp{};
    rp.ndim = 2;
    rp.dims[0] = 32;
    rp.dims[1] = 120;
    cs.push_back(mk("reshape", CMO_OP_RESHAPE, {randf({2, 16, 4, 5, 6})}, 1, pbytes(rp), 0, 0));
  }
  {
    // PERMUTE: the ViT's transposes (tokens <-> channels, window partition) and a size-1 axis.
    auto pp = [](std::initializer_list<int64_t> order) {
      cmo_permute_params p{};
      p.ndim = (int64_t)order.size();
      int64_t i = 0;
      for (int64_t o : order) p.order[i++] = o;
      return pbytes(p);
    };
    cs.push_back(mk("permute [B,C,N] -> [B,N,C]", CMO_OP_PERMUTE, {randf({2, 48, 64})}, 1, pp({0, 2, 1}), 0, 0));
    cs.push_back(mk("permute channels last", CMO_OP_PERMUTE, {randf({2, 16, 4, 5, 6})}, 1, pp({0, 2, 3, 4, 1}), 0, 0));
    cs.push_back(mk("permute 6-D windows", CMO_OP_PERMUTE, {randf({2, 3, 4, 2, 3, 8})}, 1, pp({0, 2, 4, 1, 3, 5}), 0, 0));
    cs.push_back(mk("permute i32 size-1 axis", CMO_OP_PERMUTE, {randi({3, 1, 7}, -5, 5)}, 1, pp({2, 1, 0}), 0, 0));
  }
  cs.push_back(mk("copy f32", CMO_OP_COPY, {randf({2, 16, 3, 4, 5})}, 1, pbytes(cmo_copy_params{CMO_LAYOUT_ANY}), 0, 0));
  cs.push_back(mk("copy i32", CMO_OP_COPY, {randi({7, 9}, -5, 5)}, 1, pbytes(cmo_copy_params{CMO_LAYOUT_PLAIN}), 0, 0));
  {
    Case f = mk("fill f32", CMO_OP_FILL, {}, 1, pbytes(cmo_fill_params{2.5}), 0, 0);
    cs.push_back(with_given(f, {randf({3, 4, 5})}));
    HT ti = randi({6, 7}, 0, 3);
    Case fi = mk("fill i32", CMO_OP_FILL, {}, 1, pbytes(cmo_fill_params{-7.0}), 0, 0);
    cs.push_back(with_given(fi, {ti}));
  }
  cs.push_back(mk("argmax axis 1", CMO_OP_ARGMAX, {quantized({2, 5, 6, 7}, 2)}, 1, pbytes(cmo_axis_params{1}), 0, 0));
  cs.push_back(mk("argmax axis -1", CMO_OP_ARGMAX, {randf({4, 33})}, 1, pbytes(cmo_axis_params{-1}), 0, 0));
  // ---- matmul
  struct MM {
    Dims a, b;
    int ta, tb;
  };
  for (const MM& m : {MM{{3, 37, 45}, {3, 45, 29}, 0, 0}, MM{{3, 45, 37}, {3, 45, 29}, 1, 0}, MM{{3, 37, 45}, {3, 29, 45}, 0, 1},
                      MM{{2, 45, 37}, {1, 29, 45}, 1, 1}, MM{{70, 130}, {130, 66}, 0, 0}, MM{{1, 256, 300}, {4, 300, 64}, 0, 0},
                      MM{{16, 200000}, {16, 200000}, 0, 1}, MM{{2, 70000, 24}, {2, 70000, 20}, 1, 0}}) {
    cmo_matmul_params p{m.ta, m.tb};
    bool long_k = m.a.back() > 10000 || m.a[m.a.size() - 2] > 10000;  // split-K path: sums of many terms
    cs.push_back(mk("matmul " + dims_str(m.a) + (m.ta ? "T" : "") + "x" + dims_str(m.b) + (m.tb ? "T" : ""), CMO_OP_MATMUL,
                    {randf(m.a), randf(m.b)}, 1, pbytes(p), long_k ? 2e-2 : 1e-4, long_k ? 1e-3 : 1e-4));
  }
  // ---- softmax
  for (int axis : {1, -1}) {
    Dims d = {2, 5, 6, 7};
    HT x = randf(d, -4.f, 4.f), dy = randf(d);
    cs.push_back(mk("softmax fwd axis " + std::to_string(axis), CMO_OP_SOFTMAX_FORWARD, {x}, 1, pbytes(cmo_axis_params{axis}), 1e-6, 1e-5));
    HT y = randf(d, 0.f, 1.f);
    cs.push_back(mk("softmax bwd axis " + std::to_string(axis), CMO_OP_SOFTMAX_BACKWARD, {y, dy}, 1, pbytes(cmo_axis_params{axis}), 1e-6, 1e-5));
  }
  // ---- reductions
  struct RC {
    const char* tag;
    int kind;
    int64_t mask;
    Dims d;
  };
  for (const RC& r : {RC{"sum spatial", CMO_REDUCE_SUM, 0b11100, {2, 16, 10, 9, 8}}, RC{"mean channel", CMO_REDUCE_MEAN, 0b00010, {2, 16, 10, 9, 8}},
                      RC{"max all-but-batch", CMO_REDUCE_MAX, 0b11110, {2, 16, 10, 9, 8}}, RC{"sum all", CMO_REDUCE_SUM, 0b11111, {2, 16, 40, 30, 20}},
                      RC{"mean strided mask", CMO_REDUCE_MEAN, 0b10101, {3, 4, 5, 6, 7}}, RC{"max rows", CMO_REDUCE_MAX, 0b10, {64, 300}},
                      RC{"sum none", CMO_REDUCE_SUM, 0, {3, 4}}}) {
    cmo_reduce_params p{r.kind, r.mask};
    cs.push_back(mk(std::string("reduce ") + r.tag, CMO_OP_REDUCE, {randf(r.d)}, 1, pbytes(p), 1e-5, 1e-5));
  }
  {
    // max backward with ties: y from a host max
    Dims d = {4, 6, 5};
    HT x = quantized(d, 2), dy = randf({4, 1, 5});
    HT y;
    y.dims = {4, 1, 5};
    y.alloc();
    for (int a = 0; a < 4; a++)
      for (int c = 0; c < 5; c++) {
        float m = -1e30f;
        for (int b = 0; b < 6; b++) m = std::max(m, x.f[(size_t)((a * 6 + b) * 5 + c)]);
        y.f[(size_t)(a * 5 + c)] = m;
      }
    cs.push_back(mk("reduce max backward (ties)", CMO_OP_REDUCE_MAX_BACKWARD, {x, y, dy}, 1, pbytes(cmo_reduce_params{CMO_REDUCE_MAX, 0b010}),
                    1e-6, 1e-6));
  }
  // ---- pooling
  struct PC {
    Dims x;
    Dims o;
  };
  for (const PC& pc : {PC{{2, 4, 10, 9, 7}, {3, 4, 2}}, PC{{2, 8, 6, 6, 6}, {1, 1, 1}}, PC{{1, 2, 3, 4, 5}, {7, 6, 5}}}) {
    cmo_pool_params p{};
    for (int i = 0; i < 3; i++) {
      p.out_dims[i] = pc.o[(size_t)i];
      p.in_dims[i] = pc.x[2 + (size_t)i];
    }
    cs.push_back(mk("adaptive pool fwd " + dims_str(pc.x) + "->" + dims_str(pc.o), CMO_OP_ADAPTIVE_AVG_POOL3D_FORWARD, {randf(pc.x)}, 1,
                    pbytes(p), 1e-6, 1e-5));
    cs.push_back(mk("adaptive pool bwd " + dims_str(pc.x) + "->" + dims_str(pc.o), CMO_OP_ADAPTIVE_AVG_POOL3D_BACKWARD,
                    {randf({pc.x[0], pc.x[1], pc.o[0], pc.o[1], pc.o[2]})}, 1, pbytes(p), 1e-6, 1e-5));
  }
  // ---- l2 normalize
  for (int axis : {1, -1}) {
    Dims d = {3, 8, 5, 4};
    HT x = randf(d), dy = randf(d);
    x.f[0] = x.f[4 * 5 * 8] = 0.f;  // a few tiny entries
    cmo_l2_normalize_params p{axis, 1e-12};
    cs.push_back(mk("l2 normalize fwd axis " + std::to_string(axis), CMO_OP_L2_NORMALIZE_FORWARD, {x}, 1, pbytes(p), 1e-6, 1e-5));
    cs.push_back(mk("l2 normalize bwd axis " + std::to_string(axis), CMO_OP_L2_NORMALIZE_BACKWARD, {x, dy}, 1, pbytes(p), 1e-5, 1e-4));
  }
  // ---- softmax cross-entropy
  {
    Dims ld = {2, 4, 6, 5, 4};
    HT logits = randf(ld, -3.f, 3.f);
    HT lab = randi({2, 6, 5, 4}, -1, 4);  // -1 = ignored
    HT lab1 = randi({2, 1, 6, 5, 4}, 0, 4);
    cmo_cross_entropy_params p{-1};
    cs.push_back(mk("softmax CE fwd (ignore -1)", CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {logits, lab}, 2, pbytes(p), 1e-6, 1e-5));
    cs.push_back(mk("softmax CE fwd [N,1,...]", CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {logits, lab1}, 2, pbytes(p), 1e-6, 1e-5));
    HT probs = randf(ld, 0.f, 1.f);
    HT dl = randf({1}, 0.5f, 2.f);
    cs.push_back(mk("softmax CE bwd", CMO_OP_SOFTMAX_CROSS_ENTROPY_BACKWARD, {probs, lab, dl}, 1, pbytes(p), 1e-6, 1e-5));
    HT bad = lab;
    bad.i[17] = 9;
    Case e = mk("softmax CE fwd rejects label 9", CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {logits, bad}, 2, pbytes(p));
    e.expect_status = CMO_ERR_INVALID_ARGUMENT;
    cs.push_back(e);
    HT big = randf({2, 3, 64, 64, 32}, -3.f, 3.f);
    cs.push_back(mk("softmax CE fwd large", CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {big, randi({2, 64, 64, 32}, 0, 3)}, 2,
                    pbytes(cmo_cross_entropy_params{-100}), 1e-5, 1e-4));
  }
  // ---- Dice statistics
  {
    Dims pd = {2, 3, 20, 18, 16};
    HT probs = randf(pd, 0.f, 1.f), lab = randi({2, 20, 18, 16}, 0, 3), soft = randf(pd, 0.f, 1.f);
    HT ds = randf({3, 3});
    cmo_dice_params p{-100};
    cs.push_back(mk("dice stats fwd labels", CMO_OP_DICE_STATS_FORWARD, {probs, lab}, 1, pbytes(p), 1e-3, 1e-5));
    cs.push_back(mk("dice stats fwd soft", CMO_OP_DICE_STATS_FORWARD, {probs, soft}, 1, pbytes(p), 1e-3, 1e-5));
    cs.push_back(mk("dice stats bwd labels", CMO_OP_DICE_STATS_BACKWARD, {probs, lab, ds}, 1, pbytes(p), 1e-6, 1e-6));
    cs.push_back(mk("dice stats bwd soft", CMO_OP_DICE_STATS_BACKWARD, {probs, soft, ds}, 1, pbytes(p), 1e-6, 1e-6));
    // Labels -1 ignored: in none of the sums, zero gradient.
    HT lab_ig = randi({2, 20, 18, 16}, -1, 3);
    cmo_dice_params pi{-1};
    cs.push_back(mk("dice stats fwd (ignore -1)", CMO_OP_DICE_STATS_FORWARD, {probs, lab_ig}, 1, pbytes(pi), 1e-3, 1e-5));
    cs.push_back(mk("dice stats bwd (ignore -1)", CMO_OP_DICE_STATS_BACKWARD, {probs, lab_ig, ds}, 1, pbytes(pi), 1e-6, 1e-6));
    Case e = mk("dice stats fwd rejects label -1 (not ignore_index)", CMO_OP_DICE_STATS_FORWARD, {probs, lab_ig}, 1,
                pbytes(p));
    e.expect_status = CMO_ERR_INVALID_ARGUMENT;
    cs.push_back(e);
  }
  // ---- optimisers (in place: compare the updated inputs)
  {
    Dims d = {16, 8, 3, 3, 3};
    for (int nest : {0, 1}) {
      Case c = mk(std::string("sgd") + (nest ? " nesterov" : ""), CMO_OP_SGD_UPDATE, {randf(d), randf(d), randf(d)}, 0,
                  pbytes(cmo_sgd_params{0.01, 0.99, 3e-5, nest}), 1e-6, 1e-5);
      c.inplace = true;
      cs.push_back(c);
    }
    Case ad = mk("adamw step 3", CMO_OP_ADAMW_UPDATE, {randf(d), randf(d), randf(d, -0.1f, 0.1f), randf(d, 0.f, 0.01f)}, 0,
                 pbytes(cmo_adamw_params{1e-3, 0.9, 0.999, 1e-8, 0.01, 3}), 1e-6, 1e-5);
    ad.inplace = true;
    cs.push_back(ad);
    Case em = mk("ema", CMO_OP_EMA_UPDATE, {randf(d), randf(d)}, 0, pbytes(cmo_ema_params{0.99}), 1e-6, 1e-6);
    em.inplace = true;
    cs.push_back(em);
  }
  return cs;
}

// ------------------------------------------------------------------ extra CUDA-only checks
int64_t live_buffers(Lib& L) {
  cmo_memory_stats s{};
  L.memory_stats(L.be, &s);
  return s.live_buffers;
}

void determinism_check(Lib& L) {
  // conv backward weights and group norm backward twice in deterministic mode: bit-identical
  L.set_deterministic(L.be, 1);
  HT x = randf({2, 16, 24, 24, 24}), dy = randf({2, 16, 24, 24, 24});
  Case c = mk("deterministic conv bwd weights", CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, dy}, 2, pbytes(conv_p(1, 1, 1, 1, {24, 24, 24})));
  HT dw;
  dw.dims = {16, 16, 3, 3, 3};
  dw.alloc();
  c = with_given(c, {dw, randf({16})});
  setenv("COMODAL_CUDA_WGRAD", "cudnn", 1);  // cuDNN's deterministic algorithms first, then ours
  Result a = run_case(L, c), b = run_case(L, c);
  unsetenv("COMODAL_CUDA_WGRAD");
  bool same = a.st == CMO_OK && b.st == CMO_OK && a.outs.size() == b.outs.size();
  for (size_t o = 0; same && o < a.outs.size(); o++) same = a.outs[o].f == b.outs[o].f;
  check(same, "deterministic mode: conv bwd weights (cuDNN) bit-identical", a.st ? a.err : "results differ between runs");
  setenv("COMODAL_CUDA_WGRAD", "own", 1);
  Result oa = run_case(L, c), ob = run_case(L, c);
  unsetenv("COMODAL_CUDA_WGRAD");
  same = oa.st == CMO_OK && ob.st == CMO_OK && oa.outs.size() == ob.outs.size();
  for (size_t o = 0; same && o < oa.outs.size(); o++) same = oa.outs[o].f == ob.outs[o].f;
  check(same, "own wgrad kernel: bit-identical run to run", oa.st ? oa.err : "results differ between runs");
  cmo_group_norm_params gp{4, 1e-5, CMO_NORM_ACT_NONE, 0.0};
  HT g = randf({16}), be = randf({16});
  Case f = mk("deterministic group norm fwd", CMO_OP_GROUP_NORM_FORWARD, {x, g, be}, 3, pbytes(gp));
  Result fa = run_case(L, f), fb = run_case(L, f);
  same = fa.st == CMO_OK && fb.st == CMO_OK;
  for (size_t o = 0; same && o < fa.outs.size(); o++) same = fa.outs[o].f == fb.outs[o].f;
  check(same, "deterministic mode: group norm fwd bit-identical", fa.st ? fa.err : "results differ between runs");
  L.set_deterministic(L.be, 0);
}

void pool_steady_check(Lib& L) {
  // Same op sequence twice: the second pass must not grow the pool (no cudaMalloc in steady state).
  HT x = randf({2, 8, 32, 32, 32}), w = randf({8, 8, 3, 3, 3}), g = randf({8}), b = randf({8});
  auto step = [&]() {
    Case c = mk("conv", CMO_OP_CONV3D_FORWARD, {x, w, b}, 1, pbytes(conv_p(1, 1, 1, 1, {32, 32, 32})));
    run_case(L, c);
    Case n = mk("norm", CMO_OP_GROUP_NORM_FORWARD, {x, g, b}, 3, pbytes(cmo_group_norm_params{8, 1e-5, CMO_NORM_ACT_NONE, 0.0}));
    run_case(L, n);
  };
  step();
  cmo_memory_stats s1{}, s2{};
  L.memory_stats(L.be, &s1);
  for (int i = 0; i < 3; i++) step();
  L.memory_stats(L.be, &s2);
  check(s2.pool_bytes == s1.pool_bytes && s2.live_buffers == 0,
        "caching pool: steady state allocates nothing new",
        "pool bytes " + std::to_string(s1.pool_bytes) + " -> " + std::to_string(s2.pool_bytes) + ", live " +
            std::to_string(s2.live_buffers));
  std::printf("memory: pool %.1f MiB, peak live %.1f MiB, device %.1f / %.1f GiB free\n", s2.pool_bytes / 1048576.0,
              s2.peak_bytes / 1048576.0, s2.device_free_bytes / 1073741824.0, s2.device_total_bytes / 1073741824.0);
}

void oom_check(Lib& L) {
  cmo_tensor_desc d{};
  d.ndim = 4;
  d.dims[0] = 1 << 14;
  d.dims[1] = 1 << 14;
  d.dims[2] = 1 << 10;
  d.dims[3] = 1 << 4;  // 2^42 floats = 16 TiB
  d.dtype = CMO_DTYPE_F32;
  d.layout = CMO_LAYOUT_ANY;
  cmo_buffer* b = nullptr;
  cmo_status st = L.buffer_create(L.be, &d, &b);
  std::string msg = L.last_error();
  bool ok = st == CMO_ERR_OUT_OF_MEMORY && msg.find("requested") != std::string::npos &&
            msg.find("COMODAL_DEVICE=cpu") != std::string::npos;
  check(ok, "out of memory: clear error with sizes and CPU hint", std::to_string(st) + ": " + msg);
  if (ok) std::printf("  OOM message: %s\n", msg.c_str());
  if (b) L.buffer_release(b);
}

// ------------------------------------------------------------------ benchmark
double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void bench(Lib& L, const char* label) {
  struct BC {
    Dims x;
    int co;
  };
  std::printf("\n== conv3d 3x3x3 pad 1 forward + backward (data + weights), %s, %s ==\n", L.name.c_str(), label);
  std::printf("%-28s %10s %10s %10s %10s %10s\n", "shape", "fwd ms", "bwd-d ms", "bwd-w ms", "total ms", "GFLOP/s");
  for (const BC& bc : {BC{{2, 16, 128, 128, 128}, 16}, BC{{2, 32, 64, 64, 64}, 32}, BC{{2, 64, 32, 32, 32}, 64},
                       BC{{2, 1, 128, 128, 128}, 16}, BC{{2, 128, 16, 16, 16}, 128}}) {
    Dims w = {bc.co, bc.x[1], 3, 3, 3};
    Dims y = {bc.x[0], bc.co, bc.x[2], bc.x[3], bc.x[4]};
    HT hx = randf(bc.x), hw = randf(w, -0.1f, 0.1f), hdy = randf(y);
    cmo_buffer *x = upload(L, hx), *wb = upload(L, hw), *dy = upload(L, hdy);
    auto p = conv_p(1, 1, 1, 0, {bc.x[2], bc.x[3], bc.x[4]});
    cmo_buffer* yb = nullptr;
    cmo_buffer* dx = nullptr;
    cmo_buffer* dwb = upload(L, hw);
    auto run = [&](int which) {
      cmo_status st = CMO_OK;
      if (which == 0) {
        cmo_buffer* in[3] = {x, wb, nullptr};
        st = L.op_execute(L.be, CMO_OP_CONV3D_FORWARD, in, 3, &yb, 1, &p, sizeof p);
      } else if (which == 1) {
        cmo_buffer* in[2] = {dy, wb};
        st = L.op_execute(L.be, CMO_OP_CONV3D_BACKWARD_DATA, in, 2, &dx, 1, &p, sizeof p);
      } else {
        cmo_buffer* in[2] = {x, dy};
        cmo_buffer* out[2] = {dwb, nullptr};
        st = L.op_execute(L.be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, in, 2, out, 2, &p, sizeof p);
      }
      if (st != CMO_OK) {
        std::printf("bench failed: %s\n", L.last_error());
        std::exit(4);
      }
    };
    double ms[3];
    for (int which = 0; which < 3; which++) {
      run(which);  // warm-up: algorithm search
      run(which);
      L.synchronize(L.be);
      std::vector<double> t;
      for (int r = 0; r < 7; r++) {
        double t0 = now_ms();
        run(which);
        L.synchronize(L.be);
        t.push_back(now_ms() - t0);
      }
      std::sort(t.begin(), t.end());
      ms[which] = t[t.size() / 2];
    }
    double flops = 2.0 * (double)(bc.x[0] * bc.co * bc.x[2] * bc.x[3] * bc.x[4]) * (double)(bc.x[1] * 27);
    double total = ms[0] + ms[1] + ms[2];
    std::printf("%-28s %10.3f %10.3f %10.3f %10.3f %10.0f\n", (dims_str(bc.x) + "->" + std::to_string(bc.co)).c_str(), ms[0],
                ms[1], ms[2], total, 3 * flops / (total * 1e6));
    for (cmo_buffer* b : {x, wb, dy, yb, dx, dwb}) L.buffer_release(b);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string cpu_path = "build/libcomodal_cpu.so", cuda_path = "build/libcomodal_cuda.so";
  bool do_bench = false, only = false;
  std::string filter;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--cpu" && i + 1 < argc) cpu_path = argv[++i];
    else if (a == "--cuda" && i + 1 < argc) cuda_path = argv[++i];
    else if (a == "--bench") do_bench = true;
    else if (a == "--bench-only") do_bench = only = true;
    else if (a == "--filter" && i + 1 < argc) filter = argv[++i];
    else {
      std::printf("usage: %s [--cpu LIB] [--cuda LIB] [--bench|--bench-only] [--filter TEXT]\n", argv[0]);
      return 2;
    }
  }
  Lib cuda, cpu;
  if (!load(cuda, cuda_path)) return 1;
  std::printf("cuda library: %s (device id %d)\n", cuda.version_string(), cuda.library_device());
  cmo_status st = cuda.backend_create(0, &cuda.be);
  if (st != CMO_OK) {
    std::printf("cuda backend_create: status %d: %s\n", st, cuda.last_error());
    std::printf("0 passed, 0 failed (no CUDA device: nothing to compare)\n");
    return st == CMO_ERR_NO_DEVICE ? 0 : 1;
  }
  int unsupported = 0;
  for (int op = 1; op <= 35; op++)
    if (!cuda.supports_op(cuda.be, op)) {
      std::printf("cuda backend does not support op %d\n", op);
      unsupported++;
    }
  check(unsupported == 0, "supports_op: all 35 ops", std::to_string(unsupported) + " unsupported");
  if (do_bench) {
    setenv("COMODAL_CUDA_TF32", "0", 1);
    bench(cuda, "strict FP32 (own weight-gradient kernel for <= 32 channels)");
    setenv("COMODAL_CUDA_WGRAD", "own", 1);
    bench(cuda, "strict FP32, own weight-gradient kernel everywhere it applies (COMODAL_CUDA_WGRAD=own)");
    setenv("COMODAL_CUDA_WGRAD", "cudnn", 1);
    bench(cuda, "strict FP32, cuDNN weight gradient (COMODAL_CUDA_WGRAD=cudnn)");
    unsetenv("COMODAL_CUDA_WGRAD");
    setenv("COMODAL_CUDA_TF32", "1", 1);
    bench(cuda, "TF32 allowed");
    setenv("COMODAL_CUDA_TF32", "0", 1);
    if (only) {
      cuda.backend_destroy(cuda.be);
      return 0;
    }
  }
  bool have_cpu = load(cpu, cpu_path);
  if (have_cpu) {
    std::printf("cpu library:  %s\n", cpu.version_string());
    if (cpu.backend_create(0, &cpu.be) != CMO_OK) {
      std::printf("cpu backend_create failed: %s\n", cpu.last_error());
      have_cpu = false;
    }
  }
  std::vector<Case> cases = build_cases();
  std::vector<bool> op_seen(64, false);
  double t0 = now_ms();
  for (const Case& c : cases) {
    if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
    Result got = run_case(cuda, c);
    if (!have_cpu) {
      check(got.st == c.expect_status, c.name, got.err);
      continue;
    }
    Result ref = run_case(cpu, c);
    std::string why;
    double worst = 0;
    bool ok = compare(c, ref, got, &why, &worst);
    check(ok, c.name, why);
    if (ok) op_seen[(size_t)c.op] = true;
  }
  std::printf("ops compared: %.0f ms for %zu cases\n", now_ms() - t0, cases.size());
  if (have_cpu) {
    // our FP32 weight-gradient kernel wherever it applies (COMODAL_CUDA_WGRAD=own), then cuDNN only
    // (=cudnn), on every conv weight-gradient case
    setenv("COMODAL_CUDA_WGRAD", "own", 1);
    for (const Case& c : cases) {
      if (c.op != CMO_OP_CONV3D_BACKWARD_WEIGHTS || (!filter.empty() && c.name.find(filter) == std::string::npos)) continue;
      Result got = run_case(cuda, c), ref = run_case(cpu, c);
      std::string why;
      double worst = 0;
      check(compare(c, ref, got, &why, &worst), c.name + " [own wgrad kernel]", why);
    }
    setenv("COMODAL_CUDA_WGRAD", "cudnn", 1);
    for (const Case& c : cases) {
      if (c.op != CMO_OP_CONV3D_BACKWARD_WEIGHTS || (!filter.empty() && c.name.find(filter) == std::string::npos)) continue;
      Result got = run_case(cuda, c), ref = run_case(cpu, c);
      std::string why;
      double worst = 0;
      check(compare(c, ref, got, &why, &worst), c.name + " [cuDNN wgrad]", why);
    }
    unsetenv("COMODAL_CUDA_WGRAD");
    // every matmul case again without split-K (COMODAL_CUDA_SPLITK=0)
    setenv("COMODAL_CUDA_SPLITK", "0", 1);
    for (const Case& c : cases) {
      if (c.op != CMO_OP_MATMUL || (!filter.empty() && c.name.find(filter) == std::string::npos)) continue;
      Result got = run_case(cuda, c), ref = run_case(cpu, c);
      std::string why;
      double worst = 0;
      check(compare(c, ref, got, &why, &worst), c.name + " [no split-K]", why);
    }
    unsetenv("COMODAL_CUDA_SPLITK");
  }
  if (have_cpu && filter.empty()) {
    int missing = 0;
    for (int op = 1; op <= 35; op++)
      if (!op_seen[(size_t)op]) {
        std::printf("op %d has no passing parity case\n", op);
        missing++;
      }
    check(missing == 0, "every op of CMO_OP_LIST has a passing parity case", std::to_string(missing) + " ops without one");
  }
  determinism_check(cuda);
  pool_steady_check(cuda);
  oom_check(cuda);
  check(live_buffers(cuda) == 0, "no leaked CUDA buffers", std::to_string(live_buffers(cuda)) + " live");
  cuda.backend_destroy(cuda.be);
  if (have_cpu) cpu.backend_destroy(cpu.be);
  if (!g_failed.empty()) {
    std::printf("failed:");
    for (auto& n : g_failed) std::printf(" [%s]", n.c_str());
    std::printf("\n");
  }
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
