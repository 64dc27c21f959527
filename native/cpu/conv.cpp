// conv.cpp — 3D convolution and transposed convolution on oneDNN: forward, backward-data,
// backward-weights (CONV3D_* and CONV_TRANSPOSE3D_* ops of comodal.h).
//
// Activations with C % 16 == 0 run in BLOCKED16 (oneDNN nCdhw16c). The others stay PLAIN in the
// API: a forward input with few channels (the image) is given to oneDNN as plain ncdhw (its jit
// kernels take that directly), while an output-side tensor with few channels (class logits and
// their gradient) uses the format oneDNN picks (a zero-padded blocked one) and is reordered at the
// edge: a plain diff_dst made oneDNN fall back to its reference kernels, 100x slower. 1x1x1 heads to
// a few classes skip oneDNN altogether (chunked sgemm, see is_head).
//
// Weights are PLAIN in the API (PyTorch layout) and reordered to the primitive's format on each call
// (a few hundred KiB at most, on the calling thread). Primitive descriptors use format_tag::any for
// weights (and for outputs whose layout oneDNN may pick), also in the backward passes (reusing the
// forward's weights format there selects reference kernels), and are cached per backend by a key of
// everything that shapes them, so a training step creates none after the first.
#include <omp.h>

#include <array>
#include <algorithm>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

#include "dnnl_ctx.hpp"
#include "internal.hpp"

namespace cmo {
namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// Geometry of one (transposed) convolution in API terms.
struct Geo {
  bool transposed = false;
  int64_t N = 0, Ci = 0, Co = 0;
  int64_t in[3] = {0, 0, 0};   // spatial dims of x (forward input)
  int64_t out[3] = {0, 0, 0};  // spatial dims of y (forward output)
  int64_t k[3] = {0, 0, 0};
  int64_t s[3] = {1, 1, 1};
  int64_t p[3] = {0, 0, 0};
  int64_t dil[3] = {1, 1, 1};

  Shape x_shape() const { return Shape{5, {N, Ci, in[0], in[1], in[2], 0}}; }
  Shape y_shape() const { return Shape{5, {N, Co, out[0], out[1], out[2], 0}}; }
  // Weights in the API (PyTorch) layout: conv [Co,Ci,k], transposed conv [Ci,Co,k].
  Shape w_shape() const {
    return transposed ? Shape{5, {Ci, Co, k[0], k[1], k[2], 0}} : Shape{5, {Co, Ci, k[0], k[1], k[2], 0}};
  }
};

int64_t conv_out(int64_t i, int64_t k, int64_t s, int64_t p, int64_t d) {
  int64_t num = i + 2 * p - d * (k - 1) - 1;
  return num < 0 ? 0 : num / s + 1;
}
int64_t deconv_out(int64_t i, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (i - 1) * s - 2 * p + d * (k - 1) + 1;
}
int64_t fwd_out(const Geo& g, int a) {
  return g.transposed ? deconv_out(g.in[a], g.k[a], g.s[a], g.p[a], g.dil[a])
                      : conv_out(g.in[a], g.k[a], g.s[a], g.p[a], g.dil[a]);
}

std::string tri(const int64_t* v) {
  return "[" + std::to_string(v[0]) + "," + std::to_string(v[1]) + "," + std::to_string(v[2]) + "]";
}

void read_params(const cmo_conv3d_params& prm, Geo& g, const char* op) {
  for (int a = 0; a < 3; a++) {
    g.s[a] = prm.stride[a];
    g.p[a] = prm.padding[a];
    g.dil[a] = prm.dilation[a];
    if (g.s[a] < 1) fail(std::string(op) + ": stride " + tri(prm.stride) + " must be >= 1 on every axis");
    if (g.p[a] < 0) fail(std::string(op) + ": padding " + tri(prm.padding) + " must be >= 0 on every axis");
    if (g.dil[a] < 1)
      fail(std::string(op) + ": dilation " + tri(prm.dilation) + " must be >= 1 on every axis (1 = dense)");
  }
}

void check_f32_5d(const Buffer* b, const char* op, const char* what) {
  if (b->dtype != CMO_DTYPE_F32) fail(std::string(op) + ": " + what + " must be f32");
  if (b->shape.ndim != 5)
    fail(std::string(op) + ": " + what + " " + b->shape.str() + " must have 5 dimensions (NCDHW)");
}

void check_weights(const Buffer* w, const char* op) {
  if (w->dtype != CMO_DTYPE_F32) fail(std::string(op) + ": w must be f32");
  if (w->shape.ndim != 5)
    fail(std::string(op) + ": w " + w->shape.str() + " must have 5 dimensions");
  for (int i = 0; i < 5; i++)
    if (w->shape.d[i] < 1) fail(std::string(op) + ": w " + w->shape.str() + " has an empty dimension");
}

// Outputs are written while inputs are read: an output slot that is also an input is refused.
void check_no_alias(const KernelArgs& a, const char* op) {
  for (int o = 0; o < a.n_out; o++)
    for (int i = 0; i < a.n_in; i++)
      if (a.out[o] != nullptr && a.out[o] == a.in[i])
        fail(std::string(op) + ": output " + std::to_string(o) + " is also input " + std::to_string(i) +
             " (convolutions cannot run in place)");
}

void check_out_sizes(const Geo& g, const char* op) {
  for (int a = 0; a < 3; a++)
    if (g.out[a] < 1)
      fail(std::string(op) + ": input spatial " + tri(g.in) + " with kernel " + tri(g.k) + ", stride " +
           tri(g.s) + ", padding " + tri(g.p) + ", dilation " + tri(g.dil) + " gives an empty output");
}

// Layout an activation with c channels runs in: blocked when c % 16 == 0, else plain.
cmo_layout act_layout(int64_t c) { return c % 16 == 0 ? CMO_LAYOUT_BLOCKED16 : CMO_LAYOUT_PLAIN; }

memory::dims dims5(const Shape& s) { return {s.d[0], s.d[1], s.d[2], s.d[3], s.d[4]}; }

memory::desc act_md(const Shape& s, cmo_layout l) {
  return memory::desc(dims5(s), dt::f32, l == CMO_LAYOUT_BLOCKED16 ? tag::nCdhw16c : tag::ncdhw);
}
// A descriptor oneDNN may choose for a tensor with c channels (blocked is forced when c % 16 == 0).
memory::desc act_md_choice(const Shape& s) {
  return memory::desc(dims5(s), dt::f32, s.d[1] % 16 == 0 ? tag::nCdhw16c : tag::any);
}
memory::dims wdims(const Geo& g) { return {g.Co, g.Ci, g.k[0], g.k[1], g.k[2]}; }
memory::desc user_w_md(const Geo& g) {
  return memory::desc(wdims(g), dt::f32, g.transposed ? tag::iodhw : tag::oidhw);
}
memory::desc any_w_md(const Geo& g) { return memory::desc(wdims(g), dt::f32, tag::any); }
memory::desc bias_md(const Geo& g, bool on) {
  return on ? memory::desc({g.Co}, dt::f32, tag::x) : memory::desc();
}

std::string key_of(const char* kind, const Geo& g, cmo_layout xl, cmo_layout yl, bool bias, int nthr) {
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "conv:%s:%d:N%lld:Ci%lld:Co%lld:in%lldx%lldx%lld:k%lldx%lldx%lld:s%lldx%lldx%lld:"
                "p%lldx%lldx%lld:d%lldx%lldx%lld:xl%d:yl%d:b%d:t%d",
                kind, (int)g.transposed, (long long)g.N, (long long)g.Ci, (long long)g.Co,
                (long long)g.in[0], (long long)g.in[1], (long long)g.in[2], (long long)g.k[0],
                (long long)g.k[1], (long long)g.k[2], (long long)g.s[0], (long long)g.s[1],
                (long long)g.s[2], (long long)g.p[0], (long long)g.p[1], (long long)g.p[2],
                (long long)g.dil[0], (long long)g.dil[1], (long long)g.dil[2], (int)xl, (int)yl, (int)bias,
                nthr);
  return buf;
}

struct OpDims {
  memory::dims strides, dilates, pad;
};
OpDims op_dims(const Geo& g) {
  return {{g.s[0], g.s[1], g.s[2]},
          {g.dil[0] - 1, g.dil[1] - 1, g.dil[2] - 1},
          {g.p[0], g.p[1], g.p[2]}};
}

// The oneDNN primitive families of a convolution or a transposed convolution.
template <bool T>
struct Fam;
template <>
struct Fam<false> {
  using Fwd = dnnl::convolution_forward;
  using BwdD = dnnl::convolution_backward_data;
  using BwdW = dnnl::convolution_backward_weights;
  static constexpr dnnl::algorithm alg = dnnl::algorithm::convolution_direct;
};
template <>
struct Fam<true> {
  using Fwd = dnnl::deconvolution_forward;
  using BwdD = dnnl::deconvolution_backward_data;
  using BwdW = dnnl::deconvolution_backward_weights;
  static constexpr dnnl::algorithm alg = dnnl::algorithm::deconvolution_direct;
};

template <bool T>
typename Fam<T>::Fwd::primitive_desc fwd_pd(const Geo& g, const memory::desc& src, const memory::desc& bias,
                                             const memory::desc& dst, dnnl::prop_kind pk, dnnl::engine& eng) {
  OpDims o = op_dims(g);
  typename Fam<T>::Fwd::desc d(pk, Fam<T>::alg, src, any_w_md(g), bias, dst, o.strides, o.dilates, o.pad,
                               o.pad);
  return typename Fam<T>::Fwd::primitive_desc(d, eng);
}

// A reorder between two descriptors, with dst += src when `accumulate`.
dnnl::reorder make_reorder(const memory::desc& from, const memory::desc& to, dnnl::engine& eng, bool accumulate) {
  dnnl::primitive_attr attr;
  if (accumulate) {
    dnnl::post_ops po;
    po.append_sum(1.0f);
    attr.set_post_ops(po);
  }
  return dnnl::reorder(dnnl::reorder::primitive_desc(eng, from, eng, to, attr));
}

// Runs a small oneDNN primitive (a weights reorder) on the calling thread only: waking the OpenMP team
// for a few KiB costs more than the work, and much more on a busy machine.
template <typename F>
void serially(F&& f) {
  int saved = omp_get_max_threads();
  if (saved > 1) omp_set_num_threads(1);
  try {
    f();
  } catch (...) {
    if (saved > 1) omp_set_num_threads(saved);
    throw;
  }
  if (saved > 1) omp_set_num_threads(saved);
}

// An API buffer as a oneDNN memory in the primitive's format: the buffer itself when formats agree,
// else a reordered copy.
memory input_mem(const Buffer* b, const memory::desc& want, dnnl::engine& eng, dnnl::stream& strm) {
  memory um(act_md(b->shape, b->layout), eng, b->data);
  if (um.get_desc() == want) return um;
  memory m(want, eng);
  dnnl::reorder(um, m).execute(strm, um, m);
  return m;
}

// Adds bias[c] to every element of channel c of a 5-D tensor (plain or blocked).
void add_bias(Backend* be, Buffer* y, const float* bias) {
  const Shape& s = y->shape;
  const int64_t N = s.d[0], C = s.d[1], S = s.d[2] * s.d[3] * s.d[4];
  float* d = y->f32();
  if (y->blocked()) {
    parallel_for(be, N * (C / 16), [&](int64_t u) {
      const float* bp = bias + (u % (C / 16)) * 16;
      float* p = d + u * S * 16;
      for (int64_t i = 0; i < S; i++)
#pragma omp simd
        for (int l = 0; l < 16; l++) p[i * 16 + l] += bp[l];
    });
  } else {
    parallel_for(be, N * C, [&](int64_t u) {
      const float bv = bias[u % C];
      float* p = d + u * S;
#pragma omp simd
      for (int64_t i = 0; i < S; i++) p[i] += bv;
    });
  }
}

struct FwdEntry {
  dnnl::primitive prim;
  memory::desc src, wei, dst, user_wei;
  bool wei_same = false;
  dnnl::reorder wei_reorder;
};

struct BwdDataEntry {
  dnnl::primitive prim;
  memory::desc diff_dst, wei, diff_src, user_wei;
  bool wei_same = false;
  dnnl::reorder wei_reorder;
};

struct BwdWeightsEntry {
  dnnl::primitive prim;
  memory::desc src, diff_dst, diff_wei, user_wei;
  bool wei_same = false;
  dnnl::reorder to_user;      // diff weights -> user layout (=)
  dnnl::reorder to_user_acc;  // diff weights -> user layout (+=)
  // oneDNN 2.6 has no optimised weight gradient when a spatial input axis is shorter than the kernel
  // (it falls back to its reference code, 100-300x slower). Then x is zero-padded by hand and the
  // primitive runs without padding: the same result. prepad[a] = padding moved into x along axis a.
  bool prepadded = false;
  int64_t prepad[3] = {0, 0, 0};
  // Nor for a plain input with 4-15 channels (four MRI sequences): ~1000x slower (1 s instead of
  // 1 ms at 2x4x32^3). Then x is copied into a 16-channel blocked buffer, zero beyond its channels,
  // the blocked primitive runs, and the first Ci input channels of its weight gradient are kept:
  // the same result. chanpad = 16 then (0 otherwise).
  int64_t chanpad = 0;
};

// Copies x [N,C,D,H,W] (plain or blocked) into the interior of xp, whose spatial dims are larger by
// 2*pad[a], and zeroes the border.
void pad_spatial(Backend* be, const Buffer* x, Buffer* xp, const int64_t* pad) {
  const Shape& s = x->shape;
  const Shape& t = xp->shape;
  const int64_t L = x->blocked() ? 16 : 1;
  const int64_t units = s.d[0] * (x->blocked() ? s.d[1] / 16 : s.d[1]);
  const int64_t D = s.d[2], H = s.d[3], W = s.d[4], Dp = t.d[2], Hp = t.d[3], Wp = t.d[4];
  const float* src = x->f32();
  float* dst = xp->f32();
  parallel_for(be, units, [&](int64_t u) {
    float* du = dst + u * Dp * Hp * Wp * L;
    std::fill(du, du + Dp * Hp * Wp * L, 0.0f);
    const float* su = src + u * D * H * W * L;
    for (int64_t d = 0; d < D; d++)
      for (int64_t h = 0; h < H; h++)
        std::copy(su + ((d * H + h) * W) * L, su + ((d * H + h) * W + W) * L,
                  du + (((d + pad[0]) * Hp + h + pad[1]) * Wp + pad[2]) * L);
  });
}

// Weights in the primitive's format: the API buffer itself or a reordered copy.
memory weights_mem(const memory::desc& user, const memory::desc& want, bool same, dnnl::reorder& r,
                   const Buffer* w, dnnl::engine& eng, dnnl::stream& strm) {
  memory um(user, eng, w->data);
  if (same) return um;
  memory m(want, eng);
  serially([&] { r.execute(strm, um, m); });
  return m;
}

// An output in the primitive's format: the API buffer when formats agree, else a scratch memory that
// finish() reorders into the buffer.
struct OutMem {
  memory mem;
  memory user;
  bool scratch = false;
  OutMem(const memory::desc& want, Buffer* out, dnnl::engine& eng) {
    memory::desc umd = act_md(out->shape, out->layout);
    user = memory(umd, eng, out->data);
    if (umd == want) {
      mem = user;
    } else {
      mem = memory(want, eng);
      scratch = true;
    }
  }
  void finish(dnnl::stream& strm) {
    if (scratch) dnnl::reorder(mem, user).execute(strm, mem, user);
  }
};

// ------------------------------------------------------------------------------ 1x1x1 heads
// A 1x1x1 convolution from C % 16 == 0 channels to a few (class logits: Co % 16 != 0) is a small
// matrix product per voxel. oneDNN runs it with a zero-padded 16-channel output plus reorders, which
// is 5-7x slower than these sgemm calls over chunks of voxels (x blocked: a chunk of one 16-channel
// block is a row-major [len,16] matrix; y and dy are plain: [Co,len] with row stride S).
bool is_head(const Geo& g) {
  if (g.transposed || g.Ci % 16 != 0 || g.Co % 16 == 0) return false;
  for (int a = 0; a < 3; a++)
    if (g.k[a] != 1 || g.s[a] != 1 || g.p[a] != 0 || g.dil[a] != 1) return false;
  return true;
}

constexpr int64_t kHeadChunk = 8192;  // voxels per task

struct HeadDims {
  int64_t N, Ci, CB, Co, S, chunks;
};
HeadDims head_dims(const Geo& g) {
  int64_t S = g.in[0] * g.in[1] * g.in[2];
  return {g.N, g.Ci, g.Ci / 16, g.Co, S, (S + kHeadChunk - 1) / kHeadChunk};
}

void sgemm_or_throw(char ta, char tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float beta, float* C, int64_t ldc) {
  dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
  if (st != dnnl_success) throw dnnl::error(st, "dnnl_sgemm failed in a 1x1x1 convolution");
}

// Runs f(n, s0, len) over all (sample, voxel chunk) pairs; sgemm inside a parallel region is serial.
template <typename F>
void head_parallel(Backend* be, const HeadDims& h, F&& f) {
  parallel_for(be, h.N * h.chunks, [&](int64_t t) {
    int64_t n = t / h.chunks, s0 = (t % h.chunks) * kHeadChunk;
    f(n, s0, std::min(kHeadChunk, h.S - s0));
  });
}

void head_forward(Backend* be, const Geo& g, const Buffer* xb, const float* w, const float* bias, Buffer* y) {
  HeadDims h = head_dims(g);
  const float* x = xb->f32();
  float* yd = y->f32();
  head_parallel(be, h, [&](int64_t n, int64_t s0, int64_t len) {
    float* yn = yd + n * h.Co * h.S + s0;
    for (int64_t cb = 0; cb < h.CB; cb++)
      sgemm_or_throw('N', 'T', h.Co, len, 16, w + cb * 16, h.Ci, x + ((n * h.CB + cb) * h.S + s0) * 16, 16,
                     cb == 0 ? 0.0f : 1.0f, yn, h.S);
    if (bias)
      for (int64_t co = 0; co < h.Co; co++) {
        float* row = yn + co * h.S;
        const float bv = bias[co];
        for (int64_t i = 0; i < len; i++) row[i] += bv;
      }
  });
}

void head_backward_data(Backend* be, const Geo& g, const Buffer* dyb, const float* w, Buffer* dx) {
  HeadDims h = head_dims(g);
  const float* dy = dyb->f32();
  float* dxd = dx->f32();
  head_parallel(be, h, [&](int64_t n, int64_t s0, int64_t len) {
    for (int64_t cb = 0; cb < h.CB; cb++)
      sgemm_or_throw('T', 'N', len, 16, h.Co, dy + n * h.Co * h.S + s0, h.S, w + cb * 16, h.Ci, 0.0f,
                     dxd + ((n * h.CB + cb) * h.S + s0) * 16, 16);
  });
}

// Partial sums per task in fixed chunks, reduced in task order: the result does not depend on the
// thread count. dw (and db) get += when `accumulate`, = otherwise.
void head_backward_weights(Backend* be, const Geo& g, const Buffer* xb, const Buffer* dyb, float* dw, bool accumulate,
                           float* db, bool db_accumulate) {
  HeadDims h = head_dims(g);
  const float* x = xb->f32();
  const float* dy = dyb->f32();
  const int64_t T = h.N * h.chunks, WB = h.Co * h.Ci;
  std::vector<float> part((size_t)(T * WB));
  std::vector<double> bpart(db ? (size_t)(T * h.Co) : 0);
  head_parallel(be, h, [&](int64_t n, int64_t s0, int64_t len) {
    int64_t t = n * h.chunks + s0 / kHeadChunk;
    const float* dyn = dy + n * h.Co * h.S + s0;
    for (int64_t cb = 0; cb < h.CB; cb++)
      sgemm_or_throw('N', 'N', h.Co, 16, len, dyn, h.S, x + ((n * h.CB + cb) * h.S + s0) * 16, 16, 0.0f,
                     &part[(size_t)(t * WB + cb * 16)], h.Ci);
    if (db)
      for (int64_t co = 0; co < h.Co; co++) {
        const float* row = dyn + co * h.S;
        double acc = 0;
        for (int64_t i = 0; i < len; i++) acc += row[i];
        bpart[(size_t)(t * h.Co + co)] = acc;
      }
  });
  std::vector<double> sum((size_t)WB, 0.0), bsum((size_t)h.Co, 0.0);
  for (int64_t t = 0; t < T; t++) {
    for (int64_t i = 0; i < WB; i++) sum[(size_t)i] += part[(size_t)(t * WB + i)];
    if (db)
      for (int64_t co = 0; co < h.Co; co++) bsum[(size_t)co] += bpart[(size_t)(t * h.Co + co)];
  }
  for (int64_t i = 0; i < WB; i++) dw[i] = (float)((accumulate ? (double)dw[i] : 0.0) + sum[(size_t)i]);
  if (db)
    for (int64_t co = 0; co < h.Co; co++)
      db[co] = (float)((db_accumulate ? (double)db[co] : 0.0) + bsum[(size_t)co]);
}

// ------------------------------------------------------------------------------ forward
template <bool T>
void forward_kernel(const KernelArgs& a) {
  const char* op = T ? "CONV_TRANSPOSE3D_FORWARD" : "CONV3D_FORWARD";
  const auto& prm = a.p<cmo_conv3d_params>(op);
  const Buffer* x = a.in[0];
  const Buffer* w = a.in[1];
  const Buffer* b = a.in[2];
  check_f32_5d(x, op, "x");
  check_weights(w, op);
  Geo g;
  g.transposed = T;
  read_params(prm, g, op);
  g.N = x->shape.d[0];
  g.Ci = x->shape.d[1];
  g.Co = T ? w->shape.d[1] : w->shape.d[0];
  int64_t wci = T ? w->shape.d[0] : w->shape.d[1];
  if (wci != g.Ci)
    fail(std::string(op) + ": x " + x->shape.str() + " has " + std::to_string(g.Ci) + " channels, w " +
         w->shape.str() + " expects " + std::to_string(wci) + (T ? " (w is [Ci,Co,kd,kh,kw])" : ""));
  for (int i = 0; i < 3; i++) {
    g.in[i] = x->shape.d[2 + i];
    g.k[i] = w->shape.d[2 + i];
  }
  if (g.N < 1 || g.Ci < 1 || g.in[0] < 1 || g.in[1] < 1 || g.in[2] < 1)
    fail(std::string(op) + ": x " + x->shape.str() + " is empty");
  bool has_bias = b != nullptr;
  if (prm.has_bias != 0 && !has_bias) fail(std::string(op) + ": params.has_bias = 1 but the bias input is NULL");
  if (has_bias) {
    if (b->dtype != CMO_DTYPE_F32 || b->shape.ndim != 1 || b->shape.d[0] != g.Co)
      fail(std::string(op) + ": bias " + b->shape.str() + " must be f32 [" + std::to_string(g.Co) + "]");
  }
  for (int i = 0; i < 3; i++) g.out[i] = fwd_out(g, i);
  check_out_sizes(g, op);

  Backend* be = a.backend;
  dnnl::engine& eng = dnnl_engine(be);
  dnnl::stream& strm = dnnl_stream(be);
  cmo_layout xl = act_layout(g.Ci);
  TempBuffer xt;
  const Buffer* xu = as_layout(x, xl, xt);
  Shape ys = g.y_shape();
  check_no_alias(a, op);
  Buffer* y = a.output(0, ys, CMO_DTYPE_F32, preferred_layout(ys, CMO_DTYPE_F32), op);
  if (is_head(g)) {  // y is plain (Co % 16 != 0), x blocked
    TempBuffer wt;
    head_forward(be, g, xu, as_layout(w, CMO_LAYOUT_PLAIN, wt)->f32(), has_bias ? b->f32() : nullptr, y);
    return;
  }
  // oneDNN 2.6 applies a transposed conv's bias in a slow separate pass: we add it ourselves.
  bool dnnl_bias = has_bias && !T;

  auto e = cached<FwdEntry>(be, key_of("fwd", g, xl, CMO_LAYOUT_ANY, dnnl_bias, threads(be)), [&] {
    FwdEntry en;
    auto pd = fwd_pd<T>(g, act_md(g.x_shape(), xl), bias_md(g, dnnl_bias), act_md_choice(ys),
                        dnnl::prop_kind::forward_training, eng);
    en.prim = typename Fam<T>::Fwd(pd);
    en.src = pd.src_desc();
    en.wei = pd.weights_desc();
    en.dst = pd.dst_desc();
    en.user_wei = user_w_md(g);
    en.wei_same = en.user_wei == en.wei;
    if (!en.wei_same) en.wei_reorder = make_reorder(en.user_wei, en.wei, eng, false);
    return en;
  });

  memory src(e->src, eng, xu->data);
  TempBuffer wt;  // weights made by an op may be blocked (5-D, dims[1] % 16 == 0): use them plain
  memory wm = weights_mem(e->user_wei, e->wei, e->wei_same, e->wei_reorder, as_layout(w, CMO_LAYOUT_PLAIN, wt), eng,
                          strm);
  OutMem dst(e->dst, y, eng);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, dst.mem}};
  if (dnnl_bias) args[DNNL_ARG_BIAS] = memory(bias_md(g, true), eng, b->data);
  e->prim.execute(strm, args);
  dst.finish(strm);
  strm.wait();
  if (has_bias && !dnnl_bias) add_bias(be, y, b->f32());
}

// ------------------------------------------------------------------------------ backward data
template <bool T>
void backward_data_kernel(const KernelArgs& a) {
  const char* op = T ? "CONV_TRANSPOSE3D_BACKWARD_DATA" : "CONV3D_BACKWARD_DATA";
  const auto& prm = a.p<cmo_conv3d_params>(op);
  const Buffer* dy = a.in[0];
  const Buffer* w = a.in[1];
  check_f32_5d(dy, op, "dy");
  check_weights(w, op);
  Geo g;
  g.transposed = T;
  read_params(prm, g, op);
  g.N = dy->shape.d[0];
  g.Co = dy->shape.d[1];
  g.Ci = T ? w->shape.d[0] : w->shape.d[1];
  int64_t wco = T ? w->shape.d[1] : w->shape.d[0];
  if (wco != g.Co)
    fail(std::string(op) + ": dy " + dy->shape.str() + " has " + std::to_string(g.Co) + " channels, w " +
         w->shape.str() + " produces " + std::to_string(wco));
  for (int i = 0; i < 3; i++) {
    g.in[i] = prm.in_dims[i];
    g.k[i] = w->shape.d[2 + i];
    if (g.in[i] < 1)
      fail(std::string(op) + ": params.in_dims " + tri(prm.in_dims) + " must give the forward input's spatial dims");
  }
  for (int i = 0; i < 3; i++) g.out[i] = fwd_out(g, i);
  for (int i = 0; i < 3; i++)
    if (g.out[i] != dy->shape.d[2 + i])
      fail(std::string(op) + ": dy " + dy->shape.str() + " does not match the forward output " +
           g.y_shape().str() + " of input spatial " + tri(g.in) + " with kernel " + tri(g.k) + ", stride " +
           tri(g.s) + ", padding " + tri(g.p));

  Backend* be = a.backend;
  dnnl::engine& eng = dnnl_engine(be);
  dnnl::stream& strm = dnnl_stream(be);
  Shape xs = g.x_shape();
  check_no_alias(a, op);
  Buffer* dx = a.output(0, xs, CMO_DTYPE_F32, preferred_layout(xs, CMO_DTYPE_F32), op);
  if (is_head(g)) {  // dy is plain (Co % 16 != 0); dx is computed blocked
    TempBuffer wt, dxt;
    Buffer* dxb = dx;
    if (!dx->blocked()) dxb = dxt.buf = alloc_buffer(be, xs, CMO_DTYPE_F32, CMO_LAYOUT_BLOCKED16);
    head_backward_data(be, g, dy, as_layout(w, CMO_LAYOUT_PLAIN, wt)->f32(), dxb);
    if (dxb != dx) reorder(dxb, dx);
    return;
  }

  auto e = cached<BwdDataEntry>(be, key_of("bwd_data", g, CMO_LAYOUT_ANY, CMO_LAYOUT_ANY, false, threads(be)), [&] {
    BwdDataEntry en;
    memory::desc dsrc = act_md_choice(xs);
    memory::desc ddst = act_md_choice(g.y_shape());
    auto hint = fwd_pd<T>(g, dsrc, memory::desc(), ddst, dnnl::prop_kind::forward_training, eng);
    OpDims o = op_dims(g);
    typename Fam<T>::BwdD::desc d(Fam<T>::alg, dsrc, any_w_md(g), ddst, o.strides, o.dilates, o.pad, o.pad);
    typename Fam<T>::BwdD::primitive_desc pd(d, eng, hint);
    en.prim = typename Fam<T>::BwdD(pd);
    en.diff_dst = pd.diff_dst_desc();
    en.wei = pd.weights_desc();
    en.diff_src = pd.diff_src_desc();
    en.user_wei = user_w_md(g);
    en.wei_same = en.user_wei == en.wei;
    if (!en.wei_same) en.wei_reorder = make_reorder(en.user_wei, en.wei, eng, false);
    return en;
  });

  memory ddst = input_mem(dy, e->diff_dst, eng, strm);
  TempBuffer wt;  // weights made by an op may be blocked (5-D, dims[1] % 16 == 0): use them plain
  memory wm = weights_mem(e->user_wei, e->wei, e->wei_same, e->wei_reorder, as_layout(w, CMO_LAYOUT_PLAIN, wt), eng,
                          strm);
  OutMem dsrc(e->diff_src, dx, eng);
  e->prim.execute(strm, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dsrc.mem}});
  dsrc.finish(strm);
  strm.wait();
}

// ------------------------------------------------------------------------------ backward weights
// The kernel size is not in the params: it comes from a given dw slot, or is inferred from the
// spatial sizes when only one size fits.
void infer_kernel(Geo& g, const char* op) {
  for (int a = 0; a < 3; a++) {
    int64_t found = 0, count = 0;
    if (g.transposed) {
      int64_t num = g.out[a] - (g.in[a] - 1) * g.s[a] + 2 * g.p[a] - 1;
      if (num >= 0 && num % g.dil[a] == 0) {
        found = num / g.dil[a] + 1;
        count = 1;
      }
    } else {
      for (int64_t k = 1; k <= g.in[a] + 2 * g.p[a]; k++)
        if (conv_out(g.in[a], k, g.s[a], g.p[a], g.dil[a]) == g.out[a]) {
          if (count == 0) found = k;
          count++;
        }
    }
    if (count != 1)
      fail(std::string(op) + ": cannot infer the kernel size on axis " + std::to_string(a) + " from input " +
           std::to_string(g.in[a]) + " and output " + std::to_string(g.out[a]) + " (" +
           (count == 0 ? "no size fits" : "several sizes fit") + "); pass a dw output slot");
    g.k[a] = found;
  }
}

template <bool T>
void backward_weights_kernel(const KernelArgs& a) {
  const char* op = T ? "CONV_TRANSPOSE3D_BACKWARD_WEIGHTS" : "CONV3D_BACKWARD_WEIGHTS";
  const auto& prm = a.p<cmo_conv3d_params>(op);
  const Buffer* x = a.in[0];
  const Buffer* dy = a.in[1];
  check_f32_5d(x, op, "x");
  check_f32_5d(dy, op, "dy");
  Geo g;
  g.transposed = T;
  read_params(prm, g, op);
  g.N = x->shape.d[0];
  g.Ci = x->shape.d[1];
  g.Co = dy->shape.d[1];
  if (dy->shape.d[0] != g.N)
    fail(std::string(op) + ": x " + x->shape.str() + " and dy " + dy->shape.str() + " have different batch sizes");
  for (int i = 0; i < 3; i++) {
    g.in[i] = x->shape.d[2 + i];
    g.out[i] = dy->shape.d[2 + i];
  }
  Buffer* dw_given = a.out[0];
  if (dw_given) {
    const Shape& ws = dw_given->shape;
    if (ws.ndim != 5) fail(std::string(op) + ": dw " + ws.str() + " must have 5 dimensions");
    for (int i = 0; i < 3; i++) g.k[i] = ws.d[2 + i];
  } else {
    infer_kernel(g, op);
  }
  for (int i = 0; i < 3; i++)
    if (fwd_out(g, i) != g.out[i])
      fail(std::string(op) + ": dy " + dy->shape.str() + " does not match the forward output of x " +
           x->shape.str() + " with kernel " + tri(g.k) + ", stride " + tri(g.s) + ", padding " + tri(g.p) +
           ", dilation " + tri(g.dil));
  bool dw_alloc = false, db_alloc = false;
  check_no_alias(a, op);
  Buffer* dw = a.output(0, g.w_shape(), CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, op, &dw_alloc);
  Buffer* db = nullptr;
  if (a.out[1] != nullptr || prm.has_bias != 0)
    db = a.output(1, Shape{1, {g.Co, 0, 0, 0, 0, 0}}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, op, &db_alloc);
  bool with_bias = db != nullptr;

  Backend* be = a.backend;
  dnnl::engine& eng = dnnl_engine(be);
  dnnl::stream& strm = dnnl_stream(be);
  cmo_layout xl = act_layout(g.Ci);
  TempBuffer xt;
  const Buffer* xu = as_layout(x, xl, xt);
  if (is_head(g)) {
    TempBuffer dwt, dyt;
    Buffer* dwp = dw;
    if (dw->layout != CMO_LAYOUT_PLAIN) {
      dwt.buf = alloc_buffer(be, dw->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
      reorder(dw, dwt.buf);
      dwp = dwt.buf;
    }
    head_backward_weights(be, g, xu, as_layout(dy, CMO_LAYOUT_PLAIN, dyt), dwp->f32(), !dw_alloc,
                          with_bias ? db->f32() : nullptr, !db_alloc);
    if (dwp != dw) reorder(dwp, dw);
    return;
  }

  auto e = cached<BwdWeightsEntry>(be, key_of("bwd_w", g, xl, CMO_LAYOUT_ANY, with_bias, threads(be)), [&] {
    BwdWeightsEntry en;
    memory::desc src = act_md(g.x_shape(), xl);
    memory::desc ddst = act_md_choice(g.y_shape());
    memory::desc bmd = bias_md(g, with_bias);
    auto hint = fwd_pd<T>(g, src, bmd, ddst, dnnl::prop_kind::forward_training, eng);
    OpDims o = op_dims(g);
    typename Fam<T>::BwdW::desc d(Fam<T>::alg, src, any_w_md(g), bmd, ddst, o.strides, o.dilates, o.pad, o.pad);
    typename Fam<T>::BwdW::primitive_desc pd(d, eng, hint);
    bool small_axis = false;
    for (int a = 0; a < 3; a++) small_axis = small_axis || (g.in[a] < g.k[a] && g.p[a] > 0);
    if (!T && small_axis && std::string(pd.impl_info_str()).rfind("ref", 0) == 0) {
      Geo gp = g;
      for (int a = 0; a < 3; a++) {
        gp.in[a] += 2 * g.p[a];
        gp.p[a] = 0;
      }
      memory::desc psrc = act_md(gp.x_shape(), xl);
      auto phint = fwd_pd<T>(gp, psrc, bmd, ddst, dnnl::prop_kind::forward_training, eng);
      OpDims po = op_dims(gp);
      typename Fam<T>::BwdW::desc pdsc(Fam<T>::alg, psrc, any_w_md(gp), bmd, ddst, po.strides, po.dilates, po.pad,
                                      po.pad);
      typename Fam<T>::BwdW::primitive_desc ppd(pdsc, eng, phint);
      if (std::string(ppd.impl_info_str()).rfind("ref", 0) != 0) {
        pd = ppd;
        en.prepadded = true;
        for (int a = 0; a < 3; a++) en.prepad[a] = g.p[a];
      }
    }
    // A plain input with 4-15 channels: see chanpad (format_tag::any, padded nCdhw16c and ndhwc
    // descriptors of the real channel count all select the reference code in oneDNN 2.6).
    if (!T && !en.prepadded && xl == CMO_LAYOUT_PLAIN && g.Ci < 16 &&
        std::string(pd.impl_info_str()).rfind("ref", 0) == 0) {
      Geo gc = g;
      gc.Ci = 16;
      memory::desc csrc = act_md(gc.x_shape(), CMO_LAYOUT_BLOCKED16);
      auto chint = fwd_pd<T>(gc, csrc, bmd, ddst, dnnl::prop_kind::forward_training, eng);
      typename Fam<T>::BwdW::desc cd(Fam<T>::alg, csrc, any_w_md(gc), bmd, ddst, o.strides, o.dilates, o.pad, o.pad);
      typename Fam<T>::BwdW::primitive_desc cpd(cd, eng, chint);
      if (std::string(cpd.impl_info_str()).rfind("ref", 0) != 0) {
        en.prim = typename Fam<T>::BwdW(cpd);
        en.src = cpd.src_desc();
        en.diff_dst = cpd.diff_dst_desc();
        en.diff_wei = cpd.diff_weights_desc();
        en.user_wei = user_w_md(gc);  // [Co, 16, k]: the first Ci input channels are copied out
        en.wei_same = false;
        en.to_user = make_reorder(en.diff_wei, en.user_wei, eng, false);
        en.to_user_acc = en.to_user;
        en.chanpad = 16;
        return en;
      }
    }
    en.prim = typename Fam<T>::BwdW(pd);
    en.src = pd.src_desc();
    en.diff_dst = pd.diff_dst_desc();
    en.diff_wei = pd.diff_weights_desc();
    en.user_wei = user_w_md(g);
    en.wei_same = en.user_wei == en.diff_wei;
    en.to_user = make_reorder(en.diff_wei, en.user_wei, eng, false);
    en.to_user_acc = make_reorder(en.diff_wei, en.user_wei, eng, true);
    return en;
  });

  if (e->chanpad) {
    // x plain [N, Ci, S] -> blocked [N, 1, S, 16], channels Ci..15 zero.
    const int64_t N = g.N, Ci = g.Ci, S = g.in[0] * g.in[1] * g.in[2];
    Shape cs = xu->shape;
    cs.d[1] = e->chanpad;
    TempBuffer xc;
    xc.buf = alloc_buffer(be, cs, CMO_DTYPE_F32, CMO_LAYOUT_BLOCKED16);
    const float* xs = xu->f32();
    float* xd = xc.buf->f32();
    parallel_for(be, N, [&](int64_t n) {
      float* dst = xd + n * S * 16;
      for (int64_t i = 0; i < S; i++) {
        const float* src = xs + n * Ci * S + i;
        float* q = dst + i * 16;
        for (int64_t c = 0; c < Ci; c++) q[c] = src[c * S];
        for (int64_t c = Ci; c < 16; c++) q[c] = 0.0f;
      }
    });
    memory srcm(e->src, eng, xc.buf->data);
    memory ddstm = input_mem(dy, e->diff_dst, eng, strm);
    memory dwm(e->diff_wei, eng);
    std::vector<float> wfull((size_t)(g.Co * 16 * g.k[0] * g.k[1] * g.k[2]));
    memory uw(e->user_wei, eng, wfull.data());
    std::vector<float> db_tmp;
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, srcm}, {DNNL_ARG_DIFF_DST, ddstm}, {DNNL_ARG_DIFF_WEIGHTS, dwm}};
    if (with_bias) {
      db_tmp.assign((size_t)g.Co, 0.0f);
      args[DNNL_ARG_DIFF_BIAS] = memory(bias_md(g, true), eng, db_tmp.data());
    }
    e->prim.execute(strm, args);
    serially([&] { e->to_user.execute(strm, dwm, uw); });
    strm.wait();
    // dw has Ci < 16 input channels, so it is always plain (blocked weights need dims[1] % 16 == 0).
    const int64_t K = g.k[0] * g.k[1] * g.k[2];
    float* d = dw->f32();
    for (int64_t co = 0; co < g.Co; co++)
      for (int64_t ci = 0; ci < Ci; ci++)
        for (int64_t k = 0; k < K; k++) {
          float v = wfull[(size_t)((co * 16 + ci) * K + k)];
          float& t = d[(co * Ci + ci) * K + k];
          t = dw_alloc ? v : t + v;
        }
    if (with_bias) {
      float* b = db->f32();
      for (int64_t c = 0; c < g.Co; c++) b[c] = db_alloc ? db_tmp[(size_t)c] : b[c] + db_tmp[(size_t)c];
    }
    return;
  }
  TempBuffer xpt;
  if (e->prepadded) {
    Shape ps = xu->shape;
    for (int a = 0; a < 3; a++) ps.d[2 + a] += 2 * e->prepad[a];
    xpt.buf = alloc_buffer(be, ps, CMO_DTYPE_F32, xu->layout);
    pad_spatial(be, xu, xpt.buf, e->prepad);
  }
  memory src(e->src, eng, e->prepadded ? xpt.buf->data : xu->data);
  memory ddst = input_mem(dy, e->diff_dst, eng, strm);
  // A blocked dw slot (possible for 5-D weights with dims[1] % 16 == 0) accumulates through a plain copy.
  TempBuffer dwt;
  Buffer* dwp = dw;
  if (dw->layout != CMO_LAYOUT_PLAIN) {
    dwt.buf = alloc_buffer(be, dw->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    reorder(dw, dwt.buf);
    dwp = dwt.buf;
  }
  memory udw(e->user_wei, eng, dwp->data);
  bool direct_w = dw_alloc && e->wei_same;
  memory dwm = direct_w ? udw : memory(e->diff_wei, eng);
  std::vector<float> db_tmp;
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_DIFF_WEIGHTS, dwm}};
  if (with_bias) {
    void* dbp = db->data;
    if (!db_alloc) {
      db_tmp.assign((size_t)g.Co, 0.0f);
      dbp = db_tmp.data();
    }
    args[DNNL_ARG_DIFF_BIAS] = memory(bias_md(g, true), eng, dbp);
  }
  e->prim.execute(strm, args);
  if (!direct_w) serially([&] { (dw_alloc ? e->to_user : e->to_user_acc).execute(strm, dwm, udw); });
  strm.wait();
  if (dwp != dw) reorder(dwp, dw);
  if (with_bias && !db_alloc) {
    float* d = db->f32();
    for (int64_t c = 0; c < g.Co; c++) d[c] += db_tmp[(size_t)c];
  }
}

CMO_REGISTER_KERNEL(CMO_OP_CONV3D_FORWARD, forward_kernel<false>);
CMO_REGISTER_KERNEL(CMO_OP_CONV3D_BACKWARD_DATA, backward_data_kernel<false>);
CMO_REGISTER_KERNEL(CMO_OP_CONV3D_BACKWARD_WEIGHTS, backward_weights_kernel<false>);
CMO_REGISTER_KERNEL(CMO_OP_CONV_TRANSPOSE3D_FORWARD, forward_kernel<true>);
CMO_REGISTER_KERNEL(CMO_OP_CONV_TRANSPOSE3D_BACKWARD_DATA, backward_data_kernel<true>);
CMO_REGISTER_KERNEL(CMO_OP_CONV_TRANSPOSE3D_BACKWARD_WEIGHTS, backward_weights_kernel<true>);

}  // namespace
}  // namespace cmo
