// runtime.cu — the CUDA backend's core: device discovery, backend (stream, cuDNN handle, caching
// pool), buffers, memory statistics, errors, the kernel registry and cmo_op_execute with its checks.
// Kernels live in the other files of native/cuda/.
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "../common/abi_tables.hpp"
#include "block_allocator.hpp"
#include "cudnn_api.hpp"
#include "internal.cuh"

namespace cmocu {

// Caching allocator: segments are cudaMalloc'ed and kept; requests are served best-fit from
// sub-blocks of them, split and coalesced (block_allocator.hpp has the policy). All work of a backend
// runs on its one stream, so a block freed after queuing work that reads it can be reused by later
// work at once. Segments are cudaFree'd only by pool_release_cached (stream idle) and when cudaMalloc
// fails (the allocator then releases the entirely-free segments after synchronising and retries).
struct Pool {
  std::mutex mu;
  cudaError_t last_error = cudaSuccess;  // of the latest failed cudaMalloc (guarded by mu)
  cmo_alloc::BlockAllocator blocks;
  explicit Pool(const cudaStream_t* stream)
      : blocks(
            [this](size_t n) -> void* {
              void* p = nullptr;
              cudaError_t err = cudaMalloc(&p, n);
              if (err != cudaSuccess) {
                cudaGetLastError();
                last_error = err;
                return nullptr;
              }
              return p;
            },
            [](void* p) { cudaFree(p); }) {
    blocks.set_before_release([stream] {
      if (*stream) cudaStreamSynchronize(*stream);
    });
  }
};

struct Backend {
  int device = 0;
  cudaStream_t stream = nullptr;
  cudnnHandle_t cudnn = nullptr;
  int sms = 1;
  std::string device_name;
  bool deterministic = false;
  bool destroyed = false;  // destroy called while buffers were alive: freed with the last buffer
  std::atomic<int64_t> live_buffers{0};
  std::atomic<int64_t> live_bytes{0};
  std::atomic<int64_t> peak_bytes{0};
  Pool pool{&stream};
  std::mutex cache_mu;
  std::unordered_map<std::string, std::shared_ptr<void>> cache;
};

}  // namespace cmocu

// The opaque handles of the ABI are the internal structs.
struct cmo_backend : cmocu::Backend {};
struct cmo_buffer : cmocu::Buffer {};

namespace cmocu {

int64_t dtype_size(cmo_dtype dt) { return cmo_abi::dtype_size(dt); }
const char* dtype_name(int64_t dt) { return cmo_abi::dtype_name(dt); }

namespace {

thread_local std::string g_last_error;

using cmo_abi::op_name;

constexpr int kMaxOps = 64;
KernelFn* kernel_table() {
  static KernelFn table[kMaxOps] = {};
  return table;
}

std::string device_memory_text(int device) {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return "free device memory unknown";
  }
  (void)device;
  return std::to_string(free_b) + " bytes free of " + std::to_string(total_b);
}

void pool_release_cached(Backend* be) {
  // Caller holds be->pool.mu; the stream must be idle so no queued work uses the blocks.
  be->pool.blocks.release_cached();
}

void* pool_alloc(Backend* be, size_t bytes, const std::string& what) {
  if (bytes == 0) return nullptr;
  std::lock_guard<std::mutex> lock(be->pool.mu);
  be->pool.last_error = cudaSuccess;
  void* p = be->pool.blocks.allocate(bytes);
  if (p != nullptr) return p;
  // No block: cudaMalloc failed, also after the cached segments were released (or the request is
  // beyond any device, refused before cudaMalloc: reported as out of memory too).
  cudaError_t err = be->pool.last_error == cudaSuccess ? cudaErrorMemoryAllocation : be->pool.last_error;
  if (err == cudaErrorMemoryAllocation)
    throw Error(CMO_ERR_OUT_OF_MEMORY,
                "out of device memory: requested " + std::to_string(bytes) + " bytes for " + what + " on " +
                    be->device_name + ", " + device_memory_text(be->device) + " (the pool holds " +
                    std::to_string(be->pool.blocks.stats().reserved) +
                    " bytes); use a smaller patch or batch, or use the CPU backend "
                    "(COMODAL_DEVICE=cpu)");
  throw Error(CMO_ERR_BACKEND, "cudaMalloc of " + std::to_string(bytes) + " bytes for " + what +
                                   " failed: " + cudaGetErrorString(err));
}

void pool_free(Backend* be, void* p) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(be->pool.mu);
  be->pool.blocks.free(p);  // a pointer the pool does not own is ignored
}

void destroy_backend(Backend* be) {
  cudaSetDevice(be->device);
  if (be->stream) cudaStreamSynchronize(be->stream);
  {
    std::lock_guard<std::mutex> lock(be->cache_mu);
    be->cache.clear();
  }
  {
    std::lock_guard<std::mutex> lock(be->pool.mu);
    be->pool.blocks.release_all();
  }
  if (be->cudnn) cudnn_api().cudnnDestroy(be->cudnn);
  if (be->stream) cudaStreamDestroy(be->stream);
  cudaGetLastError();
  delete static_cast<cmo_backend*>(be);
}

void release_impl(Buffer* b) {
  Backend* be = b->backend;
  pool_free(be, b->data);
  be->live_bytes -= b->bytes;
  int64_t left = --be->live_buffers;
  delete static_cast<cmo_buffer*>(b);
  if (left == 0 && be->destroyed) destroy_backend(be);
}

// Turns the active exception into a status + thread-local message; `prefix` names the op (may be "").
cmo_status translate(const std::string& prefix) {
  auto with_prefix = [&](const std::string& msg) {
    if (prefix.empty() || msg.rfind(prefix + ":", 0) == 0) return msg;
    return prefix + ": " + msg;
  };
  try {
    throw;
  } catch (const Error& e) {
    g_last_error = with_prefix(e.what());
    return e.status;
  } catch (const std::bad_alloc&) {
    g_last_error = with_prefix("out of host memory");
    return CMO_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = with_prefix(std::string("internal error: ") + e.what());
    return CMO_ERR_INTERNAL;
  } catch (...) {
    g_last_error = with_prefix("internal error: unknown exception");
    return CMO_ERR_INTERNAL;
  }
}

template <typename F>
cmo_status guarded(const std::string& prefix, F&& f) {
  try {
    f();
    g_last_error.clear();
    return CMO_OK;
  } catch (...) {
    return translate(prefix);
  }
}

void check_backend(const Backend* be, const char* fn) {
  if (be == nullptr) fail(std::string(fn) + ": backend is NULL");
  if (be->destroyed) fail(std::string(fn) + ": backend was destroyed");
  check_cuda(cudaSetDevice(be->device), "cudaSetDevice");
}

using cmo_common::shape_from_desc;

}  // namespace

// ------------------------------------------------------------------ internal.cuh
void check_cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky launch error where possible
  if (err == cudaErrorMemoryAllocation)
    throw Error(CMO_ERR_OUT_OF_MEMORY, std::string(what) + ": out of device memory (" +
                                           device_memory_text(0) +
                                           "); use the CPU backend (COMODAL_DEVICE=cpu)");
  throw Error(CMO_ERR_BACKEND, std::string(what) + " failed: CUDA error " + std::to_string((int)err) +
                                   " (" + cudaGetErrorName(err) + "): " + cudaGetErrorString(err));
}

Buffer* alloc_buffer(Backend* be, const Shape& shape, cmo_dtype dtype) {
  int64_t es = dtype_size(dtype);
  if (es == 0) fail("unknown dtype " + std::to_string((int)dtype));
  int64_t bytes = shape.numel() * es;
  void* data = pool_alloc(be, (size_t)bytes, std::string("a ") + dtype_name(dtype) + " tensor " + shape.str());
  cmo_buffer* b = new (std::nothrow) cmo_buffer();
  if (b == nullptr) {
    pool_free(be, data);
    throw std::bad_alloc();
  }
  b->backend = be;
  b->shape = shape;
  b->dtype = dtype;
  b->data = data;
  b->bytes = bytes;
  be->live_buffers++;
  int64_t now = (be->live_bytes += bytes);
  int64_t peak = be->peak_bytes.load();
  while (now > peak && !be->peak_bytes.compare_exchange_weak(peak, now)) {
  }
  return b;
}

void free_buffer(Buffer* b) {
  if (b) release_impl(b);
}

Scratch::Scratch(Backend* b, size_t n) : be(b), bytes(n) {
  ptr = pool_alloc(b, n, "scratch space");
}
Scratch::~Scratch() { pool_free(be, ptr); }

cudaStream_t stream(Backend* be) { return be->stream; }
bool deterministic(Backend* be) { return be->deterministic; }
int device_index(Backend* be) { return be->device; }
int sm_count(Backend* be) { return be->sms; }
void sync(Backend* be) { check_cuda(cudaStreamSynchronize(be->stream), "cudaStreamSynchronize"); }
void pool_trim(Backend* be) {
  sync(be);
  std::lock_guard<std::mutex> lock(be->pool.mu);
  pool_release_cached(be);
}

Buffer* KernelArgs::output(int i, const Shape& shape, cmo_dtype dtype, const char* op, bool* allocated) const {
  if (i < 0 || i >= n_out)
    throw Error(CMO_ERR_INTERNAL, std::string(op) + ": output slot " + std::to_string(i) +
                                      " does not exist (op has " + std::to_string(n_out) + ")");
  if (out[i] == nullptr) {
    out[i] = alloc_buffer(backend, shape, dtype);
    if (allocated) *allocated = true;
    return out[i];
  }
  Buffer* b = out[i];
  if (b->shape != shape)
    fail(std::string(op) + ": output " + std::to_string(i) + " has shape " + b->shape.str() +
         ", expected " + shape.str());
  if (b->dtype != dtype)
    fail(std::string(op) + ": output " + std::to_string(i) + " has dtype " + dtype_name(b->dtype) +
         ", expected " + dtype_name(dtype));
  if (allocated) *allocated = false;
  return b;
}

void register_kernel(int op, KernelFn fn) {
  if (op > 0 && op < kMaxOps) kernel_table()[op] = fn;
}

// ------------------------------------------------------------------ cudnn_api.hpp
const CudnnApi& cudnn_api() {
  static std::mutex mu;
  static std::unique_ptr<CudnnApi> api;
  static std::string failure;
  std::lock_guard<std::mutex> lock(mu);
  if (api) return *api;
  if (!failure.empty()) throw Error(CMO_ERR_BACKEND, failure);
  std::vector<std::string> tries;
  if (const char* env = std::getenv("COMODAL_CUDNN_PATH"); env && *env) {
    std::string p = env;
    if (p.size() < 3 || p.find(".so") == std::string::npos) p += "/libcudnn.so.9";
    tries.push_back(p);
  }
  tries.push_back("libcudnn.so.9");
  std::string errors;
  void* h = nullptr;
  std::string used;
  for (const auto& t : tries) {
    h = dlopen(t.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h) {
      used = t;
      break;
    }
    const char* e = dlerror();
    errors += "\n  " + t + ": " + (e ? e : "not found");
  }
  if (!h) {
    failure = "cuDNN not found: could not load libcudnn.so.9 (set COMODAL_CUDNN_PATH to the folder "
              "holding it, or LD_LIBRARY_PATH); tried:" + errors;
    throw Error(CMO_ERR_BACKEND, failure);
  }
  auto a = std::make_unique<CudnnApi>();
  std::string missing;
#define CMOCU_CUDNN_LOAD_(name)                                           \
  a->name = reinterpret_cast<decltype(&::name)>(dlsym(h, #name));       \
  if (a->name == nullptr) missing += std::string(missing.empty() ? "" : ", ") + #name;
  CMOCU_CUDNN_FUNCS(CMOCU_CUDNN_LOAD_)
#undef CMOCU_CUDNN_LOAD_
  if (!missing.empty()) {
    failure = "cuDNN not found: " + used + " lacks " + missing + " (cuDNN 9 is needed)";
    throw Error(CMO_ERR_BACKEND, failure);
  }
  size_t v = a->cudnnGetVersion();
  if (v < 90000) {
    failure = "cuDNN not found: " + used + " is version " + std::to_string(v) + ", cuDNN 9 is needed";
    throw Error(CMO_ERR_BACKEND, failure);
  }
  a->path = used;
  api = std::move(a);
  return *api;
}

cudnnHandle_t cudnn_handle(Backend* be) { return be->cudnn; }

void check_cudnn(cudnnStatus_t st, const char* what) {
  if (st == CUDNN_STATUS_SUCCESS) return;
  const char* msg = cudnn_api().cudnnGetErrorString(st);
  cmo_status code = st == CUDNN_STATUS_ALLOC_FAILED ? CMO_ERR_OUT_OF_MEMORY : CMO_ERR_BACKEND;
  throw Error(code, std::string(what) + " failed: cuDNN status " + std::to_string((int)st) + " (" +
                        (msg ? msg : "?") + ")");
}

std::shared_ptr<void> cache_get(Backend* be, const std::string& key) {
  std::lock_guard<std::mutex> lock(be->cache_mu);
  auto it = be->cache.find(key);
  return it == be->cache.end() ? nullptr : it->second;
}

void cache_put(Backend* be, const std::string& key, std::shared_ptr<void> value) {
  std::lock_guard<std::mutex> lock(be->cache_mu);
  be->cache[key] = std::move(value);
}

}  // namespace cmocu

// ------------------------------------------------------------------ the C ABI
using cmocu::fail;

extern "C" {

int32_t cmo_abi_version(void) { return CMO_ABI_VERSION; }

int32_t cmo_library_device(void) { return CMO_DEVICE_CUDA; }

const char* cmo_version_string(void) {
  static const std::string v = [] {
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    return std::string("comodal-cuda 0.1.0 (CUDA runtime ") + std::to_string(rt / 1000) + "." +
           std::to_string((rt % 1000) / 10) + ", built against cuDNN " + std::to_string(CUDNN_MAJOR) +
           "." + std::to_string(CUDNN_MINOR) + "." + std::to_string(CUDNN_PATCHLEVEL) + ")";
  }();
  return v.c_str();
}

const char* cmo_last_error(void) { return cmocu::g_last_error.c_str(); }

cmo_status cmo_backend_create(int32_t device_index, cmo_backend** out) {
  return cmocu::guarded("cmo_backend_create", [&] {
    if (out == nullptr) fail("out pointer is NULL");
    *out = nullptr;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      cudaGetLastError();
      std::string why = err == cudaSuccess ? "the driver reports 0 devices"
                        : err == cudaErrorInsufficientDriver
                            ? "no CUDA driver, or one older than this library's CUDA runtime"
                            : std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
      throw cmocu::Error(CMO_ERR_NO_DEVICE, "no CUDA device (" + why + "); use the CPU backend (COMODAL_DEVICE=cpu)");
    }
    if (device_index < 0 || device_index >= count)
      fail("device index " + std::to_string(device_index) + " is out of range: " + std::to_string(count) +
           " CUDA device(s)");
    cmocu::check_cuda(cudaSetDevice(device_index), "cudaSetDevice");
    const cmocu::CudnnApi& api = cmocu::cudnn_api();  // "cuDNN not found" stops here
    auto* be = new cmo_backend();
    be->device = device_index;
    try {
      cudaDeviceProp prop;
      cmocu::check_cuda(cudaGetDeviceProperties(&prop, device_index), "cudaGetDeviceProperties");
      be->sms = prop.multiProcessorCount;
      be->device_name = std::string(prop.name) + " (device " + std::to_string(device_index) + ")";
      cmocu::check_cuda(cudaStreamCreateWithFlags(&be->stream, cudaStreamNonBlocking), "cudaStreamCreate");
      cudnnStatus_t cst = api.cudnnCreate(&be->cudnn);
      if (cst != CUDNN_STATUS_SUCCESS)
        throw cmocu::Error(CMO_ERR_BACKEND, std::string("cuDNN not usable: cudnnCreate failed with status ") +
                                                std::to_string((int)cst) + " (" + api.cudnnGetErrorString(cst) +
                                                ") using " + api.path +
                                                "; its sub-libraries (libcudnn_cnn.so.9, ...) must be beside it");
      cmocu::check_cudnn(api.cudnnSetStream(be->cudnn, be->stream), "cudnnSetStream");
    } catch (...) {
      if (be->cudnn) api.cudnnDestroy(be->cudnn);
      if (be->stream) cudaStreamDestroy(be->stream);
      delete be;
      throw;
    }
    const char* det = std::getenv("COMODAL_DETERMINISTIC");
    be->deterministic = det && *det && std::string(det) != "0";
    *out = be;
  });
}

cmo_status cmo_backend_destroy(cmo_backend* backend) {
  return cmocu::guarded("cmo_backend_destroy", [&] {
    cmocu::check_backend(backend, "cmo_backend_destroy");
    if (backend->live_buffers.load() == 0)
      cmocu::destroy_backend(backend);
    else
      backend->destroyed = true;  // freed when its last buffer is released
  });
}

cmo_status cmo_backend_set_threads(cmo_backend* backend, int32_t threads) {
  return cmocu::guarded("cmo_backend_set_threads", [&] {
    cmocu::check_backend(backend, "cmo_backend_set_threads");
    if (threads < 0) fail("thread count " + std::to_string(threads) + " is negative (0 = all cores)");
  });
}

cmo_status cmo_backend_set_deterministic(cmo_backend* backend, int32_t on) {
  return cmocu::guarded("cmo_backend_set_deterministic", [&] {
    cmocu::check_backend(backend, "cmo_backend_set_deterministic");
    backend->deterministic = on != 0;
  });
}

int32_t cmo_backend_supports_op(cmo_backend* backend, int32_t op_id) {
  if (backend == nullptr || op_id <= 0 || op_id >= cmocu::kMaxOps) return 0;
  return cmocu::kernel_table()[op_id] != nullptr ? 1 : 0;
}

cmo_status cmo_backend_memory_stats(cmo_backend* backend, cmo_memory_stats* out) {
  return cmocu::guarded("cmo_backend_memory_stats", [&] {
    cmocu::check_backend(backend, "cmo_backend_memory_stats");
    if (out == nullptr) fail("out pointer is NULL");
    out->live_buffers = backend->live_buffers.load();
    out->live_bytes = backend->live_bytes.load();
    out->peak_bytes = backend->peak_bytes.load();
    {
      std::lock_guard<std::mutex> lock(backend->pool.mu);
      const cmo_alloc::Stats& ps = backend->pool.blocks.stats();
      out->pool_bytes = (int64_t)ps.cached();        // reserved but in no live block
      out->reserved_bytes = (int64_t)ps.reserved;  // in use + cached, like PyTorch's "reserved"
    }
    size_t free_b = 0, total_b = 0;
    cmocu::check_cuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    out->device_total_bytes = (int64_t)total_b;
    out->device_free_bytes = (int64_t)free_b;
  });
}

cmo_status cmo_backend_reset_peak(cmo_backend* backend) {
  return cmocu::guarded("cmo_backend_reset_peak", [&] {
    cmocu::check_backend(backend, "cmo_backend_reset_peak");
    backend->peak_bytes = backend->live_bytes.load();
  });
}

cmo_status cmo_backend_synchronize(cmo_backend* backend) {
  return cmocu::guarded("cmo_backend_synchronize", [&] {
    cmocu::check_backend(backend, "cmo_backend_synchronize");
    cmocu::sync(backend);
  });
}

cmo_status cmo_backend_trim(cmo_backend* backend) {
  return cmocu::guarded("cmo_backend_trim", [&] {
    cmocu::check_backend(backend, "cmo_backend_trim");
    cmocu::sync(backend);
    {
      std::lock_guard<std::mutex> lock(backend->cache_mu);
      backend->cache.clear();
    }
    std::lock_guard<std::mutex> lock(backend->pool.mu);
    cmocu::pool_release_cached(backend);
  });
}

cmo_status cmo_buffer_create(cmo_backend* backend, const cmo_tensor_desc* desc, cmo_buffer** out) {
  return cmocu::guarded("cmo_buffer_create", [&] {
    cmocu::check_backend(backend, "cmo_buffer_create");
    if (desc == nullptr || out == nullptr) fail("desc or out pointer is NULL");
    *out = nullptr;
    cmocu::Shape s = cmocu::shape_from_desc(*desc, "cmo_buffer_create");
    if (desc->dtype < 0 || desc->dtype > CMO_DTYPE_U8) fail("unknown dtype " + std::to_string(desc->dtype));
    if (desc->layout < 0 || desc->layout > CMO_LAYOUT_ANY) fail("unknown layout " + std::to_string(desc->layout));
    auto dt = (cmo_dtype)desc->dtype;
    if (desc->layout == CMO_LAYOUT_BLOCKED16 && (dt != CMO_DTYPE_F32 || s.ndim != 5 || s.d[1] % 16 != 0))
      fail("blocked16 layout needs a 5-D f32 tensor with C % 16 == 0, got " + s.str() + " " +
           cmocu::dtype_name(dt));
    // The CUDA backend stores every tensor plain (cuDNN reads NCDHW directly): a blocked16 request
    // is honoured as plain, which cmo_buffer_describe reports.
    *out = static_cast<cmo_buffer*>(cmocu::alloc_buffer(backend, s, dt));
  });
}

cmo_status cmo_buffer_release(cmo_buffer* buffer) {
  return cmocu::guarded("cmo_buffer_release", [&] {
    if (buffer == nullptr) fail("buffer is NULL");
    cudaSetDevice(buffer->backend->device);
    cmocu::release_impl(buffer);
  });
}

cmo_status cmo_buffer_describe(const cmo_buffer* buffer, cmo_tensor_desc* out) {
  return cmocu::guarded("cmo_buffer_describe", [&] {
    if (buffer == nullptr || out == nullptr) fail("buffer or out pointer is NULL");
    *out = cmo_tensor_desc{};
    out->ndim = buffer->shape.ndim;
    for (int i = 0; i < CMO_MAX_DIMS; i++) out->dims[i] = i < buffer->shape.ndim ? buffer->shape.d[i] : 0;
    out->dtype = buffer->dtype;
    out->layout = CMO_LAYOUT_PLAIN;
  });
}

cmo_status cmo_buffer_write(cmo_buffer* buffer, const void* host, int64_t bytes) {
  return cmocu::guarded("cmo_buffer_write", [&] {
    if (buffer == nullptr || (host == nullptr && bytes > 0)) fail("buffer or host pointer is NULL");
    cmocu::check_backend(buffer->backend, "cmo_buffer_write");
    if (bytes != buffer->bytes)
      fail("got " + std::to_string(bytes) + " bytes for a " + cmocu::dtype_name(buffer->dtype) + " tensor " +
           buffer->shape.str() + " of " + std::to_string(buffer->bytes) + " bytes");
    if (bytes == 0) return;
    cudaStream_t s = buffer->backend->stream;
    cmocu::check_cuda(cudaMemcpyAsync(buffer->data, host, (size_t)bytes, cudaMemcpyHostToDevice, s),
                      "cudaMemcpyAsync (host to device)");
    cmocu::sync(buffer->backend);
  });
}

cmo_status cmo_buffer_read(const cmo_buffer* buffer, void* host, int64_t bytes) {
  return cmocu::guarded("cmo_buffer_read", [&] {
    if (buffer == nullptr || (host == nullptr && bytes > 0)) fail("buffer or host pointer is NULL");
    cmocu::check_backend(buffer->backend, "cmo_buffer_read");
    if (bytes != buffer->bytes)
      fail("asked for " + std::to_string(bytes) + " bytes of a " + cmocu::dtype_name(buffer->dtype) +
           " tensor " + buffer->shape.str() + " of " + std::to_string(buffer->bytes) + " bytes");
    if (bytes == 0) return;
    cudaStream_t s = buffer->backend->stream;
    cmocu::check_cuda(cudaMemcpyAsync(host, buffer->data, (size_t)bytes, cudaMemcpyDeviceToHost, s),
                      "cudaMemcpyAsync (device to host)");
    cmocu::sync(buffer->backend);
  });
}

cmo_status cmo_op_execute(cmo_backend* backend, int32_t op, cmo_buffer* const* inputs, int32_t n_inputs,
                          cmo_buffer** outputs, int32_t n_outputs, const void* params,
                          int64_t params_bytes) {
  const char* name = cmocu::op_name(op);
  std::string prefix = name ? name : "cmo_op_execute";
  std::vector<cmocu::Buffer*> outs;
  std::vector<bool> was_null;
  cmo_status st = cmocu::guarded(prefix, [&] {
    cmocu::check_backend(backend, prefix.c_str());
    std::vector<const cmocu::Buffer*> ins;
    cmo_common::check_op_call<cmocu::Buffer>(backend, op, inputs, n_inputs, outputs, n_outputs, ins, outs, was_null);
    cmocu::KernelFn fn = op < cmocu::kMaxOps ? cmocu::kernel_table()[op] : nullptr;
    if (fn == nullptr) cmocu::unsupported("not implemented by the CUDA backend");
    cmocu::KernelArgs args{backend, ins.data(), n_inputs, outs.data(), n_outputs, params, params_bytes};
    fn(args);
    // COMODAL_CUDA_SYNC_OPS=1: wait for every op (profiling: the caller's clock then times the GPU work,
    // and an asynchronous kernel fault is reported by the op that caused it).
    static const bool sync_ops = [] {
      const char* e = std::getenv("COMODAL_CUDA_SYNC_OPS");
      return e && *e && std::string(e) != "0";
    }();
    if (sync_ops) cmocu::sync(backend);
    for (int i = 0; i < n_outputs; i++) outputs[i] = static_cast<cmo_buffer*>(outs[(size_t)i]);
  });
  if (st != CMO_OK) {
    // Outputs the failed kernel allocated are released; the caller's slots stay as they were.
    for (size_t i = 0; i < outs.size(); i++)
      if (was_null[i] && outs[i] != nullptr) cmocu::free_buffer(outs[i]);
  }
  return st;
}

}  // extern "C"
