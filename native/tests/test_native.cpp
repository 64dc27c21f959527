// test_native.cpp — tests of the CPU library alone (no Deno): error paths, buffers, convolutions
// and transposed convolutions against a naive double-precision reference and finite differences,
// group norm against a reference, primitive caching, memory statistics.
// Built and run by `make native-test` (and `make native-test-asan` under ASan/UBSan).
// Prints one line per failed check and closes with "N passed, N failed".
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../cpu/dnnl_ctx.hpp"  // cache_misses, and the Buffer struct to look at blocked memory order
#include "../include/comodal.h"

namespace {

int g_pass = 0, g_fail = 0;
std::string g_case;

void check(bool ok, const std::string& what) {
  if (ok) {
    g_pass++;
  } else {
    g_fail++;
    std::printf("FAIL [%s] %s\n", g_case.c_str(), what.c_str());
  }
}

#define CHECK_OK(call)                                                                       \
  do {                                                                                       \
    cmo_status st_ = (call);                                                                 \
    check(st_ == CMO_OK, std::string(#call) + " -> " + std::to_string(st_) + ": " + cmo_last_error()); \
  } while (0)

uint64_t g_rng = 0x9E3779B97F4A7C15ull;
float urand() {  // uniform in [-1, 1)
  g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((g_rng >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}
std::vector<float> rand_vec(size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = urand() * scale;
  return v;
}

int64_t prod(const std::vector<int64_t>& d) {
  int64_t n = 1;
  for (auto x : d) n *= x;
  return n;
}

cmo_buffer* make(cmo_backend* be, const std::vector<int64_t>& dims, int layout = CMO_LAYOUT_ANY,
                 int dtype = CMO_DTYPE_F32) {
  cmo_tensor_desc d{};
  d.ndim = (int64_t)dims.size();
  for (size_t i = 0; i < dims.size(); i++) d.dims[i] = dims[i];
  d.dtype = dtype;
  d.layout = layout;
  cmo_buffer* b = nullptr;
  CHECK_OK(cmo_buffer_create(be, &d, &b));
  return b;
}
cmo_buffer* make_with(cmo_backend* be, const std::vector<int64_t>& dims, const std::vector<float>& v,
                      int layout = CMO_LAYOUT_ANY) {
  cmo_buffer* b = make(be, dims, layout);
  if (b) CHECK_OK(cmo_buffer_write(b, v.data(), (int64_t)(v.size() * 4)));
  return b;
}
std::vector<int64_t> dims_of(const cmo_buffer* b) {
  cmo_tensor_desc d{};
  cmo_buffer_describe(b, &d);
  return std::vector<int64_t>(d.dims, d.dims + d.ndim);
}
int layout_of(const cmo_buffer* b) {
  cmo_tensor_desc d{};
  cmo_buffer_describe(b, &d);
  return (int)d.layout;
}
std::vector<float> read(const cmo_buffer* b) {
  std::vector<float> v((size_t)prod(dims_of(b)));
  CHECK_OK(cmo_buffer_read(b, v.data(), (int64_t)(v.size() * 4)));
  return v;
}

// Largest violation of |got - ref| <= atol + rtol * |ref| (0 when within tolerance), with the index.
void expect_close(const std::vector<float>& got, const std::vector<double>& ref, double atol, double rtol,
                  const std::string& what) {
  if (got.size() != ref.size()) {
    check(false, what + ": size " + std::to_string(got.size()) + " vs reference " + std::to_string(ref.size()));
    return;
  }
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); i++) {
    double err = std::fabs((double)got[i] - ref[i]) - (atol + rtol * std::fabs(ref[i]));
    if (!(err <= worst)) {
      worst = std::isnan(err) ? INFINITY : err;
      at = i;
    }
  }
  char msg[256];
  std::snprintf(msg, sizeof msg, ": worst at %zu got %.7g ref %.7g", at, got.empty() ? 0.0 : (double)got[at],
                ref.empty() ? 0.0 : ref[at]);
  check(worst <= 0, what + (worst <= 0 ? "" : msg));
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// ------------------------------------------------------------------ reference convolution
struct ConvCfg {
  std::string name;
  bool transposed = false;
  int64_t N = 1, Ci = 1, Co = 1;
  int64_t in[3] = {1, 1, 1}, k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, p[3] = {0, 0, 0}, dil[3] = {1, 1, 1};
  bool bias = false;

  int64_t out(int a) const {
    return transposed ? (in[a] - 1) * s[a] - 2 * p[a] + dil[a] * (k[a] - 1) + 1
                      : (in[a] + 2 * p[a] - dil[a] * (k[a] - 1) - 1) / s[a] + 1;
  }
  std::vector<int64_t> xdims() const { return {N, Ci, in[0], in[1], in[2]}; }
  std::vector<int64_t> ydims() const { return {N, Co, out(0), out(1), out(2)}; }
  std::vector<int64_t> wdims() const {
    return transposed ? std::vector<int64_t>{Ci, Co, k[0], k[1], k[2]} : std::vector<int64_t>{Co, Ci, k[0], k[1], k[2]};
  }
  cmo_conv3d_params params() const {
    cmo_conv3d_params q{};
    for (int a = 0; a < 3; a++) {
      q.stride[a] = s[a];
      q.padding[a] = p[a];
      q.dilation[a] = dil[a];
      q.in_dims[a] = in[a];
    }
    q.has_bias = bias ? 1 : 0;
    return q;
  }
};

// Calls f(x_index, y_index, w_index, co) for every multiply of the (transposed) convolution.
void for_each_tap(const ConvCfg& c, const std::function<void(int64_t, int64_t, int64_t, int64_t)>& f) {
  int64_t O[3] = {c.out(0), c.out(1), c.out(2)};
  for (int64_t n = 0; n < c.N; n++)
    for (int64_t ci = 0; ci < c.Ci; ci++)
      for (int64_t co = 0; co < c.Co; co++)
        for (int64_t kd = 0; kd < c.k[0]; kd++)
          for (int64_t kh = 0; kh < c.k[1]; kh++)
            for (int64_t kw = 0; kw < c.k[2]; kw++) {
              int64_t kk[3] = {kd, kh, kw};
              int64_t wi = c.transposed ? (((ci * c.Co + co) * c.k[0] + kd) * c.k[1] + kh) * c.k[2] + kw
                                        : (((co * c.Ci + ci) * c.k[0] + kd) * c.k[1] + kh) * c.k[2] + kw;
              // Positions along each axis: small vectors of (x pos, y pos) pairs.
              std::vector<std::pair<int64_t, int64_t>> ax[3];
              for (int a = 0; a < 3; a++) {
                if (!c.transposed) {
                  for (int64_t o = 0; o < O[a]; o++) {
                    int64_t i = o * c.s[a] - c.p[a] + kk[a] * c.dil[a];
                    if (i >= 0 && i < c.in[a]) ax[a].push_back({i, o});
                  }
                } else {
                  for (int64_t i = 0; i < c.in[a]; i++) {
                    int64_t o = i * c.s[a] - c.p[a] + kk[a] * c.dil[a];
                    if (o >= 0 && o < O[a]) ax[a].push_back({i, o});
                  }
                }
              }
              for (auto& d : ax[0])
                for (auto& h : ax[1])
                  for (auto& w : ax[2]) {
                    int64_t xi = (((n * c.Ci + ci) * c.in[0] + d.first) * c.in[1] + h.first) * c.in[2] + w.first;
                    int64_t yi = (((n * c.Co + co) * O[0] + d.second) * O[1] + h.second) * O[2] + w.second;
                    f(xi, yi, wi, co);
                  }
            }
}

std::vector<double> ref_forward(const ConvCfg& c, const std::vector<float>& x, const std::vector<float>& w,
                                const std::vector<float>& b) {
  std::vector<double> y((size_t)prod(c.ydims()), 0.0);
  for_each_tap(c, [&](int64_t xi, int64_t yi, int64_t wi, int64_t) { y[yi] += (double)x[xi] * w[wi]; });
  if (c.bias) {
    int64_t S = prod(c.ydims()) / (c.N * c.Co);
    for (size_t i = 0; i < y.size(); i++) y[i] += b[(i / S) % c.Co];
  }
  return y;
}

cmo_status conv_op(cmo_backend* be, int op, std::vector<cmo_buffer*> ins, std::vector<cmo_buffer*>& outs,
                   const cmo_conv3d_params& q) {
  return cmo_op_execute(be, op, ins.data(), (int32_t)ins.size(), outs.data(), (int32_t)outs.size(), &q, sizeof q);
}

void test_conv_case(cmo_backend* be, const ConvCfg& c) {
  g_case = c.name;
  const int FWD = c.transposed ? CMO_OP_CONV_TRANSPOSE3D_FORWARD : CMO_OP_CONV3D_FORWARD;
  const int BWD_D = c.transposed ? CMO_OP_CONV_TRANSPOSE3D_BACKWARD_DATA : CMO_OP_CONV3D_BACKWARD_DATA;
  const int BWD_W = c.transposed ? CMO_OP_CONV_TRANSPOSE3D_BACKWARD_WEIGHTS : CMO_OP_CONV3D_BACKWARD_WEIGHTS;
  auto xv = rand_vec((size_t)prod(c.xdims()));
  auto wv = rand_vec((size_t)prod(c.wdims()), 0.5f);
  auto bv = rand_vec((size_t)c.Co);
  auto gv = rand_vec((size_t)prod(c.ydims()));
  cmo_buffer* x = make_with(be, c.xdims(), xv);
  cmo_buffer* w = make_with(be, c.wdims(), wv, CMO_LAYOUT_PLAIN);
  cmo_buffer* b = c.bias ? make_with(be, {c.Co}, bv) : nullptr;
  cmo_buffer* g = make_with(be, c.ydims(), gv);
  auto q = c.params();
  const double tol = 1e-4 * std::sqrt((double)(c.Ci * c.k[0] * c.k[1] * c.k[2] + 1));

  // Forward into an allocated slot, then into a given slot of the other layout.
  std::vector<double> yref = ref_forward(c, xv, wv, bv);
  std::vector<cmo_buffer*> outs{nullptr};
  CHECK_OK(conv_op(be, FWD, {x, w, b}, outs, q));
  if (outs[0]) {
    check(dims_of(outs[0]) == c.ydims(), "forward output shape");
    check(layout_of(outs[0]) == (c.Co % 16 == 0 ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN),
          "forward output layout is blocked exactly when Co % 16 == 0");
    expect_close(read(outs[0]), yref, tol, tol, "forward");
    cmo_buffer_release(outs[0]);
  }
  if (c.Co % 16 == 0) {
    std::vector<cmo_buffer*> given{make(be, c.ydims(), CMO_LAYOUT_PLAIN)};
    CHECK_OK(conv_op(be, FWD, {x, w, b}, given, q));
    expect_close(read(given[0]), yref, tol, tol, "forward into a plain given slot");
    cmo_buffer_release(given[0]);
  }

  // Backward data: dx[xi] = sum dy[yi] * w[wi].
  std::vector<double> dxref((size_t)prod(c.xdims()), 0.0);
  for_each_tap(c, [&](int64_t xi, int64_t yi, int64_t wi, int64_t) { dxref[xi] += (double)gv[yi] * wv[wi]; });
  outs = {nullptr};
  CHECK_OK(conv_op(be, BWD_D, {g, w}, outs, q));
  if (outs[0]) {
    check(dims_of(outs[0]) == c.xdims(), "backward-data output shape");
    expect_close(read(outs[0]), dxref, tol, tol, "backward data");
    // A given slot is overwritten (=), whatever it held.
    std::vector<float> junk((size_t)prod(c.xdims()), 7.0f);
    CHECK_OK(cmo_buffer_write(outs[0], junk.data(), (int64_t)junk.size() * 4));
    CHECK_OK(conv_op(be, BWD_D, {g, w}, outs, q));
    expect_close(read(outs[0]), dxref, tol, tol, "backward data into a given slot overwrites");
    cmo_buffer_release(outs[0]);
  }

  // Backward weights: dw[wi] = sum x[xi] * dy[yi], db[co] = sum dy.
  std::vector<double> dwref((size_t)prod(c.wdims()), 0.0), dbref((size_t)c.Co, 0.0);
  for_each_tap(c, [&](int64_t xi, int64_t yi, int64_t wi, int64_t) { dwref[wi] += (double)xv[xi] * gv[yi]; });
  int64_t S = prod(c.ydims()) / (c.N * c.Co);
  for (size_t i = 0; i < gv.size(); i++) dbref[(i / S) % c.Co] += gv[i];
  const double wtol = 1e-4 * std::sqrt((double)prod(c.ydims()) / c.Co + 1);
  // With a stride > 1 a conv's kernel size cannot be inferred from x and dy: give a zeroed dw slot
  // (+= onto zeros); otherwise let the op allocate (=).
  bool strided = !c.transposed && (c.s[0] > 1 || c.s[1] > 1 || c.s[2] > 1);
  std::vector<cmo_buffer*> wouts{nullptr, nullptr};
  if (strided) wouts[0] = make_with(be, c.wdims(), std::vector<float>((size_t)prod(c.wdims()), 0.0f), CMO_LAYOUT_PLAIN);
  CHECK_OK(conv_op(be, BWD_W, {x, g}, wouts, q));
  if (wouts[0]) {
    check(dims_of(wouts[0]) == c.wdims(), "dw shape");
    expect_close(read(wouts[0]), dwref, wtol, wtol, "backward weights dw (=)");
    check((wouts[1] != nullptr) == c.bias, "db allocated exactly when has_bias");
    if (wouts[1]) expect_close(read(wouts[1]), dbref, wtol, wtol, "backward weights db (=)");
    // Given slots accumulate (+=).
    std::vector<float> ones((size_t)prod(c.wdims()), 1.0f), twos((size_t)c.Co, 2.0f);
    CHECK_OK(cmo_buffer_write(wouts[0], ones.data(), (int64_t)ones.size() * 4));
    if (!wouts[1]) wouts[1] = make(be, {c.Co});
    CHECK_OK(cmo_buffer_write(wouts[1], twos.data(), (int64_t)twos.size() * 4));
    CHECK_OK(conv_op(be, BWD_W, {x, g}, wouts, q));
    std::vector<double> dw1 = dwref, db2 = dbref;
    for (auto& v : dw1) v += 1.0;
    for (auto& v : db2) v += 2.0;
    expect_close(read(wouts[0]), dw1, wtol, wtol, "backward weights dw accumulates (+=)");
    expect_close(read(wouts[1]), db2, wtol, wtol, "backward weights db accumulates (+=)");
  }
  for (auto* o : wouts)
    if (o) cmo_buffer_release(o);
  cmo_buffer_release(x);
  cmo_buffer_release(w);
  if (b) cmo_buffer_release(b);
  cmo_buffer_release(g);
}

std::vector<ConvCfg> conv_cases() {
  std::vector<ConvCfg> v;
  auto mk = [&](const char* name, bool t, int64_t N, int64_t Ci, int64_t Co, std::vector<int64_t> in,
                std::vector<int64_t> k, std::vector<int64_t> s, std::vector<int64_t> p, bool bias,
                std::vector<int64_t> dil = {1, 1, 1}) {
    ConvCfg c;
    c.name = name;
    c.transposed = t;
    c.N = N;
    c.Ci = Ci;
    c.Co = Co;
    for (int a = 0; a < 3; a++) {
      c.in[a] = in[a];
      c.k[a] = k[a];
      c.s[a] = s[a];
      c.p[a] = p[a];
      c.dil[a] = dil[a];
    }
    c.bias = bias;
    v.push_back(c);
  };
  mk("conv plain 3->5 k3 p1", false, 2, 3, 5, {5, 6, 7}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, true);
  mk("conv blocked 16->16 k3 s2 p1", false, 1, 16, 16, {6, 6, 7}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, true);
  mk("conv plain->blocked 2->16 k[1,3,3] s[1,2,2] p[0,1,1]", false, 2, 2, 16, {5, 8, 8}, {1, 3, 3}, {1, 2, 2},
     {0, 1, 1}, false);
  mk("conv head blocked->plain 16->3 k1", false, 1, 16, 3, {4, 5, 6}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, true);
  mk("conv head 32->5 k1, two voxel chunks", false, 2, 32, 5, {20, 21, 22}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, true);
  mk("conv dilated 4->16 k3 p2 d2", false, 1, 4, 16, {7, 7, 7}, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, false, {2, 2, 2});
  mk("conv blocked 32->32 k3 p1", false, 2, 32, 32, {4, 4, 4}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, true);
  mk("conv 16->32 k[3,3,1] s[2,2,1] p[1,1,0]", false, 1, 16, 32, {6, 6, 5}, {3, 3, 1}, {2, 2, 1}, {1, 1, 0}, true);
  mk("conv 1->16 k3 p1 (first layer)", false, 2, 1, 16, {6, 5, 4}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, true);
  // Axes shorter than the kernel: the weight gradient runs on a hand-padded x (oneDNN has only its
  // reference code for these shapes), blocked and plain, with and without stride.
  mk("conv blocked 32->32 k3 p1, D=2 and W=1", false, 2, 32, 32, {2, 5, 1}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, true);
  mk("conv plain 3->16 k3 p1, D=1", false, 1, 3, 16, {1, 4, 5}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, false);
  mk("conv blocked 16->16 k3 s2 p1, H=2", false, 1, 16, 16, {5, 2, 4}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, true);
  mk("deconv 32->16 k2 s2", true, 2, 32, 16, {3, 3, 3}, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, true);
  mk("deconv 16->3 k2 s2 (plain out)", true, 1, 16, 3, {3, 4, 2}, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, true);
  mk("deconv 3->5 k3 s2 p1", true, 1, 3, 5, {3, 3, 3}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, false);
  mk("deconv dilated 4->16 k3 s2 p1 d2", true, 1, 4, 16, {3, 4, 3}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, true, {2, 2, 2});
  mk("deconv 16->16 k[1,2,2] s[1,2,2]", true, 1, 16, 16, {2, 3, 3}, {1, 2, 2}, {1, 2, 2}, {0, 0, 0}, true);
  return v;
}

ConvCfg conv_case(const std::string& name) {
  for (const ConvCfg& c : conv_cases())
    if (c.name == name) return c;
  std::printf("no conv case named %s\n", name.c_str());
  std::abort();
}

// Finite differences of L = sum(conv(x, w) * g): exact for a linear map up to rounding.
void test_conv_finite_differences(cmo_backend* be) {
  g_case = "conv finite differences";
  ConvCfg c = conv_case("conv blocked 16->16 k3 s2 p1");
  auto xv = rand_vec((size_t)prod(c.xdims()));
  auto wv = rand_vec((size_t)prod(c.wdims()), 0.5f);
  auto gv = rand_vec((size_t)prod(c.ydims()));
  auto q = c.params();
  q.has_bias = 0;
  auto loss = [&](const std::vector<float>& xs, const std::vector<float>& ws) {
    cmo_buffer* x = make_with(be, c.xdims(), xs);
    cmo_buffer* w = make_with(be, c.wdims(), ws, CMO_LAYOUT_PLAIN);
    std::vector<cmo_buffer*> o{nullptr};
    conv_op(be, CMO_OP_CONV3D_FORWARD, {x, w, nullptr}, o, q);
    double l = 0;
    if (o[0]) {
      auto y = read(o[0]);
      for (size_t i = 0; i < y.size(); i++) l += (double)y[i] * gv[i];
      cmo_buffer_release(o[0]);
    }
    cmo_buffer_release(x);
    cmo_buffer_release(w);
    return l;
  };
  cmo_buffer* x = make_with(be, c.xdims(), xv);
  cmo_buffer* w = make_with(be, c.wdims(), wv, CMO_LAYOUT_PLAIN);
  cmo_buffer* g = make_with(be, c.ydims(), gv);
  std::vector<cmo_buffer*> dx{nullptr}, dw{make_with(be, c.wdims(), std::vector<float>(wv.size(), 0.0f), CMO_LAYOUT_PLAIN), nullptr};
  CHECK_OK(conv_op(be, CMO_OP_CONV3D_BACKWARD_DATA, {g, w}, dx, q));
  CHECK_OK(conv_op(be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, g}, dw, q));
  if (dx[0] && dw[0]) {
    auto dxv = read(dx[0]), dwv = read(dw[0]);
    const float h = 0.25f;
    int bad = 0;
    for (int t = 0; t < 12; t++) {
      size_t i = (size_t)(t * 977) % xv.size();
      auto xp = xv, xm = xv;
      xp[i] += h;
      xm[i] -= h;
      double fd = (loss(xp, wv) - loss(xm, wv)) / (2 * h);
      if (std::fabs(fd - dxv[i]) > 2e-3 * (1 + std::fabs(fd))) bad++;
      size_t j = (size_t)(t * 331) % wv.size();
      auto wp = wv, wm = wv;
      wp[j] += h;
      wm[j] -= h;
      double fdw = (loss(xv, wp) - loss(xv, wm)) / (2 * h);
      if (std::fabs(fdw - dwv[j]) > 2e-3 * (1 + std::fabs(fdw))) bad++;
    }
    check(bad == 0, "dx and dw agree with central differences (" + std::to_string(bad) + " of 24 off)");
  }
  for (auto* o : {dx[0], dw[0], x, w, g})
    if (o) cmo_buffer_release(o);
}

// Plain activations where blocked would be preferred, blocked weights and a blocked dw slot: the
// kernels convert at the edges and give the same numbers. Also: determinism and thread counts.
void test_conv_layout_variants(cmo_backend* be) {
  g_case = "conv layout variants";
  ConvCfg c = conv_case("conv blocked 32->32 k3 p1");  // w [32,32,3,3,3] is blockable
  auto xv = rand_vec((size_t)prod(c.xdims()));
  auto wv = rand_vec((size_t)prod(c.wdims()), 0.5f);
  auto bv = rand_vec((size_t)c.Co);
  auto gv = rand_vec((size_t)prod(c.ydims()));
  cmo_buffer* x = make_with(be, c.xdims(), xv, CMO_LAYOUT_PLAIN);
  cmo_buffer* w = make_with(be, c.wdims(), wv, CMO_LAYOUT_BLOCKED16);
  cmo_buffer* b = make_with(be, {c.Co}, bv);
  cmo_buffer* g = make_with(be, c.ydims(), gv, CMO_LAYOUT_PLAIN);
  auto q = c.params();
  const double tol = 1e-3;
  std::vector<cmo_buffer*> y{nullptr}, dx{nullptr};
  std::vector<cmo_buffer*> dw{make_with(be, c.wdims(), std::vector<float>(wv.size(), 1.0f), CMO_LAYOUT_BLOCKED16),
                              nullptr};
  CHECK_OK(conv_op(be, CMO_OP_CONV3D_FORWARD, {x, w, b}, y, q));
  CHECK_OK(conv_op(be, CMO_OP_CONV3D_BACKWARD_DATA, {g, w}, dx, q));
  CHECK_OK(conv_op(be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, g}, dw, q));
  std::vector<double> dxref((size_t)prod(c.xdims()), 0.0), dwref((size_t)prod(c.wdims()), 1.0);
  for_each_tap(c, [&](int64_t xi, int64_t yi, int64_t wi, int64_t) {
    dxref[xi] += (double)gv[yi] * wv[wi];
    dwref[wi] += (double)xv[xi] * gv[yi];
  });
  if (y[0]) expect_close(read(y[0]), ref_forward(c, xv, wv, bv), tol, tol, "forward from plain x, blocked w");
  if (dx[0]) expect_close(read(dx[0]), dxref, tol, tol, "backward data from plain dy, blocked w");
  check(layout_of(dw[0]) == CMO_LAYOUT_BLOCKED16, "blocked dw slot keeps its layout");
  expect_close(read(dw[0]), dwref, tol, tol, "blocked dw slot accumulates (+=)");

  g_case = "conv determinism and threads";
  std::vector<cmo_buffer*> w1{make_with(be, c.wdims(), std::vector<float>(wv.size(), 0.0f), CMO_LAYOUT_PLAIN), nullptr};
  std::vector<cmo_buffer*> w2{make_with(be, c.wdims(), std::vector<float>(wv.size(), 0.0f), CMO_LAYOUT_PLAIN), nullptr};
  CHECK_OK(cmo_backend_set_deterministic(be, 1));
  CHECK_OK(conv_op(be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, g}, w1, q));
  CHECK_OK(conv_op(be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, g}, w2, q));
  check(read(w1[0]) == read(w2[0]) && read(w1[1]) == read(w2[1]), "two runs give bit-identical dw and db");
  CHECK_OK(cmo_backend_set_threads(be, 1));
  std::vector<cmo_buffer*> y1{nullptr};
  CHECK_OK(conv_op(be, CMO_OP_CONV3D_FORWARD, {x, w, b}, y1, q));
  CHECK_OK(cmo_backend_set_threads(be, 2));
  if (y1[0]) expect_close(read(y1[0]), ref_forward(c, xv, wv, bv), tol, tol, "forward with 1 thread");
  CHECK_OK(cmo_backend_set_deterministic(be, 0));
  for (auto* o : {x, w, b, g, y[0], dx[0], dw[0], dw[1], w1[0], w1[1], w2[0], w2[1], y1[0]})
    if (o) cmo_buffer_release(o);
}

// ------------------------------------------------------------------ group norm
struct GnRef {
  std::vector<double> y, mean, rstd;
};
GnRef gn_ref(const std::vector<int64_t>& dims, int64_t G, double eps, const std::vector<float>& x,
             const std::vector<float>& gamma, const std::vector<float>& beta) {
  int64_t N = dims[0], C = dims[1], S = prod(dims) / (N * C), Cg = C / G;
  GnRef r;
  r.y.resize(x.size());
  for (int64_t n = 0; n < N; n++)
    for (int64_t g = 0; g < G; g++) {
      double s = 0, ss = 0, M = (double)(Cg * S);
      int64_t base = (n * C + g * Cg) * S;
      for (int64_t i = 0; i < Cg * S; i++) s += x[(size_t)(base + i)];
      double m = s / M;
      for (int64_t i = 0; i < Cg * S; i++) ss += (x[(size_t)(base + i)] - m) * (x[(size_t)(base + i)] - m);
      double rs = 1 / std::sqrt(ss / M + eps);
      r.mean.push_back(m);
      r.rstd.push_back(rs);
      for (int64_t i = 0; i < Cg * S; i++) {
        int64_t c = g * Cg + i / S;
        r.y[(size_t)(base + i)] = (x[(size_t)(base + i)] - m) * rs * gamma[(size_t)c] + beta[(size_t)c];
      }
    }
  return r;
}

// act: CMO_NORM_ACT_* fused after the affine step (leaky ReLU with slope 0.1).
void test_group_norm(cmo_backend* be, const std::vector<int64_t>& dims, int64_t G, int layout, float offset,
                     int dy_layout = -1, int act = CMO_NORM_ACT_NONE) {
  g_case = "group norm " + std::to_string(dims[1]) + " ch, " + std::to_string(G) + " groups, " +
           (layout == CMO_LAYOUT_BLOCKED16 ? "blocked" : "plain") + ", offset " + std::to_string((int)offset) +
           ", activation " + std::to_string(act);
  const double slope = act == CMO_NORM_ACT_RELU ? 0.0 : act == CMO_NORM_ACT_LEAKY_RELU ? 0.1 : 1.0;
  auto actf = [&](double z) { return z > 0 ? z : z * slope; };
  int64_t C = dims[1], N = dims[0];
  auto xv = rand_vec((size_t)prod(dims));
  for (auto& v : xv) v = v * 2 + offset;
  auto gam = rand_vec((size_t)C), bet = rand_vec((size_t)C), gv = rand_vec(xv.size());
  cmo_group_norm_params q{G, 1e-5, act, act == CMO_NORM_ACT_LEAKY_RELU ? 0.1 : 0.0};
  cmo_buffer* x = make_with(be, dims, xv, layout);
  cmo_buffer* gb = make_with(be, {C}, gam);
  cmo_buffer* bb = make_with(be, {C}, bet);
  cmo_buffer* dy = make_with(be, dims, gv, dy_layout < 0 ? layout : dy_layout);
  GnRef r = gn_ref(dims, G, 1e-5, xv, gam, bet);
  // With a fused activation: y = act(z) and the incoming gradient becomes gv * act'(z).
  std::vector<double> gvd(gv.begin(), gv.end()), zref = r.y;
  for (size_t i = 0; i < r.y.size(); i++) {
    r.y[i] = actf(zref[i]);
    if (zref[i] <= 0) gvd[i] *= slope;
  }
  std::vector<cmo_buffer*> ins{x, gb, bb}, outs{nullptr, nullptr, nullptr};
  CHECK_OK(cmo_op_execute(be, CMO_OP_GROUP_NORM_FORWARD, ins.data(), 3, outs.data(), 3, &q, sizeof q));
  if (!outs[0]) return;
  check(layout_of(outs[0]) == layout, "y has the layout of x");
  expect_close(read(outs[0]), r.y, 1e-5, 1e-5, "y");
  expect_close(read(outs[1]), r.mean, 1e-5, 1e-5, "mean");
  expect_close(read(outs[2]), r.rstd, 1e-5, 1e-5, "rstd");

  // Backward reference by finite differences of L = sum(y * g) in double, on the reference itself.
  std::vector<double> dxref(xv.size()), dgref((size_t)C, 0.0), dbref((size_t)C, 0.0);
  int64_t S = prod(dims) / (N * C), Cg = C / G;
  for (int64_t n = 0; n < N; n++)
    for (int64_t g = 0; g < G; g++) {
      double m = r.mean[(size_t)(n * G + g)], rs = r.rstd[(size_t)(n * G + g)], M = (double)(Cg * S);
      int64_t base = (n * C + g * Cg) * S;
      double A = 0, B = 0;
      for (int64_t i = 0; i < Cg * S; i++) {
        int64_t c = g * Cg + i / S;
        double xh = (xv[(size_t)(base + i)] - m) * rs, gy = gvd[(size_t)(base + i)];
        A += gam[(size_t)c] * gy;
        B += gam[(size_t)c] * gy * xh;
        dgref[(size_t)c] += gy * xh;
        dbref[(size_t)c] += gy;
      }
      for (int64_t i = 0; i < Cg * S; i++) {
        int64_t c = g * Cg + i / S;
        double xh = (xv[(size_t)(base + i)] - m) * rs;
        dxref[(size_t)(base + i)] = rs * (gam[(size_t)c] * gvd[(size_t)(base + i)] - (A + xh * B) / M);
      }
    }
  std::vector<cmo_buffer*> bins{x, dy, gb, outs[1], outs[2], act ? bb : nullptr}, bouts{nullptr, nullptr, nullptr};
  if (act) {  // beta is required with a fused activation
    std::vector<cmo_buffer*> nob = bins;
    nob[5] = nullptr;
    check(cmo_op_execute(be, CMO_OP_GROUP_NORM_BACKWARD, nob.data(), 6, bouts.data(), 3, &q, sizeof q) ==
                  CMO_ERR_INVALID_ARGUMENT &&
              contains(cmo_last_error(), "beta"),
          std::string("fused backward without beta is rejected: ") + cmo_last_error());
  }
  CHECK_OK(cmo_op_execute(be, CMO_OP_GROUP_NORM_BACKWARD, bins.data(), 6, bouts.data(), 3, &q, sizeof q));
  if (bouts[0]) {
    double stol = 1e-4 * std::sqrt((double)(N * S));
    expect_close(read(bouts[0]), dxref, 1e-4, 1e-4, "dx");
    expect_close(read(bouts[1]), dgref, stol, 1e-5, "dgamma (=)");
    expect_close(read(bouts[2]), dbref, stol, 1e-5, "dbeta (=)");
    CHECK_OK(cmo_op_execute(be, CMO_OP_GROUP_NORM_BACKWARD, bins.data(), 6, bouts.data(), 3, &q, sizeof q));
    for (auto& v : dgref) v *= 2;
    for (auto& v : dbref) v *= 2;
    expect_close(read(bouts[1]), dgref, stol, 1e-5, "dgamma accumulates (+=)");
    expect_close(read(bouts[2]), dbref, stol, 1e-5, "dbeta accumulates (+=)");
  }
  // Finite-difference check of dx on a few entries (float forward, so loose).
  if (bouts[0] && prod(dims) <= 4096) {
    auto dxv = read(bouts[0]);
    int bad = 0;
    for (int t = 0; t < 6; t++) {
      size_t i = (size_t)(t * 389) % xv.size();
      double h = 1e-3, l[2];
      for (int sgn = 0; sgn < 2; sgn++) {
        auto xs = xv;
        xs[i] += (float)(sgn ? -h : h);
        GnRef rr = gn_ref(dims, G, 1e-5, xs, gam, bet);
        double acc = 0;
        for (size_t k = 0; k < xs.size(); k++) acc += actf(rr.y[k]) * gv[k];
        l[sgn] = acc;
      }
      double fd = (l[0] - l[1]) / (2 * h);
      if (std::fabs(fd - dxv[i]) > 2e-2 * (1 + std::fabs(fd))) bad++;
    }
    check(bad == 0, "dx agrees with central differences (" + std::to_string(bad) + " of 6 off)");
  }
  for (auto* o : {x, gb, bb, dy, outs[0], outs[1], outs[2], bouts[0], bouts[1], bouts[2]})
    if (o) cmo_buffer_release(o);
}

// ------------------------------------------------------------------ errors, buffers, stats
void test_library_and_errors(cmo_backend* be, cmo_backend* other) {
  g_case = "library";
  check(cmo_abi_version() == CMO_ABI_VERSION, "abi version");
  check(cmo_library_device() == CMO_DEVICE_CPU, "device is CPU");
  check(contains(cmo_version_string(), "oneDNN"), std::string("version string names oneDNN: ") + cmo_version_string());
  cmo_backend* bad = nullptr;
  check(cmo_backend_create(1, &bad) == CMO_ERR_INVALID_ARGUMENT && bad == nullptr, "device index 1 is rejected");
  check(contains(cmo_last_error(), "index 0"), std::string("message: ") + cmo_last_error());
  check(cmo_backend_supports_op(be, CMO_OP_CONV3D_FORWARD) == 1, "supports CONV3D_FORWARD");
  check(cmo_backend_supports_op(be, CMO_OP_GROUP_NORM_BACKWARD) == 1, "supports GROUP_NORM_BACKWARD");
  check(cmo_backend_supports_op(be, 999) == 0 && cmo_backend_supports_op(be, 0) == 0, "unknown ids not supported");
  CHECK_OK(cmo_backend_set_threads(be, 0));
  check(cmo_backend_set_threads(be, -1) == CMO_ERR_INVALID_ARGUMENT, "negative threads rejected");

  g_case = "errors";
  cmo_conv3d_params q{};
  for (int a = 0; a < 3; a++) q.stride[a] = q.padding[a] = q.dilation[a] = 1;
  check(cmo_op_execute(be, 99, nullptr, 0, nullptr, 0, nullptr, 0) == CMO_ERR_INVALID_ARGUMENT, "unknown op id");
  check(contains(cmo_last_error(), "unknown op id 99"), std::string("message: ") + cmo_last_error());
  cmo_buffer* x = make(be, {2, 3, 8, 8, 8});
  cmo_buffer* w = make(be, {16, 2, 3, 3, 3});
  std::vector<cmo_buffer*> ins{x, w, nullptr}, outs{nullptr};
  cmo_memory_stats before{}, after{};
  cmo_backend_memory_stats(be, &before);
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, ins.data(), 3, outs.data(), 1, &q, sizeof q) ==
            CMO_ERR_INVALID_ARGUMENT,
        "channel mismatch rejected");
  check(std::string(cmo_last_error()) == "CONV3D_FORWARD: x [2,3,8,8,8] has 3 channels, w [16,2,3,3,3] expects 2",
        std::string("message: ") + cmo_last_error());
  cmo_backend_memory_stats(be, &after);
  check(outs[0] == nullptr && after.live_buffers == before.live_buffers, "a failed op leaves no buffer behind");
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, ins.data(), 2, outs.data(), 1, &q, sizeof q) ==
            CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "CONV3D_FORWARD: got 2 inputs, expected 3"),
        std::string("input count: ") + cmo_last_error());
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, ins.data(), 3, outs.data(), 1, &q, 8) == CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "params struct has 8 bytes"),
        std::string("params size: ") + cmo_last_error());
  std::vector<cmo_buffer*> nul{nullptr, w, nullptr};
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, nul.data(), 3, outs.data(), 1, &q, sizeof q) ==
            CMO_ERR_INVALID_ARGUMENT &&
            std::string(cmo_last_error()) == "CONV3D_FORWARD: input 0 is NULL",
        std::string("null input: ") + cmo_last_error());
  cmo_buffer* xo = make(other, {2, 2, 8, 8, 8});
  std::vector<cmo_buffer*> foreign{xo, w, nullptr};
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, foreign.data(), 3, outs.data(), 1, &q, sizeof q) ==
            CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "belongs to another backend"),
        std::string("foreign buffer: ") + cmo_last_error());
  cmo_buffer* x2 = make(be, {2, 2, 8, 8, 8});
  cmo_buffer* ywrong = make(be, {2, 16, 8, 8, 7});
  std::vector<cmo_buffer*> ins2{x2, w, nullptr}, wrong{ywrong};
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, ins2.data(), 3, wrong.data(), 1, &q, sizeof q) ==
            CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "CONV3D_FORWARD: output 0 has shape [2,16,8,8,7], expected [2,16,8,8,8]"),
        std::string("wrong output shape: ") + cmo_last_error());
  q.has_bias = 1;
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, ins2.data(), 3, outs.data(), 1, &q, sizeof q) ==
            CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "has_bias = 1 but the bias input is NULL"),
        std::string("missing bias: ") + cmo_last_error());
  q.has_bias = 0;
  q.stride[1] = 0;
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, ins2.data(), 3, outs.data(), 1, &q, sizeof q) ==
            CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "stride [1,0,1] must be >= 1"),
        std::string("zero stride: ") + cmo_last_error());
  q.stride[1] = 1;
  CHECK_OK(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, ins2.data(), 3, outs.data(), 1, &q, sizeof q));
  check(std::string(cmo_last_error()).empty(), "last error is empty after a success");
  // Backward weights with stride 2 cannot guess the kernel size without a dw slot.
  cmo_conv3d_params q2 = q;
  for (int a = 0; a < 3; a++) q2.stride[a] = 2;
  cmo_buffer* dy2 = make(be, {2, 16, 4, 4, 4});
  std::vector<cmo_buffer*> bw_in{x2, dy2}, bw_out{nullptr, nullptr};
  check(cmo_op_execute(be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, bw_in.data(), 2, bw_out.data(), 2, &q2, sizeof q2) ==
            CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "several sizes fit"),
        std::string("ambiguous kernel: ") + cmo_last_error());
  // An output slot that is also an input.
  cmo_conv3d_params q1{};
  for (int a = 0; a < 3; a++) q1.stride[a] = q1.padding[a] = q1.dilation[a] = 1;
  cmo_buffer* xs = make(be, {1, 16, 4, 4, 4});
  cmo_buffer* ws = make(be, {16, 16, 3, 3, 3}, CMO_LAYOUT_PLAIN);
  std::vector<cmo_buffer*> same_in{xs, ws, nullptr}, same_out{xs};
  check(cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, same_in.data(), 3, same_out.data(), 1, &q1, sizeof q1) ==
            CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "CONV3D_FORWARD: output 0 is also input 0"),
        std::string("in-place conv: ") + cmo_last_error());
  cmo_buffer_release(xs);
  cmo_buffer_release(ws);
  // Group norm with groups not dividing C.
  cmo_buffer* gam = make(be, {3});
  cmo_group_norm_params gq{2, 1e-5, CMO_NORM_ACT_NONE, 0.0};
  cmo_buffer* x3 = make(be, {1, 3, 4, 4, 4});
  std::vector<cmo_buffer*> gin{x3, gam, gam}, gout{nullptr, nullptr, nullptr};
  check(cmo_op_execute(be, CMO_OP_GROUP_NORM_FORWARD, gin.data(), 3, gout.data(), 3, &gq, sizeof gq) ==
            CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "GROUP_NORM_FORWARD: 3 channels of x [1,3,4,4,4] cannot be split into 2 groups"),
        std::string("group norm groups: ") + cmo_last_error());
  cmo_group_norm_params gq_act{1, 1e-5, 7, 0.0};
  check(cmo_op_execute(be, CMO_OP_GROUP_NORM_FORWARD, gin.data(), 3, gout.data(), 3, &gq_act, sizeof gq_act) ==
                CMO_ERR_INVALID_ARGUMENT &&
            contains(cmo_last_error(), "unknown activation") && contains(cmo_last_error(), "got activation 7"),
        std::string("group norm activation: ") + cmo_last_error());
  for (auto* b : {x, w, xo, x2, ywrong, outs[0], dy2, gam, x3})
    if (b) cmo_buffer_release(b);

  g_case = "buffers";
  cmo_tensor_desc d{};
  d.ndim = 5;
  int64_t dd[5] = {2, 3, 4, 4, 4};
  std::memcpy(d.dims, dd, sizeof dd);
  d.layout = CMO_LAYOUT_BLOCKED16;
  cmo_buffer* bad_b = nullptr;
  check(cmo_buffer_create(be, &d, &bad_b) == CMO_ERR_INVALID_ARGUMENT && bad_b == nullptr,
        "blocked16 with C = 3 rejected");
  d.ndim = 7;
  check(cmo_buffer_create(be, &d, &bad_b) == CMO_ERR_INVALID_ARGUMENT, "7 dims rejected");
  for (int layout : {CMO_LAYOUT_PLAIN, CMO_LAYOUT_BLOCKED16, CMO_LAYOUT_ANY}) {
    std::vector<int64_t> dims{2, 32, 3, 5, 7};
    auto v = rand_vec((size_t)prod(dims));
    cmo_buffer* b = make_with(be, dims, v, layout);
    check(layout_of(b) == (layout == CMO_LAYOUT_PLAIN ? CMO_LAYOUT_PLAIN : CMO_LAYOUT_BLOCKED16), "layout kept/chosen");
    check(read(b) == v, "write/read round trip, layout " + std::to_string(layout));
    check(cmo_buffer_write(b, v.data(), 12) == CMO_ERR_INVALID_ARGUMENT && contains(cmo_last_error(), "got 12 bytes"),
          std::string("wrong byte count: ") + cmo_last_error());
    cmo_buffer_release(b);
  }
  // The blocked order is [N][C/16][D][H][W][16]: element (n=1, c=17, d=0, h=1, w=0) of a
  // [2,32,1,2,2] tensor (plain index ((1*32+17)*2+1)*2+0 = 198) sits at
  // ((((1*2+1)*1+0)*2+1)*2+0)*16+1 = 225.
  std::vector<float> seq(256);
  for (int i = 0; i < 256; i++) seq[(size_t)i] = (float)i;
  cmo_buffer* bb = make_with(be, {2, 32, 1, 2, 2}, seq, CMO_LAYOUT_BLOCKED16);
  const float* raw = reinterpret_cast<cmo::Buffer*>(bb)->f32();
  check(raw[225] == 198.0f && raw[0] == 0.0f && raw[1] == 4.0f && raw[16] == 1.0f, "blocked memory order");
  cmo_buffer_release(bb);
  cmo_buffer* z = make(be, {0, 4});
  check(z != nullptr && read(z).empty(), "zero-size buffer");
  if (z) cmo_buffer_release(z);
}

void test_cache_and_stats(cmo_backend* be) {
  g_case = "primitive cache";
  ConvCfg c = conv_case("conv blocked 32->32 k3 p1");
  auto q = c.params();
  cmo_buffer* x = make_with(be, c.xdims(), rand_vec((size_t)prod(c.xdims())));
  cmo_buffer* w = make_with(be, c.wdims(), rand_vec((size_t)prod(c.wdims())), CMO_LAYOUT_PLAIN);
  cmo_buffer* b = make_with(be, {c.Co}, rand_vec((size_t)c.Co));
  auto* ib = reinterpret_cast<cmo::Backend*>(be);
  auto step = [&] {
    std::vector<cmo_buffer*> y{nullptr}, dx{nullptr}, dw{nullptr, nullptr};
    conv_op(be, CMO_OP_CONV3D_FORWARD, {x, w, b}, y, q);
    conv_op(be, CMO_OP_CONV3D_BACKWARD_DATA, {y[0], w}, dx, q);
    conv_op(be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, y[0]}, dw, q);
    for (auto* o : {y[0], dx[0], dw[0], dw[1]})
      if (o) cmo_buffer_release(o);
  };
  step();
  int64_t m1 = cmo::cache_misses(ib);
  step();
  check(cmo::cache_misses(ib) == m1, "a second identical step creates no primitive");
  CHECK_OK(cmo_backend_trim(be));
  step();
  check(cmo::cache_misses(ib) == m1 + 3, "after trim the three primitives are created again");
  cmo_buffer_release(x);
  cmo_buffer_release(w);
  cmo_buffer_release(b);

  g_case = "memory stats";
  cmo_memory_stats s{};
  CHECK_OK(cmo_backend_memory_stats(be, &s));
  check(s.live_buffers == 0 && s.live_bytes == 0, "all buffers released: live " + std::to_string(s.live_buffers) +
                                                      " buffers, " + std::to_string(s.live_bytes) + " bytes");
  check(s.peak_bytes > 0, "peak recorded");
  cmo_buffer* big = make(be, {1000, 1000});
  CHECK_OK(cmo_backend_reset_peak(be));
  CHECK_OK(cmo_backend_memory_stats(be, &s));
  check(s.live_buffers == 1 && s.live_bytes == 4000000 && s.peak_bytes == 4000000, "live and peak after reset");
  cmo_buffer_release(big);
  CHECK_OK(cmo_backend_memory_stats(be, &s));
  check(s.live_bytes == 0 && s.peak_bytes == 4000000, "peak stays after release");
  check(s.pool_bytes >= 4000000, "a released large block is kept for reuse: pool " + std::to_string(s.pool_bytes));
  cmo_buffer* again = make(be, {1000, 1000});
  CHECK_OK(cmo_backend_memory_stats(be, &s));
  check(s.pool_bytes == 0 && s.live_bytes == 4000000, "the pooled block is reused for the same size");
  cmo_buffer_release(again);
  CHECK_OK(cmo_backend_trim(be));
  CHECK_OK(cmo_backend_memory_stats(be, &s));
  check(s.pool_bytes == 0, "trim empties the pool");
}

}  // namespace

int main() {
  cmo_backend* be = nullptr;
  cmo_backend* other = nullptr;
  if (cmo_backend_create(0, &be) != CMO_OK || cmo_backend_create(0, &other) != CMO_OK) {
    std::printf("cannot create a CPU backend: %s\n0 passed, 1 failed\n", cmo_last_error());
    return 1;
  }
  test_library_and_errors(be, other);
  for (const ConvCfg& c : conv_cases()) test_conv_case(be, c);
  test_conv_finite_differences(be);
  test_conv_layout_variants(be);
  test_group_norm(be, {2, 32, 3, 4, 5}, 32, CMO_LAYOUT_BLOCKED16, 0);
  test_group_norm(be, {2, 32, 3, 4, 5}, 32, CMO_LAYOUT_PLAIN, 0);
  test_group_norm(be, {2, 48, 2, 3, 3}, 16, CMO_LAYOUT_BLOCKED16, 3, CMO_LAYOUT_PLAIN);  // groups of 3 straddle
                                                                                        // blocks; dy plain
  test_group_norm(be, {2, 32, 2, 3, 3}, 4, CMO_LAYOUT_BLOCKED16, 0);   // groups of 8
  test_group_norm(be, {1, 64, 2, 2, 2}, 2, CMO_LAYOUT_BLOCKED16, 0);   // groups of 2 blocks
  test_group_norm(be, {2, 6, 5, 7}, 3, CMO_LAYOUT_PLAIN, 0);           // 4-D plain
  test_group_norm(be, {1, 16, 40, 40, 40}, 16, CMO_LAYOUT_BLOCKED16, 100);  // large offset, many chunks
  test_group_norm(be, {1, 2, 40, 40, 41}, 1, CMO_LAYOUT_PLAIN, 100);
  // Tokens [T, C] (no spatial extent: layer norm is groups = 1), plain fast path.
  test_group_norm(be, {64, 24}, 1, CMO_LAYOUT_PLAIN, 2);
  test_group_norm(be, {64, 24}, 4, CMO_LAYOUT_PLAIN, 0, -1, CMO_NORM_ACT_LEAKY_RELU);
  // Fused activations, both layouts, per-channel and grouped statistics.
  test_group_norm(be, {2, 32, 3, 4, 5}, 32, CMO_LAYOUT_BLOCKED16, 0, -1, CMO_NORM_ACT_LEAKY_RELU);
  test_group_norm(be, {2, 32, 3, 4, 5}, 32, CMO_LAYOUT_PLAIN, 0, -1, CMO_NORM_ACT_RELU);
  test_group_norm(be, {2, 48, 2, 3, 3}, 16, CMO_LAYOUT_BLOCKED16, 3, CMO_LAYOUT_PLAIN, CMO_NORM_ACT_LEAKY_RELU);
  test_group_norm(be, {2, 6, 5, 7}, 3, CMO_LAYOUT_PLAIN, 0, -1, CMO_NORM_ACT_LEAKY_RELU);
  test_cache_and_stats(be);
  g_case = "teardown";
  // A backend destroyed while a buffer lives is freed with that buffer (ASan checks the leak).
  cmo_backend* tmp_be = nullptr;
  CHECK_OK(cmo_backend_create(0, &tmp_be));
  cmo_buffer* survivor = make(tmp_be, {1000, 300});
  CHECK_OK(cmo_backend_destroy(tmp_be));
  CHECK_OK(cmo_buffer_release(survivor));
  CHECK_OK(cmo_backend_destroy(other));
  CHECK_OK(cmo_backend_destroy(be));
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
