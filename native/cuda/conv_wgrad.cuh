// conv_wgrad.cuh — our own FP32 weight gradient for stride-1, dilation-1 3D convolutions with
// kernels 3x3x3, 1x3x3 or 1x1x1: cuDNN's legacy FP32 algorithms are slow on the thin, large volumes
// of a 3D U-Net's first levels (16 channels at 128^3). Deterministic (fixed split, ordered sums).
// Used in strict FP32 for layers of <= 32 channels (see conv.cu). Its source is checked on the CPU by
// native/cuda/tests/test_kernels_host.cpp; not yet timed on a GPU.
#pragma once

#include "internal.cuh"

namespace cmocu {

// True when wgrad_fp32 handles this problem (x [N,C,D,H,W], dw [K,C,kd,kh,kw]).
bool wgrad_fp32_supported(const Shape& x, const Shape& w, const cmo_conv3d_params& p);

// dw (+)= weight gradient of y = conv(x, w) given dy; accumulate = add into dw instead of writing it.
void wgrad_fp32(Backend* be, const Buffer* x, const Buffer* dy, Buffer* dw, const cmo_conv3d_params& p, bool accumulate);

}  // namespace cmocu
