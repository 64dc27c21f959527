// conv.cu — 3D convolution and transposed convolution (forward, backward data, backward weights)
// through cuDNN's convolution API, on plain NCDHW tensors.
//
// Every op maps onto one "conv problem" X[N,C,in] * W[K,C,k] -> Y[N,K,out]:
//   conv forward              Y = fwd(X=x, W=w)
//   conv backward data        dX = bwd_data(dY=dy, W=w)
//   conv backward weights     dW = bwd_filter(X=x, dY=dy)
//   deconv forward            y = bwd_data(dY=x, W=w)        (w is [Ci,Co,k]: K = Ci, C = Co)
//   deconv backward data      dx = fwd(X=dy, W=w)
//   deconv backward weights   dW = bwd_filter(X=dy, dY=x)
// Algorithms are chosen once per shape (cudnnFind*AlgorithmEx, or the heuristics when
// COMODAL_CUDNN_FIND=0) and cached on the backend; deterministic mode keeps deterministic algorithms
// only. Math is strict FP32 (FMA) unless COMODAL_CUDA_TF32=1 allows TF32 tensor cores.
// Workspaces come from the pool. Bias add and bias gradient are our own kernels (deterministic).
#include <cstdio>
#include <cstdlib>

#include "conv_wgrad.cuh"
#include "cudnn_api.hpp"
#include "internal.cuh"
#include "plane_sums.cuh"

namespace cmocu {
namespace {

enum class Prim { Fwd = 0, BwdData = 1, BwdFilter = 2 };

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  int algo = 0;
  size_t ws = 0;
  ~ConvPlan() {
    const CudnnApi& a = cudnn_api();
    if (x) a.cudnnDestroyTensorDescriptor(x);
    if (y) a.cudnnDestroyTensorDescriptor(y);
    if (w) a.cudnnDestroyFilterDescriptor(w);
    if (conv) a.cudnnDestroyConvolutionDescriptor(conv);
  }
};

bool env_flag(const char* name, bool dflt) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == 0) return dflt;
  return std::string(v) != "0";
}

int64_t conv_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}
int64_t deconv_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in - 1) * s - 2 * p + d * (k - 1) + 1;
}

void check_params(const cmo_conv3d_params& p, const char* op) {
  for (int i = 0; i < 3; i++) {
    if (p.stride[i] < 1 || p.dilation[i] < 1 || p.padding[i] < 0)
      fail(std::string(op) + ": stride and dilation must be >= 1 and padding >= 0, got stride " +
           std::to_string(p.stride[i]) + ", dilation " + std::to_string(p.dilation[i]) + ", padding " +
           std::to_string(p.padding[i]) + " on axis " + std::to_string(i));
  }
}

void need5(const Buffer* b, const char* op, const char* role) {
  if (b->shape.ndim != 5)
    fail(std::string(op) + ": " + role + " must be 5-D, got " + b->shape.str());
  need_f32(b, op, role);
}

std::string key_of(Prim prim, const Shape& X, const Shape& W, const Shape& Y, const cmo_conv3d_params& p,
                   bool det, bool tf32) {
  std::string k = std::to_string((int)prim) + (det ? "d" : "n") + (tf32 ? "t" : "f") + X.str() + W.str() + Y.str();
  for (int i = 0; i < 3; i++)
    k += "," + std::to_string(p.stride[i]) + "," + std::to_string(p.padding[i]) + "," + std::to_string(p.dilation[i]);
  return k;
}

void set_tensor(cudnnTensorDescriptor_t d, const Shape& s) {
  int dims[5], strides[5];
  int64_t st[5];
  row_major_strides(s, st);
  for (int i = 0; i < 5; i++) {
    if (s.d[i] > INT32_MAX || st[i] > INT32_MAX)
      unsupported("tensor " + s.str() + " is too large for cuDNN's 32-bit descriptors");
    dims[i] = (int)s.d[i];
    strides[i] = (int)st[i];
  }
  check_cudnn(cudnn_api().cudnnSetTensorNdDescriptor(d, CUDNN_DATA_FLOAT, 5, dims, strides),
              "cudnnSetTensorNdDescriptor");
}

// Builds (or fetches) the plan of one primitive. The Find step runs the candidate algorithms on the
// real inputs and a scratch output, so the caller's output (possibly accumulated into) is untouched.
std::shared_ptr<ConvPlan> get_plan(Backend* be, Prim prim, const Shape& X, const Shape& W, const Shape& Y,
                                   const cmo_conv3d_params& p, const void* a_ptr, const void* b_ptr,
                                   const char* op) {
  const bool det = deterministic(be);
  const bool tf32 = env_flag("COMODAL_CUDA_TF32", false);
  size_t ws_cap = (size_t)2 << 30;
  if (const char* e = std::getenv("COMODAL_CUDNN_WORKSPACE_MB"); e && *e) ws_cap = (size_t)std::atoll(e) << 20;
  std::string key = key_of(prim, X, W, Y, p, det, tf32) + "/" + std::to_string(ws_cap);
  if (auto hit = cache_get(be, key)) return std::static_pointer_cast<ConvPlan>(hit);

  const CudnnApi& api = cudnn_api();
  auto plan = std::make_shared<ConvPlan>();
  check_cudnn(api.cudnnCreateTensorDescriptor(&plan->x), "cudnnCreateTensorDescriptor");
  check_cudnn(api.cudnnCreateTensorDescriptor(&plan->y), "cudnnCreateTensorDescriptor");
  check_cudnn(api.cudnnCreateFilterDescriptor(&plan->w), "cudnnCreateFilterDescriptor");
  check_cudnn(api.cudnnCreateConvolutionDescriptor(&plan->conv), "cudnnCreateConvolutionDescriptor");
  set_tensor(plan->x, X);
  set_tensor(plan->y, Y);
  int wd[5];
  for (int i = 0; i < 5; i++) wd[i] = (int)W.d[i];
  check_cudnn(api.cudnnSetFilterNdDescriptor(plan->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 5, wd),
              "cudnnSetFilterNdDescriptor");
  int pad[3], str[3], dil[3];
  for (int i = 0; i < 3; i++) {
    pad[i] = (int)p.padding[i];
    str[i] = (int)p.stride[i];
    dil[i] = (int)p.dilation[i];
  }
  check_cudnn(api.cudnnSetConvolutionNdDescriptor(plan->conv, 3, pad, str, dil, CUDNN_CROSS_CORRELATION,
                                                  CUDNN_DATA_FLOAT),
              "cudnnSetConvolutionNdDescriptor");
  check_cudnn(api.cudnnSetConvolutionMathType(plan->conv, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH),
              "cudnnSetConvolutionMathType");

  cudnnHandle_t h = cudnn_handle(be);
  const bool find = env_flag("COMODAL_CUDNN_FIND", true);
  size_t free_b = 0, total_b = 0;
  check_cuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  size_t ws_limit = std::min<size_t>(free_b / 4, ws_cap);
  constexpr int kMax = 16;
  int got = 0;
  bool chosen = false;
  std::string tried;
  const bool verbose = env_flag("COMODAL_CUDNN_VERBOSE", false);
  auto pick = [&](auto* perf) {
    if (verbose) {
      std::fprintf(stderr, "[cudnn] %s %s X%s W%s Y%s (ws limit %zu):\n", op,
                   prim == Prim::Fwd ? "fwd" : prim == Prim::BwdData ? "bwd-data" : "bwd-filter", X.str().c_str(),
                   W.str().c_str(), Y.str().c_str(), ws_limit);
      for (int i = 0; i < got; i++)
        std::fprintf(stderr, "[cudnn]   algo %d status %d time %.3f ms ws %zu det %d math %d\n", (int)perf[i].algo,
                     (int)perf[i].status, perf[i].time, perf[i].memory, (int)perf[i].determinism, (int)perf[i].mathType);
    }
    for (int i = 0; i < got; i++) {
      if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
      if (det && perf[i].determinism != CUDNN_DETERMINISTIC) continue;
      if (perf[i].memory > ws_limit) continue;
      plan->algo = (int)perf[i].algo;
      plan->ws = perf[i].memory;
      chosen = true;
      return;
    }
  };
  if (prim == Prim::Fwd) {
    cudnnConvolutionFwdAlgoPerf_t perf[kMax];
    if (find) {
      Scratch out(be, (size_t)Y.numel() * 4), ws(be, ws_limit);
      check_cudnn(api.cudnnFindConvolutionForwardAlgorithmEx(h, plan->x, a_ptr, plan->w, b_ptr, plan->conv, plan->y,
                                                             out.ptr, kMax, &got, perf, ws.ptr, ws_limit),
                  "cudnnFindConvolutionForwardAlgorithmEx");
    } else {
      check_cudnn(api.cudnnGetConvolutionForwardAlgorithm_v7(h, plan->x, plan->w, plan->conv, plan->y, kMax, &got, perf),
                  "cudnnGetConvolutionForwardAlgorithm_v7");
    }
    pick(perf);
  } else if (prim == Prim::BwdData) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
    if (find) {
      Scratch out(be, (size_t)X.numel() * 4), ws(be, ws_limit);
      check_cudnn(api.cudnnFindConvolutionBackwardDataAlgorithmEx(h, plan->w, b_ptr, plan->y, a_ptr, plan->conv,
                                                                  plan->x, out.ptr, kMax, &got, perf, ws.ptr, ws_limit),
                  "cudnnFindConvolutionBackwardDataAlgorithmEx");
    } else {
      check_cudnn(api.cudnnGetConvolutionBackwardDataAlgorithm_v7(h, plan->w, plan->y, plan->conv, plan->x, kMax, &got, perf),
                  "cudnnGetConvolutionBackwardDataAlgorithm_v7");
    }
    pick(perf);
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
    if (find) {
      Scratch out(be, (size_t)W.numel() * 4), ws(be, ws_limit);
      check_cudnn(api.cudnnFindConvolutionBackwardFilterAlgorithmEx(h, plan->x, a_ptr, plan->y, b_ptr, plan->conv,
                                                                    plan->w, out.ptr, kMax, &got, perf, ws.ptr, ws_limit),
                  "cudnnFindConvolutionBackwardFilterAlgorithmEx");
    } else {
      check_cudnn(api.cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, plan->x, plan->y, plan->conv, plan->w, kMax, &got, perf),
                  "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
    }
    pick(perf);
  }
  if (!chosen)
    throw Error(CMO_ERR_BACKEND, std::string(op) + ": cuDNN offers no " + (det ? "deterministic " : "") +
                                     "algorithm within " + std::to_string(ws_limit) + " bytes of workspace for X " +
                                     X.str() + " W " + W.str() + " Y " + Y.str());
  cache_put(be, key, plan);
  // The Find step's large trial workspace is not kept in the pool.
  if (find) pool_trim(be);
  return plan;
}

// y[n,c,s] += b[c]
void add_bias(Backend* be, float* y, const float* b, const Shape& ys) {
  int64_t C = ys.d[1], S = ys.d[2] * ys.d[3] * ys.d[4];
  launch_elementwise(be, ys.numel(), [=] __device__(int64_t i) { y[i] += b[(i / S) % C]; }, "conv bias add");
}

// db[c] (+)= sum over n and spatial of dy[n,c,s]
void bias_grad(Backend* be, const float* dy, const Shape& ys, float* db, bool accumulate) {
  int64_t N = ys.d[0], C = ys.d[1], S = ys.d[2] * ys.d[3] * ys.d[4];
  Scratch tot(be, (size_t)(N * C) * sizeof(double));
  plane_sums<1>(be, N * C, S, [=] __device__(int64_t plane, int64_t s, double* acc) { acc[0] += dy[plane * S + s]; },
                tot.as<double>(), "conv bias gradient");
  const double* t = tot.as<double>();
  launch_elementwise(be, C, [=] __device__(int64_t c) {
    double v = 0;
    for (int64_t n = 0; n < N; n++) v += t[n * C + c];
    db[c] = accumulate ? (float)(db[c] + v) : (float)v;
  }, "conv bias gradient");
}

void run_fwd(Backend* be, const ConvPlan& pl, const void* x, const void* w, void* y, float beta) {
  Scratch ws(be, pl.ws);
  float alpha = 1.0f;
  check_cudnn(cudnn_api().cudnnConvolutionForward(cudnn_handle(be), &alpha, pl.x, x, pl.w, w, pl.conv,
                                                  (cudnnConvolutionFwdAlgo_t)pl.algo, ws.ptr, pl.ws, &beta, pl.y, y),
              "cudnnConvolutionForward");
}
void run_bwd_data(Backend* be, const ConvPlan& pl, const void* w, const void* dy, void* dx, float beta) {
  Scratch ws(be, pl.ws);
  float alpha = 1.0f;
  check_cudnn(cudnn_api().cudnnConvolutionBackwardData(cudnn_handle(be), &alpha, pl.w, w, pl.y, dy, pl.conv,
                                                       (cudnnConvolutionBwdDataAlgo_t)pl.algo, ws.ptr, pl.ws, &beta,
                                                       pl.x, dx),
              "cudnnConvolutionBackwardData");
}
void run_bwd_filter(Backend* be, const ConvPlan& pl, const void* x, const void* dy, void* dw, float beta) {
  Scratch ws(be, pl.ws);
  float alpha = 1.0f;
  check_cudnn(cudnn_api().cudnnConvolutionBackwardFilter(cudnn_handle(be), &alpha, pl.x, x, pl.y, dy, pl.conv,
                                                         (cudnnConvolutionBwdFilterAlgo_t)pl.algo, ws.ptr, pl.ws,
                                                         &beta, pl.w, dw),
              "cudnnConvolutionBackwardFilter");
}

Shape shape5(int64_t a, int64_t b, const int64_t* sp) {
  Shape s;
  s.ndim = 5;
  s.d[0] = a;
  s.d[1] = b;
  for (int i = 0; i < 3; i++) s.d[2 + i] = sp[i];
  return s;
}

void check_bias(const Buffer* b, int64_t C, const char* op) {
  if (b == nullptr) return;
  need_f32(b, op, "bias");
  if (b->numel() != C) fail(std::string(op) + ": bias has shape " + b->shape.str() + ", expected [" + std::to_string(C) + "]");
}

void conv_forward(const KernelArgs& a) {
  const char* op = "CONV3D_FORWARD";
  const auto& p = a.p<cmo_conv3d_params>(op);
  check_params(p, op);
  const Buffer *x = a.in[0], *w = a.in[1], *b = a.in[2];
  need5(x, op, "x");
  need5(w, op, "w");
  if (w->shape.d[1] != x->shape.d[1])
    fail(std::string(op) + ": x " + x->shape.str() + " has " + std::to_string(x->shape.d[1]) + " channels but w " +
         w->shape.str() + " expects " + std::to_string(w->shape.d[1]));
  check_bias(b, w->shape.d[0], op);
  int64_t o[3];
  for (int i = 0; i < 3; i++) {
    o[i] = conv_out(x->shape.d[2 + i], w->shape.d[2 + i], p.stride[i], p.padding[i], p.dilation[i]);
    if (o[i] < 1) fail(std::string(op) + ": x " + x->shape.str() + " is smaller than the kernel " + w->shape.str());
  }
  Shape ys = shape5(x->shape.d[0], w->shape.d[0], o);
  Buffer* y = a.output(0, ys, CMO_DTYPE_F32, op);
  if (ys.numel() == 0) return;
  auto plan = get_plan(a.backend, Prim::Fwd, x->shape, w->shape, ys, p, x->data, w->data, op);
  run_fwd(a.backend, *plan, x->data, w->data, y->data, 0.0f);
  if (b) add_bias(a.backend, y->f32(), b->f32(), ys);
}

void conv_backward_data(const KernelArgs& a) {
  const char* op = "CONV3D_BACKWARD_DATA";
  const auto& p = a.p<cmo_conv3d_params>(op);
  check_params(p, op);
  const Buffer *dy = a.in[0], *w = a.in[1];
  need5(dy, op, "dy");
  need5(w, op, "w");
  if (dy->shape.d[1] != w->shape.d[0])
    fail(std::string(op) + ": dy " + dy->shape.str() + " does not match w " + w->shape.str());
  Shape xs = shape5(dy->shape.d[0], w->shape.d[1], p.in_dims);
  for (int i = 0; i < 3; i++)
    if (conv_out(p.in_dims[i], w->shape.d[2 + i], p.stride[i], p.padding[i], p.dilation[i]) != dy->shape.d[2 + i])
      fail(std::string(op) + ": in_dims give x " + xs.str() + " whose convolution with w " + w->shape.str() +
           " does not have dy's shape " + dy->shape.str());
  Buffer* dx = a.output(0, xs, CMO_DTYPE_F32, op);
  if (xs.numel() == 0) return;
  auto plan = get_plan(a.backend, Prim::BwdData, xs, w->shape, dy->shape, p, dy->data, w->data, op);
  run_bwd_data(a.backend, *plan, w->data, dy->data, dx->data, 0.0f);
}

void conv_backward_weights(const KernelArgs& a) {
  const char* op = "CONV3D_BACKWARD_WEIGHTS";
  const auto& p = a.p<cmo_conv3d_params>(op);
  check_params(p, op);
  const Buffer *x = a.in[0], *dy = a.in[1];
  need5(x, op, "x");
  need5(dy, op, "dy");
  if (x->shape.d[0] != dy->shape.d[0])
    fail(std::string(op) + ": x " + x->shape.str() + " and dy " + dy->shape.str() + " differ in batch size");
  Shape ws;
  if (a.out[0] != nullptr) {
    ws = a.out[0]->shape;
  } else {
    // Kernel size from the shapes, when exactly one size fits (else the caller must pass dw).
    int64_t k[3];
    for (int i = 0; i < 3; i++) {
      int64_t found = 0, count = 0;
      for (int64_t kk = 1; kk <= x->shape.d[2 + i] + 2 * p.padding[i]; kk++)
        if (conv_out(x->shape.d[2 + i], kk, p.stride[i], p.padding[i], p.dilation[i]) == dy->shape.d[2 + i]) {
          if (count == 0) found = kk;
          count++;
        }
      if (count != 1)
        fail(std::string(op) + ": cannot infer the kernel size on axis " + std::to_string(i) + " from x " +
             x->shape.str() + " and dy " + dy->shape.str() + " (" + (count == 0 ? "no size fits" : "several sizes fit") +
             "); pass a dw output slot");
      k[i] = found;
    }
    ws = shape5(dy->shape.d[1], x->shape.d[1], k);
  }
  for (int i = 0; i < 3; i++)
    if (ws.ndim != 5 || conv_out(x->shape.d[2 + i], ws.d[2 + i], p.stride[i], p.padding[i], p.dilation[i]) != dy->shape.d[2 + i])
      fail(std::string(op) + ": x " + x->shape.str() + " convolved with a kernel " + ws.str() +
           " does not give dy's shape " + dy->shape.str());
  bool dw_new = false;
  Buffer* dw = a.output(0, ws, CMO_DTYPE_F32, op, &dw_new);
  // Strict FP32: our own kernel for thin layers (<= 32 channels in and out), where cuDNN's legacy
  // FP32 algorithms measured 3-12x slower than PyTorch's (bench/gpu_notes.md).
  // Opt-in until it has been validated on GPU hardware (it is checked only by a host emulation so
  // far): COMODAL_CUDA_WGRAD=auto uses ours for thin layers, =own wherever it applies; the default
  // (unset or =cudnn) keeps cuDNN everywhere.
  const char* wg = std::getenv("COMODAL_CUDA_WGRAD");
  const std::string wmode = wg && *wg ? wg : "cudnn";
  const bool own = ws.numel() > 0 && wmode != "cudnn" && !env_flag("COMODAL_CUDA_TF32", false) &&
                   wgrad_fp32_supported(x->shape, ws, p) &&
                   (wmode == "own" || (x->shape.d[1] <= 32 && dy->shape.d[1] <= 32));
  if (own) {
    wgrad_fp32(a.backend, x, dy, dw, p, !dw_new);
  } else if (ws.numel() > 0 && x->numel() > 0) {
    auto plan = get_plan(a.backend, Prim::BwdFilter, x->shape, ws, dy->shape, p, x->data, dy->data, op);
    run_bwd_filter(a.backend, *plan, x->data, dy->data, dw->data, dw_new ? 0.0f : 1.0f);
  } else if (dw_new && ws.numel() > 0) {
    check_cuda(cudaMemsetAsync(dw->data, 0, dw->bytes, stream(a.backend)), "cudaMemsetAsync");
  }
  if (a.out[1] != nullptr || p.has_bias) {
    Shape bs;
    bs.ndim = 1;
    bs.d[0] = dy->shape.d[1];
    bool db_new = false;
    Buffer* db = a.output(1, bs, CMO_DTYPE_F32, op, &db_new);
    bias_grad(a.backend, dy->f32(), dy->shape, db->f32(), !db_new);
  }
}

void deconv_forward(const KernelArgs& a) {
  const char* op = "CONV_TRANSPOSE3D_FORWARD";
  const auto& p = a.p<cmo_conv3d_params>(op);
  check_params(p, op);
  const Buffer *x = a.in[0], *w = a.in[1], *b = a.in[2];
  need5(x, op, "x");
  need5(w, op, "w");
  if (w->shape.d[0] != x->shape.d[1])
    fail(std::string(op) + ": x " + x->shape.str() + " has " + std::to_string(x->shape.d[1]) +
         " channels but w " + w->shape.str() + " ([Ci,Co,k...]) expects " + std::to_string(w->shape.d[0]));
  check_bias(b, w->shape.d[1], op);
  int64_t o[3];
  for (int i = 0; i < 3; i++) {
    o[i] = deconv_out(x->shape.d[2 + i], w->shape.d[2 + i], p.stride[i], p.padding[i], p.dilation[i]);
    if (o[i] < 1) fail(std::string(op) + ": output would be empty for x " + x->shape.str() + " and w " + w->shape.str());
  }
  Shape ys = shape5(x->shape.d[0], w->shape.d[1], o);
  Buffer* y = a.output(0, ys, CMO_DTYPE_F32, op);
  if (ys.numel() == 0) return;
  // conv problem: X = y (Co channels), W = w [Ci, Co, k], Y = x (Ci channels)
  auto plan = get_plan(a.backend, Prim::BwdData, ys, w->shape, x->shape, p, x->data, w->data, op);
  run_bwd_data(a.backend, *plan, w->data, x->data, y->data, 0.0f);
  if (b) add_bias(a.backend, y->f32(), b->f32(), ys);
}

void deconv_backward_data(const KernelArgs& a) {
  const char* op = "CONV_TRANSPOSE3D_BACKWARD_DATA";
  const auto& p = a.p<cmo_conv3d_params>(op);
  check_params(p, op);
  const Buffer *dy = a.in[0], *w = a.in[1];
  need5(dy, op, "dy");
  need5(w, op, "w");
  if (dy->shape.d[1] != w->shape.d[1])
    fail(std::string(op) + ": dy " + dy->shape.str() + " does not match w " + w->shape.str() + " ([Ci,Co,k...])");
  Shape xs = shape5(dy->shape.d[0], w->shape.d[0], p.in_dims);
  for (int i = 0; i < 3; i++)
    if (deconv_out(p.in_dims[i], w->shape.d[2 + i], p.stride[i], p.padding[i], p.dilation[i]) != dy->shape.d[2 + i])
      fail(std::string(op) + ": in_dims give x " + xs.str() + " whose transposed convolution with w " +
           w->shape.str() + " does not have dy's shape " + dy->shape.str());
  Buffer* dx = a.output(0, xs, CMO_DTYPE_F32, op);
  if (xs.numel() == 0) return;
  auto plan = get_plan(a.backend, Prim::Fwd, dy->shape, w->shape, xs, p, dy->data, w->data, op);
  run_fwd(a.backend, *plan, dy->data, w->data, dx->data, 0.0f);
}

void deconv_backward_weights(const KernelArgs& a) {
  const char* op = "CONV_TRANSPOSE3D_BACKWARD_WEIGHTS";
  const auto& p = a.p<cmo_conv3d_params>(op);
  check_params(p, op);
  const Buffer *x = a.in[0], *dy = a.in[1];
  need5(x, op, "x");
  need5(dy, op, "dy");
  if (x->shape.d[0] != dy->shape.d[0])
    fail(std::string(op) + ": x " + x->shape.str() + " and dy " + dy->shape.str() + " differ in batch size");
  int64_t k[3];
  for (int i = 0; i < 3; i++) {
    int64_t num = dy->shape.d[2 + i] - (x->shape.d[2 + i] - 1) * p.stride[i] + 2 * p.padding[i] - 1;
    if (num < 0 || num % p.dilation[i] != 0)
      fail(std::string(op) + ": no kernel size turns x " + x->shape.str() + " into dy " + dy->shape.str());
    k[i] = num / p.dilation[i] + 1;
  }
  Shape ws = shape5(x->shape.d[1], dy->shape.d[1], k);
  bool dw_new = false;
  Buffer* dw = a.output(0, ws, CMO_DTYPE_F32, op, &dw_new);
  if (ws.numel() > 0 && x->numel() > 0) {
    // conv problem: X = dy (Co channels), W = [Ci, Co, k], Y = x (Ci channels)
    auto plan = get_plan(a.backend, Prim::BwdFilter, dy->shape, ws, x->shape, p, dy->data, x->data, op);
    run_bwd_filter(a.backend, *plan, dy->data, x->data, dw->data, dw_new ? 0.0f : 1.0f);
  }
  if (a.out[1] != nullptr || p.has_bias) {
    Shape bs;
    bs.ndim = 1;
    bs.d[0] = dy->shape.d[1];
    bool db_new = false;
    Buffer* db = a.output(1, bs, CMO_DTYPE_F32, op, &db_new);
    bias_grad(a.backend, dy->f32(), dy->shape, db->f32(), !db_new);
  }
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_CONV3D_FORWARD, conv_forward);
CMO_REGISTER_KERNEL(CMO_OP_CONV3D_BACKWARD_DATA, conv_backward_data);
CMO_REGISTER_KERNEL(CMO_OP_CONV3D_BACKWARD_WEIGHTS, conv_backward_weights);
CMO_REGISTER_KERNEL(CMO_OP_CONV_TRANSPOSE3D_FORWARD, deconv_forward);
CMO_REGISTER_KERNEL(CMO_OP_CONV_TRANSPOSE3D_BACKWARD_DATA, deconv_backward_data);
CMO_REGISTER_KERNEL(CMO_OP_CONV_TRANSPOSE3D_BACKWARD_WEIGHTS, deconv_backward_weights);

}  // namespace cmocu
