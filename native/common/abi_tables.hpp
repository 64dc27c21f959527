// abi_tables.hpp — facts derived from comodal.h that every backend's runtime needs (op names and
// arities from CMO_OP_LIST, which inputs may be NULL, dtype sizes and names). Header-only, shared
// by native/cpu and native/cuda so the backends cannot disagree about the ABI.
#pragma once

#include <cstdint>

#include "../include/comodal.h"

namespace cmo_abi {

inline const char* op_name(int op) {
  switch (op) {
#define CMO_ABI_OP_NAME_(id, name, nin, nout, params) \
  case id:                                            \
    return #name;
    CMO_OP_LIST(CMO_ABI_OP_NAME_)
#undef CMO_ABI_OP_NAME_
    default:
      return nullptr;
  }
}

inline bool op_arity(int op, int* nin, int* nout) {
  switch (op) {
#define CMO_ABI_OP_ARITY_(id, name, ni, no, params) \
  case id:                                          \
    *nin = ni;                                      \
    *nout = no;                                     \
    return true;
    CMO_OP_LIST(CMO_ABI_OP_ARITY_)
#undef CMO_ABI_OP_ARITY_
    default:
      return false;
  }
}

// Inputs that may be NULL, as documented in comodal.h: the bias of the forward convolutions, and
// beta of the norm backward (required only with a fused activation; the kernel checks that).
inline bool input_nullable(int op, int i) {
  return ((op == CMO_OP_CONV3D_FORWARD || op == CMO_OP_CONV_TRANSPOSE3D_FORWARD) && i == 2) ||
         (op == CMO_OP_GROUP_NORM_BACKWARD && i == 5);
}

inline int64_t dtype_size(int64_t dt) {
  switch (dt) {
    case CMO_DTYPE_F32:
    case CMO_DTYPE_I32:
      return 4;
    case CMO_DTYPE_U8:
      return 1;
  }
  return 0;
}

inline const char* dtype_name(int64_t dt) {
  switch (dt) {
    case CMO_DTYPE_F32:
      return "f32";
    case CMO_DTYPE_I32:
      return "i32";
    case CMO_DTYPE_U8:
      return "u8";
  }
  return "unknown";
}

}  // namespace cmo_abi
