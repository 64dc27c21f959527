// internal.cuh — shared by the CUDA backend's op files. Not part of the ABI.
//
// Mirrors native/cpu/internal.hpp: every op file (one per op family) defines kernels with the
// signature KernelFn and registers them with CMO_REGISTER_KERNEL(op_id, fn). runtime.cu owns the
// backend (device, stream, caching pool), buffers, errors and the dispatch of cmo_op_execute.
// Tensors are always stored PLAIN (row-major NCDHW) in device memory; cuDNN takes NCDHW directly.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "../include/comodal.h"
#include "../common/runtime_common.hpp"

namespace cmocu {

using cmo_common::Error;  // thrown by kernels; runtime.cu turns it into a status and a message
using cmo_common::fail;
using cmo_common::Shape;
using cmo_common::unsupported;

// Throws CMO_ERR_BACKEND (or OUT_OF_MEMORY) naming `what` when a CUDA runtime call failed.
void check_cuda(cudaError_t err, const char* what);
// Checks the launch of the kernel just queued.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

struct Backend;  // defined in runtime.cu; kernels use the accessors below

// Device storage from the backend's caching pool; `data` holds numel() elements, plain row-major.
struct Buffer {
  Backend* backend = nullptr;
  Shape shape;
  cmo_dtype dtype = CMO_DTYPE_F32;
  void* data = nullptr;
  int64_t bytes = 0;

  float* f32() const { return static_cast<float*>(data); }
  int32_t* i32() const { return static_cast<int32_t*>(data); }
  int64_t numel() const { return shape.numel(); }
};

const char* dtype_name(int64_t dt);
int64_t dtype_size(cmo_dtype dt);

Buffer* alloc_buffer(Backend* be, const Shape& shape, cmo_dtype dtype);
void free_buffer(Buffer* b);

// Scratch device memory from the pool, returned to it when the object goes out of scope. All work
// of a backend runs on its one stream, so memory given back is safe to reuse by later work.
struct Scratch {
  Backend* be = nullptr;
  void* ptr = nullptr;
  size_t bytes = 0;
  Scratch(Backend* b, size_t n);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

cudaStream_t stream(Backend* be);
bool deterministic(Backend* be);
int device_index(Backend* be);
int sm_count(Backend* be);
// Waits for the stream (used where a kernel's result decides the status, e.g. label checks).
void sync(Backend* be);
// Waits for the stream and returns the pool's cached (unused) blocks to the device.
void pool_trim(Backend* be);

struct KernelArgs {
  Backend* backend;
  const Buffer* const* in;  // n_in entries, may contain nullptr where the op allows it
  int n_in;
  Buffer** out;             // n_out slots; nullptr = kernel allocates (via output()) and stores
  int n_out;
  const void* params;
  int64_t params_bytes;

  template <typename P>
  const P& p(const char* op) const {
    if (params_bytes != (int64_t)sizeof(P) || params == nullptr)
      fail(std::string(op) + ": params struct has " + std::to_string(params_bytes) +
           " bytes, expected " + std::to_string(sizeof(P)));
    return *static_cast<const P*>(params);
  }
  // Returns out[i], allocating it when the slot is null, or checking shape and dtype when it was
  // given. `allocated` tells which happened (for += / = semantics).
  Buffer* output(int i, const Shape& shape, cmo_dtype dtype, const char* op,
                 bool* allocated = nullptr) const;
};

using KernelFn = void (*)(const KernelArgs&);

void register_kernel(int op, KernelFn fn);
struct KernelRegistrar {
  KernelRegistrar(int op, KernelFn fn) { register_kernel(op, fn); }
};
#define CMOCU_CONCAT_INNER_(a, b) a##b
#define CMOCU_CONCAT_(a, b) CMOCU_CONCAT_INNER_(a, b)
#define CMO_REGISTER_KERNEL(op, fn) \
  static ::cmocu::KernelRegistrar CMOCU_CONCAT_(cmocu_registrar_, __LINE__)(op, fn)

// ------------------------------------------------------------------ launch helpers
constexpr int kThreads = 256;

inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  if (g > 65535LL * 32) g = 65535LL * 32;  // grid-stride loops cover the rest
  return (unsigned)g;
}

template <typename F>
__global__ void elementwise_kernel(int64_t n, F f) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    f(i);
}

// Runs f(i) for i in [0, n) on the backend's stream (f must be a __device__ lambda or functor).
template <typename F>
void launch_elementwise(Backend* be, int64_t n, F f, const char* what) {
  if (n <= 0) return;
  elementwise_kernel<<<grid_for(n), kThreads, 0, stream(be)>>>(n, f);
  check_launch(what);
}

// Up to 6-D index helper passed by value to kernels.
struct Dims6 {
  int ndim;
  int64_t d[CMO_MAX_DIMS];
  int64_t s[CMO_MAX_DIMS];  // strides (elements)
};

// Row-major strides of a shape.
inline void row_major_strides(const Shape& sh, int64_t* st) {
  int64_t acc = 1;
  for (int i = sh.ndim - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= sh.d[i];
  }
}

// Splits a shape at `axis` into outer * len * inner (for softmax, argmax, l2 normalize...).
inline void split_axis(const Shape& s, int axis, int64_t* outer, int64_t* len, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int i = 0; i < axis; i++) *outer *= s.d[i];
  *len = s.d[axis];
  for (int i = axis + 1; i < s.ndim; i++) *inner *= s.d[i];
}

// Normalises a possibly negative axis, failing with the op name and shape when out of range.
inline int norm_axis(int64_t axis, const Shape& s, const char* op) {
  int64_t a = axis < 0 ? axis + s.ndim : axis;
  if (a < 0 || a >= s.ndim)
    fail(std::string(op) + ": axis " + std::to_string(axis) + " is out of range for shape " + s.str());
  return (int)a;
}

inline void need_f32(const Buffer* b, const char* op, const char* role) {
  if (b->dtype != CMO_DTYPE_F32)
    fail(std::string(op) + ": " + role + " must be f32, got " + dtype_name(b->dtype) + " " + b->shape.str());
}

// Deterministic block reduction of a double (all threads of the block must call it).
__device__ inline double block_sum(double v, double* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  double r = 0;
  if (threadIdx.x == 0) {
    int nw = (blockDim.x + 31) >> 5;
    for (int i = 0; i < nw; i++) r += smem[i];
  }
  return r;  // valid in thread 0
}

}  // namespace cmocu
