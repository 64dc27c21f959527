// cudnn_api.hpp — cuDNN loaded at run time with dlopen, so that libcomodal_cuda.so loads (and
// reports "no CUDA device" or "cuDNN not found") on machines without a GPU or without cuDNN.
// Only the header's types are used at compile time; every call goes through CudnnApi.
#pragma once

#include <cudnn.h>

#include <memory>
#include <string>

#include "internal.cuh"

namespace cmocu {

#define CMOCU_CUDNN_FUNCS(X)                     \
  X(cudnnGetVersion)                             \
  X(cudnnGetErrorString)                         \
  X(cudnnCreate)                                 \
  X(cudnnDestroy)                                \
  X(cudnnSetStream)                              \
  X(cudnnCreateTensorDescriptor)                 \
  X(cudnnSetTensorNdDescriptor)                  \
  X(cudnnDestroyTensorDescriptor)                \
  X(cudnnCreateFilterDescriptor)                 \
  X(cudnnSetFilterNdDescriptor)                  \
  X(cudnnDestroyFilterDescriptor)                \
  X(cudnnCreateConvolutionDescriptor)            \
  X(cudnnSetConvolutionNdDescriptor)             \
  X(cudnnSetConvolutionMathType)                 \
  X(cudnnDestroyConvolutionDescriptor)           \
  X(cudnnGetConvolutionForwardAlgorithm_v7)      \
  X(cudnnFindConvolutionForwardAlgorithmEx)      \
  X(cudnnGetConvolutionForwardWorkspaceSize)     \
  X(cudnnConvolutionForward)                     \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7) \
  X(cudnnFindConvolutionBackwardDataAlgorithmEx) \
  X(cudnnGetConvolutionBackwardDataWorkspaceSize) \
  X(cudnnConvolutionBackwardData)                \
  X(cudnnGetConvolutionBackwardFilterAlgorithm_v7) \
  X(cudnnFindConvolutionBackwardFilterAlgorithmEx) \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize) \
  X(cudnnConvolutionBackwardFilter)

struct CudnnApi {
#define CMOCU_CUDNN_PTR_(name) decltype(&::name) name = nullptr;
  CMOCU_CUDNN_FUNCS(CMOCU_CUDNN_PTR_)
#undef CMOCU_CUDNN_PTR_
  std::string path;  // the file that was loaded
};

// Loads cuDNN once (thread-safe). Throws CMO_ERR_BACKEND "cuDNN not found: ..." when it cannot.
// Search order: $COMODAL_CUDNN_PATH (file or folder), then "libcudnn.so.9" through the loader's
// usual paths (LD_LIBRARY_PATH, ldconfig, an already loaded copy, e.g. PyTorch's).
const CudnnApi& cudnn_api();

// The backend's cuDNN handle, bound to its stream (created with the backend).
cudnnHandle_t cudnn_handle(Backend* be);

// Throws CMO_ERR_BACKEND with cuDNN's message when a call failed.
void check_cudnn(cudnnStatus_t st, const char* what);

// Per-backend cache of opaque values (algorithm choices), keyed by a string.
std::shared_ptr<void> cache_get(Backend* be, const std::string& key);
void cache_put(Backend* be, const std::string& key, std::shared_ptr<void> value);

}  // namespace cmocu
