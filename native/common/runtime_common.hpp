// runtime_common.hpp — host-side pieces every backend's runtime shares: the error type kernels
// throw, the tensor shape, and the argument checks of cmo_op_execute. Header-only; included by
// native/cpu/internal.hpp and native/cuda/internal.cuh (which also compiles it with nvcc).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../include/comodal.h"
#include "abi_tables.hpp"

#ifdef __CUDACC__
#define CMO_HOST_DEVICE __host__ __device__
#else
#define CMO_HOST_DEVICE
#endif

namespace cmo_common {

// Thrown by kernels; the runtime turns it into a status code plus the cmo_last_error() message.
struct Error : std::runtime_error {
  cmo_status status;
  Error(cmo_status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error(CMO_ERR_INVALID_ARGUMENT, msg); }
[[noreturn]] inline void unsupported(const std::string& msg) { throw Error(CMO_ERR_UNSUPPORTED, msg); }

struct Shape {
  int ndim = 0;
  int64_t d[CMO_MAX_DIMS] = {0, 0, 0, 0, 0, 0};
  CMO_HOST_DEVICE int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= d[i];
    return n;
  }
  CMO_HOST_DEVICE bool operator==(const Shape& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; i++)
      if (d[i] != o.d[i]) return false;
    return true;
  }
  CMO_HOST_DEVICE bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const {  // "[2,16,64,64,64]"
    std::string r = "[";
    for (int i = 0; i < ndim; i++) {
      if (i) r += ",";
      r += std::to_string(d[i]);
    }
    return r + "]";
  }
};

// GROUP_NORM's fused activation (comodal.h): the slope for z <= 0 (1 = none, 0 = ReLU, alpha =
// leaky ReLU); fails naming `op` for an unknown activation or a non-finite alpha.
inline float norm_activation_slope(const cmo_group_norm_params& p, const char* op) {
  switch (p.activation) {
    case CMO_NORM_ACT_NONE:
      return 1.0f;
    case CMO_NORM_ACT_RELU:
      return 0.0f;
    case CMO_NORM_ACT_LEAKY_RELU:
      if (!(p.alpha - p.alpha == 0.0)) fail(std::string(op) + ": leaky ReLU slope alpha must be finite");
      return (float)p.alpha;
  }
  fail(std::string(op) + ": unknown activation (0 = none, 1 = ReLU, 2 = leaky ReLU), got activation " +
       std::to_string(p.activation));
}
// The activation and its derivative for a slope; branch-free, so host loops vectorise.
CMO_HOST_DEVICE inline float norm_act_apply(float z, float slope) {
  return (z > 0.0f ? z : 0.0f) + slope * (z < 0.0f ? z : 0.0f);
}
CMO_HOST_DEVICE inline float norm_act_grad(float z, float slope) { return slope + (1.0f - slope) * (float)(z > 0.0f); }

// A tensor descriptor's shape; fn names the API call in the error.
inline Shape shape_from_desc(const cmo_tensor_desc& d, const char* fn) {
  if (d.ndim < 0 || d.ndim > CMO_MAX_DIMS)
    fail(std::string(fn) + ": ndim " + std::to_string(d.ndim) + " is outside 0.." + std::to_string(CMO_MAX_DIMS));
  Shape s;
  s.ndim = (int)d.ndim;
  for (int i = 0; i < s.ndim; i++) {
    if (d.dims[i] < 0)
      fail(std::string(fn) + ": dimension " + std::to_string(i) + " is " + std::to_string(d.dims[i]) +
           ", must be >= 0");
    s.d[i] = d.dims[i];
  }
  return s;
}

// The checks of cmo_op_execute before a kernel runs: a known op, the arity of CMO_OP_LIST, NULL only
// where the header allows it, every buffer from this backend. Fills `ins`, `outs` (the caller's
// slots) and `was_null` (slots the kernel will allocate); throws Error on a bad call. `ApiBuf` is the
// opaque cmo_buffer (derived from `Buf`), so this header needs neither complete.
template <typename Buf, typename ApiBuf, typename Backend>
void check_op_call(const Backend* backend, int32_t op, ApiBuf* const* inputs, int32_t n_inputs, ApiBuf** outputs,
                   int32_t n_outputs, std::vector<const Buf*>& ins, std::vector<Buf*>& outs,
                   std::vector<bool>& was_null) {
  int nin = 0, nout = 0;
  if (cmo_abi::op_name(op) == nullptr || !cmo_abi::op_arity(op, &nin, &nout))
    fail("unknown op id " + std::to_string(op));
  if (nin >= 0 && n_inputs != nin) fail("got " + std::to_string(n_inputs) + " inputs, expected " + std::to_string(nin));
  if (nin < 0 && n_inputs < 1) fail("got " + std::to_string(n_inputs) + " inputs, expected at least 1");
  if (n_outputs != nout)
    fail("got " + std::to_string(n_outputs) + " output slots, expected " + std::to_string(nout));
  if (n_inputs > 0 && inputs == nullptr) fail("inputs array is NULL");
  if (n_outputs > 0 && outputs == nullptr) fail("outputs array is NULL");
  ins.assign((size_t)n_inputs, nullptr);
  for (int i = 0; i < n_inputs; i++) {
    const ApiBuf* b = inputs[i];
    if (b == nullptr && !cmo_abi::input_nullable(op, i)) fail("input " + std::to_string(i) + " is NULL");
    if (b && b->backend != backend) fail("input " + std::to_string(i) + " belongs to another backend");
    ins[(size_t)i] = b;
  }
  outs.assign((size_t)n_outputs, nullptr);
  was_null.assign((size_t)n_outputs, false);
  for (int i = 0; i < n_outputs; i++) {
    ApiBuf* b = outputs[i];
    if (b && b->backend != backend) fail("output " + std::to_string(i) + " belongs to another backend");
    outs[(size_t)i] = b;
    was_null[(size_t)i] = b == nullptr;
  }
}

}  // namespace cmo_common
