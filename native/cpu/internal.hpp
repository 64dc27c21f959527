// internal.hpp — shared by the CPU backend's op files. Not part of the ABI.
//
// Every op file (one per op family, e.g. conv.cpp, norm.cpp) defines kernels with the signature
// KernelFn and registers them with CMO_REGISTER_KERNEL(op_id, fn) at file scope. runtime.cpp owns
// the backend, buffers, errors and the dispatch of cmo_op_execute to the registered kernel.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "../include/comodal.h"
#include "../common/runtime_common.hpp"

namespace cmo {

using cmo_common::Error;  // thrown by kernels; runtime.cpp turns it into a status and a message
using cmo_common::fail;
using cmo_common::Shape;
using cmo_common::unsupported;

struct Backend;  // defined in runtime.cpp; kernels use the accessors below

// Storage is 64-byte aligned host memory; `data` points at numel() elements in `layout` order.
struct Buffer {
  Backend* backend = nullptr;
  Shape shape;
  cmo_dtype dtype = CMO_DTYPE_F32;
  cmo_layout layout = CMO_LAYOUT_PLAIN;  // PLAIN or BLOCKED16 (never ANY once created)
  void* data = nullptr;
  int64_t bytes = 0;

  float* f32() const { return static_cast<float*>(data); }
  int32_t* i32() const { return static_cast<int32_t*>(data); }
  int64_t numel() const { return shape.numel(); }
  bool blocked() const { return layout == CMO_LAYOUT_BLOCKED16; }
};

// Allocation through the backend so memory statistics stay correct.
Buffer* alloc_buffer(Backend* be, const Shape& shape, cmo_dtype dtype, cmo_layout layout);
// The layout the backend prefers for a new f32 tensor of this shape (BLOCKED16 for 5-D with
// C % 16 == 0, PLAIN otherwise).
cmo_layout preferred_layout(const Shape& shape, cmo_dtype dtype);
// Returns x if it already has `layout`, else a new temporary buffer converted to it; `tmp` keeps
// ownership of the temporary (released when tmp goes out of scope).
struct TempBuffer {
  Buffer* buf = nullptr;
  ~TempBuffer();
};
const Buffer* as_layout(const Buffer* x, cmo_layout layout, TempBuffer& tmp);
// Converts between plain and blocked orders for a 5-D f32 tensor (src and dst may not alias).
void reorder(const Buffer* src, Buffer* dst);

int threads(Backend* be);       // current kernel thread count (>= 1)
bool deterministic(Backend* be);

struct KernelArgs {
  Backend* backend;
  const Buffer* const* in;  // n_in entries, may contain nullptr where the op allows it
  int n_in;
  Buffer** out;             // n_out slots; nullptr = kernel allocates (via alloc_buffer) and stores
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
  // Returns out[i], allocating it with (shape, dtype, layout) when the slot is null, or checking
  // shape and dtype when it was given. `allocated` tells which happened (for += / = semantics).
  Buffer* output(int i, const Shape& shape, cmo_dtype dtype, cmo_layout layout, const char* op,
                 bool* allocated = nullptr) const;
};

using KernelFn = void (*)(const KernelArgs&);

void register_kernel(int op, KernelFn fn);
struct KernelRegistrar {
  KernelRegistrar(int op, KernelFn fn) { register_kernel(op, fn); }
};
#define CMO_CONCAT_INNER_(a, b) a##b
#define CMO_CONCAT_(a, b) CMO_CONCAT_INNER_(a, b)
#define CMO_REGISTER_KERNEL(op, fn) \
  static ::cmo::KernelRegistrar CMO_CONCAT_(cmo_registrar_, __LINE__)(op, fn)

// Parallel loop over [0, n) in chunks using the backend's thread count (OpenMP underneath).
template <typename F>
void parallel_for(Backend* be, int64_t n, F&& f) {
  int t = threads(be);
#pragma omp parallel for num_threads(t) schedule(static) if (n > 1 && t > 1)
  for (int64_t i = 0; i < n; i++) f(i);
}

}  // namespace cmo
