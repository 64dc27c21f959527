// permute_plan.hpp — PERMUTE's parameter check and its copy plan, shared by the CPU and CUDA
// backends: the output shape, and the copy reduced to as few axes as possible (size-1 axes dropped,
// neighbouring output axes that are also neighbours in x merged), so that e.g. [B,C,N] -> [B,N,C]
// with B = 1 is a 2-D transpose and an order that moves only size-1 axes is a plain copy.
#pragma once

#include <cstdint>
#include <string>

#include "../include/comodal.h"
#include "runtime_common.hpp"

namespace cmo_common {

struct PermutePlan {
  Shape out;                           // y's shape: out.d[i] = x.d[order[i]]
  int ndim = 0;                        // axes of the reduced copy (0: a single element)
  int64_t dims[CMO_MAX_DIMS] = {};     // reduced output dims (row-major in y)
  int64_t strides[CMO_MAX_DIMS] = {};  // x's element stride along each reduced output axis
  bool contiguous = false;             // y's row-major order is x's: the copy is one memcpy
};

// Checks the params against x's shape (rank, each axis once) and plans the copy.
inline PermutePlan permute_plan(const Shape& x, const cmo_permute_params& p) {
  if (p.ndim != x.ndim)
    fail("order has " + std::to_string(p.ndim) + " entries, x " + x.str() + " has " + std::to_string(x.ndim) +
         " dimensions");
  std::string order = "[";
  for (int i = 0; i < x.ndim; i++) order += (i ? "," : "") + std::to_string(p.order[i]);
  order += "]";
  bool seen[CMO_MAX_DIMS] = {};
  for (int i = 0; i < x.ndim; i++) {
    const int64_t o = p.order[i];
    if (o < 0 || o >= x.ndim || seen[o])
      fail("order " + order + " is not a permutation of 0.." + std::to_string(x.ndim - 1) + " (for x " + x.str() +
           ")");
    seen[o] = true;
  }
  int64_t xs[CMO_MAX_DIMS];
  int64_t acc = 1;
  for (int i = x.ndim - 1; i >= 0; i--) {
    xs[i] = acc;
    acc *= x.d[i];
  }
  PermutePlan pl;
  pl.out.ndim = x.ndim;
  for (int i = 0; i < x.ndim; i++) {
    const int64_t d = x.d[p.order[i]], s = xs[p.order[i]];
    pl.out.d[i] = d;
    if (d == 1) continue;
    if (pl.ndim > 0 && pl.strides[pl.ndim - 1] == s * d) {
      pl.dims[pl.ndim - 1] *= d;
      pl.strides[pl.ndim - 1] = s;
    } else {
      pl.dims[pl.ndim] = d;
      pl.strides[pl.ndim] = s;
      pl.ndim++;
    }
  }
  // Merging joins every run that is contiguous in x, so one axis left (stride 1) means a plain copy.
  pl.contiguous = pl.ndim <= 1;
  return pl;
}

}  // namespace cmo_common
