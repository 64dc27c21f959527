// runtime.cpp — the CPU backend's runtime: library/backend/buffer functions of comodal.h, memory
// statistics, plain <-> blocked conversion, the kernel registry and cmo_op_execute with its checks
// and error translation. Kernels live in the other files of native/cpu/.
#include <omp.h>
#include <sys/sysinfo.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "../common/abi_tables.hpp"
#include "dnnl_ctx.hpp"
#include "../common/abi_tables.hpp"
#include "internal.hpp"

namespace cmo {

// Keeps released large blocks by size for reuse: a training step allocates the same sizes again and
// again, and fresh large blocks come from mmap, so every page would fault (and be zeroed) on first
// touch — that cost 25% of a 64^3 convolution. Blocks below kPoolMin go straight to malloc/free.
struct BlockPool {
  static constexpr size_t kPoolMin = 256 * 1024;
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  int64_t bytes = 0;
  int64_t cap = 0;

  static size_t round(size_t n) { return n >= kPoolMin ? (n + 4095) / 4096 * 4096 : (n + 63) / 64 * 64; }
  void* take(size_t n) {
    if (n < kPoolMin) return nullptr;
    std::lock_guard<std::mutex> lock(mu);
    auto it = free_blocks.find(n);
    if (it == free_blocks.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    bytes -= (int64_t)n;
    return p;
  }
  // Returns false when the block is not kept (the caller frees it).
  bool give(void* p, size_t n) {
    if (n < kPoolMin) return false;
    std::lock_guard<std::mutex> lock(mu);
    if (bytes + (int64_t)n > cap) return false;
    free_blocks[n].push_back(p);
    bytes += (int64_t)n;
    return true;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& kv : free_blocks)
      for (void* p : kv.second) std::free(p);
    free_blocks.clear();
    bytes = 0;
  }
  ~BlockPool() { clear(); }
};

struct Backend {
  dnnl::engine engine;
  dnnl::stream stream;
  int n_threads = 1;
  bool deterministic = false;
  bool destroyed = false;  // destroy called while buffers were alive: freed with the last buffer
  std::atomic<int64_t> live_buffers{0};
  std::atomic<int64_t> live_bytes{0};
  std::atomic<int64_t> peak_bytes{0};
  std::mutex exec_mu;  // ops of one backend run one at a time (calls may come from several threads)
  std::mutex cache_mu;
  std::unordered_map<std::string, std::shared_ptr<void>> cache;
  int64_t misses = 0;
  BlockPool pool;
};

}  // namespace cmo

// The opaque handles of the ABI are the internal structs.
struct cmo_backend : cmo::Backend {};
struct cmo_buffer : cmo::Buffer {};

namespace cmo {
namespace {

thread_local std::string g_last_error;

using cmo_abi::dtype_name;
using cmo_abi::dtype_size;
using cmo_abi::op_name;

constexpr int kMaxOps = 64;
KernelFn* kernel_table() {
  static KernelFn table[kMaxOps] = {};
  return table;
}



int default_threads() {
  int n = omp_get_num_procs();
  return n > 0 ? n : 1;
}

void apply_threads(Backend* be) {
  // oneDNN (Debian build, OpenMP runtime) reads the calling thread's OpenMP setting; calls may come
  // from different threads (Deno nonblocking FFI), so set it on every entry.
  if (omp_get_max_threads() != be->n_threads) omp_set_num_threads(be->n_threads);
}

int64_t available_memory_bytes() {
  struct sysinfo si;
  if (sysinfo(&si) != 0) return -1;
  return (int64_t)si.freeram * (int64_t)si.mem_unit + (int64_t)si.bufferram * (int64_t)si.mem_unit;
}

// Opt-in allocation trace (COMODAL_ALLOC_TRACE=<file>): one line per buffer, "a <id> <bytes>" when
// created and "f <id>" when released, ids numbered from 1 in creation order. Used to replay a real
// training step through the CUDA backend's caching allocator on the host
// (native/cuda/tests/test_allocator_host.cpp). When unset it costs one load of a null pointer.
struct AllocTrace {
  std::mutex mu;
  FILE* f = nullptr;
  uint64_t next_id = 1;
  std::unordered_map<const void*, uint64_t> ids;
  static AllocTrace* get() {
    static AllocTrace* t = [] () -> AllocTrace* {
      const char* path = std::getenv("COMODAL_ALLOC_TRACE");
      if (path == nullptr || *path == 0) return nullptr;
      FILE* f = std::fopen(path, "w");
      if (f == nullptr) return nullptr;
      AllocTrace* t = new AllocTrace();  // never deleted: buffers may be released at exit
      t->f = f;
      return t;
    }();
    return t;
  }
  void created(const void* p, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu);
    uint64_t id = next_id++;
    ids[p] = id;
    std::fprintf(f, "a %llu %lld\n", (unsigned long long)id, (long long)bytes);
    std::fflush(f);
  }
  void released(const void* p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = ids.find(p);
    if (it == ids.end()) return;
    std::fprintf(f, "f %llu\n", (unsigned long long)it->second);
    std::fflush(f);
    ids.erase(it);
  }
};

void release_impl(Buffer* b) {
  Backend* be = b->backend;
  if (AllocTrace* t = AllocTrace::get()) t->released(b->data);
  size_t n = BlockPool::round((size_t)std::max<int64_t>(b->bytes, 1));
  if (be->destroyed || !be->pool.give(b->data, n)) std::free(b->data);
  be->live_bytes -= b->bytes;
  int64_t left = --be->live_buffers;
  delete static_cast<cmo_buffer*>(b);
  if (left == 0 && be->destroyed) delete static_cast<cmo_backend*>(be);
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
  } catch (const dnnl::error& e) {
    g_last_error = with_prefix(std::string("oneDNN error (status ") + std::to_string((int)e.status) +
                               "): " + e.what());
    return e.status == dnnl_out_of_memory ? CMO_ERR_OUT_OF_MEMORY : CMO_ERR_BACKEND;
  } catch (const std::bad_alloc&) {
    g_last_error = with_prefix("out of memory (host allocation failed; " +
                               std::to_string(available_memory_bytes()) + " bytes free)");
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

void check_backend(const cmo_backend* be, const char* fn) {
  if (be == nullptr) fail(std::string(fn) + ": backend is NULL");
  if (be->destroyed) fail(std::string(fn) + ": backend was destroyed");
}

using cmo_common::shape_from_desc;

// 16 x n transpose tile: plain rows (stride `ps` between channels) -> blocked (16 lanes per point).
inline void tile_p2b(const float* src, int64_t ps, float* dst, int64_t n) {
  for (int64_t s0 = 0; s0 < n; s0 += 64) {
    int64_t e = std::min<int64_t>(n, s0 + 64);
    for (int c = 0; c < 16; c++) {
      const float* sc = src + c * ps;
      for (int64_t s = s0; s < e; s++) dst[s * 16 + c] = sc[s];
    }
  }
}
inline void tile_b2p(const float* src, float* dst, int64_t ps, int64_t n) {
  for (int64_t s0 = 0; s0 < n; s0 += 64) {
    int64_t e = std::min<int64_t>(n, s0 + 64);
    for (int c = 0; c < 16; c++) {
      float* dc = dst + c * ps;
      for (int64_t s = s0; s < e; s++) dc[s] = src[s * 16 + c];
    }
  }
}

void check_blockable(const Shape& s, const char* fn) {
  if (s.ndim != 5 || s.d[1] % 16 != 0)
    fail(std::string(fn) + ": blocked16 layout needs a 5-D tensor with C % 16 == 0, got " + s.str());
}

}  // namespace

// ------------------------------------------------------------------ internal.hpp
Buffer* alloc_buffer(Backend* be, const Shape& shape, cmo_dtype dtype, cmo_layout layout) {
  if (layout == CMO_LAYOUT_ANY) layout = preferred_layout(shape, dtype);
  if (layout == CMO_LAYOUT_BLOCKED16) {
    if (dtype != CMO_DTYPE_F32) fail("blocked16 layout needs f32, got " + std::string(dtype_name(dtype)));
    check_blockable(shape, "alloc");
  }
  int64_t es = dtype_size(dtype);
  if (es == 0) fail("unknown dtype " + std::to_string((int)dtype));
  int64_t bytes = shape.numel() * es;
  size_t alloc = BlockPool::round((size_t)std::max<int64_t>(bytes, 1));
  void* data = be->pool.take(alloc);
  if (data == nullptr) data = std::aligned_alloc(64, alloc);
  if (data == nullptr) {  // give the pooled blocks back to the system and try once more
    be->pool.clear();
    data = std::aligned_alloc(64, alloc);
  }
  if (data == nullptr)
    throw Error(CMO_ERR_OUT_OF_MEMORY, "out of memory: cannot allocate " + std::to_string(bytes) +
                                           " bytes for a " + dtype_name(dtype) + " tensor " +
                                           shape.str() + " (" +
                                           std::to_string(available_memory_bytes()) + " bytes free)");
  cmo_buffer* b = new (std::nothrow) cmo_buffer();
  if (b == nullptr) {
    std::free(data);
    throw std::bad_alloc();
  }
  b->backend = be;
  b->shape = shape;
  b->dtype = dtype;
  b->layout = layout;
  b->data = data;
  b->bytes = bytes;
  if (AllocTrace* t = AllocTrace::get()) t->created(data, bytes);
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

cmo_layout preferred_layout(const Shape& shape, cmo_dtype dtype) {
  if (dtype == CMO_DTYPE_F32 && shape.ndim == 5 && shape.d[1] > 0 && shape.d[1] % 16 == 0)
    return CMO_LAYOUT_BLOCKED16;
  return CMO_LAYOUT_PLAIN;
}

TempBuffer::~TempBuffer() {
  if (buf) release_impl(buf);
  buf = nullptr;
}

const Buffer* as_layout(const Buffer* x, cmo_layout layout, TempBuffer& tmp) {
  if (layout == CMO_LAYOUT_ANY || x->layout == layout) return x;
  if (tmp.buf) {
    release_impl(tmp.buf);
    tmp.buf = nullptr;
  }
  tmp.buf = alloc_buffer(x->backend, x->shape, x->dtype, layout);
  reorder(x, tmp.buf);
  return tmp.buf;
}

void plain_to_blocked(Backend* be, const Shape& s, const float* src, float* dst) {
  check_blockable(s, "reorder");
  const int64_t N = s.d[0], CB = s.d[1] / 16, D = s.d[2], HW = s.d[3] * s.d[4];
  const int64_t S = D * HW;
  parallel_for(be, N * CB * D, [&](int64_t i) {
    int64_t z = i % D, ncb = i / D;
    int64_t n = ncb / CB, cb = ncb % CB;
    const float* sp = src + ((n * CB + cb) * 16) * S + z * HW;
    float* dp = dst + (ncb * S + z * HW) * 16;
    tile_p2b(sp, S, dp, HW);
  });
  (void)N;
}

void blocked_to_plain(Backend* be, const Shape& s, const float* src, float* dst) {
  check_blockable(s, "reorder");
  const int64_t N = s.d[0], CB = s.d[1] / 16, D = s.d[2], HW = s.d[3] * s.d[4];
  const int64_t S = D * HW;
  parallel_for(be, N * CB * D, [&](int64_t i) {
    int64_t z = i % D, ncb = i / D;
    int64_t n = ncb / CB, cb = ncb % CB;
    float* dp = dst + ((n * CB + cb) * 16) * S + z * HW;
    const float* sp = src + (ncb * S + z * HW) * 16;
    tile_b2p(sp, dp, S, HW);
  });
  (void)N;
}

void reorder(const Buffer* src, Buffer* dst) {
  if (src->shape != dst->shape || src->dtype != dst->dtype)
    fail("reorder: source " + src->shape.str() + " " + dtype_name(src->dtype) + " and destination " +
         dst->shape.str() + " " + dtype_name(dst->dtype) + " differ");
  if (src->layout == dst->layout) {
    if (src->data != dst->data) std::memcpy(dst->data, src->data, (size_t)src->bytes);
    return;
  }
  if (src->dtype != CMO_DTYPE_F32) fail("reorder: blocked16 layout needs f32");
  if (src->layout == CMO_LAYOUT_PLAIN)
    plain_to_blocked(src->backend, src->shape, src->f32(), dst->f32());
  else
    blocked_to_plain(src->backend, src->shape, src->f32(), dst->f32());
}

int threads(Backend* be) { return be->n_threads; }
bool deterministic(Backend* be) { return be->deterministic; }

Buffer* KernelArgs::output(int i, const Shape& shape, cmo_dtype dtype, cmo_layout layout, const char* op,
                           bool* allocated) const {
  if (i < 0 || i >= n_out)
    throw Error(CMO_ERR_INTERNAL, std::string(op) + ": output slot " + std::to_string(i) +
                                      " does not exist (op has " + std::to_string(n_out) + ")");
  if (out[i] == nullptr) {
    out[i] = alloc_buffer(backend, shape, dtype, layout);
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

// ------------------------------------------------------------------ dnnl_ctx.hpp
dnnl::engine& dnnl_engine(Backend* be) { return be->engine; }
dnnl::stream& dnnl_stream(Backend* be) { return be->stream; }

std::shared_ptr<void> cache_get(Backend* be, const std::string& key) {
  std::lock_guard<std::mutex> lock(be->cache_mu);
  auto it = be->cache.find(key);
  return it == be->cache.end() ? nullptr : it->second;
}

void cache_put(Backend* be, const std::string& key, std::shared_ptr<void> value) {
  std::lock_guard<std::mutex> lock(be->cache_mu);
  be->cache[key] = std::move(value);
  be->misses++;
}

int64_t cache_size(Backend* be) {
  std::lock_guard<std::mutex> lock(be->cache_mu);
  return (int64_t)be->cache.size();
}

int64_t cache_misses(Backend* be) {
  std::lock_guard<std::mutex> lock(be->cache_mu);
  return be->misses;
}

}  // namespace cmo

// ------------------------------------------------------------------ the C ABI
using cmo::fail;

extern "C" {

int32_t cmo_abi_version(void) { return CMO_ABI_VERSION; }

int32_t cmo_library_device(void) { return CMO_DEVICE_CPU; }

const char* cmo_version_string(void) {
  static const std::string v = [] {
    const dnnl_version_t* dv = dnnl_version();
    return std::string("comodal-cpu 0.1.0 (oneDNN ") + std::to_string(dv->major) + "." +
           std::to_string(dv->minor) + "." + std::to_string(dv->patch) + ")";
  }();
  return v.c_str();
}

const char* cmo_last_error(void) { return cmo::g_last_error.c_str(); }

cmo_status cmo_backend_create(int32_t device_index, cmo_backend** out) {
  return cmo::guarded("cmo_backend_create", [&] {
    if (out == nullptr) fail("out pointer is NULL");
    *out = nullptr;
    if (device_index != 0)
      fail("the CPU backend has one device (index 0), got index " + std::to_string(device_index));
    auto* be = new cmo_backend();
    try {
      be->engine = dnnl::engine(dnnl::engine::kind::cpu, 0);
      be->stream = dnnl::stream(be->engine);
    } catch (...) {
      delete be;
      throw;
    }
    be->n_threads = cmo::default_threads();
    // Pool cap: a quarter of the machine's memory, at most 8 GiB.
    struct sysinfo si;
    int64_t total = sysinfo(&si) == 0 ? (int64_t)si.totalram * (int64_t)si.mem_unit : (int64_t)4 << 30;
    be->pool.cap = std::min<int64_t>(total / 4, (int64_t)8 << 30);
    *out = be;
  });
}

cmo_status cmo_backend_destroy(cmo_backend* backend) {
  return cmo::guarded("cmo_backend_destroy", [&] {
    cmo::check_backend(backend, "cmo_backend_destroy");
    {
      std::lock_guard<std::mutex> lock(backend->cache_mu);
      backend->cache.clear();
    }
    backend->pool.clear();
    if (backend->live_buffers.load() == 0)
      delete backend;
    else
      backend->destroyed = true;  // freed when its last buffer is released
  });
}

cmo_status cmo_backend_set_threads(cmo_backend* backend, int32_t threads) {
  return cmo::guarded("cmo_backend_set_threads", [&] {
    cmo::check_backend(backend, "cmo_backend_set_threads");
    if (threads < 0) fail("thread count " + std::to_string(threads) + " is negative (0 = all cores)");
    backend->n_threads = threads == 0 ? cmo::default_threads() : threads;
    omp_set_num_threads(backend->n_threads);
  });
}

cmo_status cmo_backend_set_deterministic(cmo_backend* backend, int32_t on) {
  return cmo::guarded("cmo_backend_set_deterministic", [&] {
    cmo::check_backend(backend, "cmo_backend_set_deterministic");
    backend->deterministic = on != 0;
  });
}

int32_t cmo_backend_supports_op(cmo_backend* backend, int32_t op_id) {
  if (backend == nullptr || op_id <= 0 || op_id >= cmo::kMaxOps) return 0;
  return cmo::kernel_table()[op_id] != nullptr ? 1 : 0;
}

cmo_status cmo_backend_memory_stats(cmo_backend* backend, cmo_memory_stats* out) {
  return cmo::guarded("cmo_backend_memory_stats", [&] {
    cmo::check_backend(backend, "cmo_backend_memory_stats");
    if (out == nullptr) fail("out pointer is NULL");
    out->live_buffers = backend->live_buffers.load();
    out->live_bytes = backend->live_bytes.load();
    out->peak_bytes = backend->peak_bytes.load();
    {
      std::lock_guard<std::mutex> lock(backend->pool.mu);
      out->pool_bytes = backend->pool.bytes;
    }
    out->reserved_bytes = out->live_bytes + out->pool_bytes;
    out->device_total_bytes = 0;
    out->device_free_bytes = 0;
  });
}

cmo_status cmo_backend_reset_peak(cmo_backend* backend) {
  return cmo::guarded("cmo_backend_reset_peak", [&] {
    cmo::check_backend(backend, "cmo_backend_reset_peak");
    backend->peak_bytes = backend->live_bytes.load();
  });
}

cmo_status cmo_backend_synchronize(cmo_backend* backend) {
  return cmo::guarded("cmo_backend_synchronize", [&] {
    cmo::check_backend(backend, "cmo_backend_synchronize");
    backend->stream.wait();
  });
}

cmo_status cmo_backend_trim(cmo_backend* backend) {
  return cmo::guarded("cmo_backend_trim", [&] {
    cmo::check_backend(backend, "cmo_backend_trim");
    {
      std::lock_guard<std::mutex> lock(backend->cache_mu);
      backend->cache.clear();
    }
    backend->pool.clear();
  });
}

cmo_status cmo_buffer_create(cmo_backend* backend, const cmo_tensor_desc* desc, cmo_buffer** out) {
  return cmo::guarded("cmo_buffer_create", [&] {
    cmo::check_backend(backend, "cmo_buffer_create");
    if (desc == nullptr || out == nullptr) fail("desc or out pointer is NULL");
    *out = nullptr;
    cmo::Shape s = cmo::shape_from_desc(*desc, "cmo_buffer_create");
    if (desc->dtype < 0 || desc->dtype > CMO_DTYPE_U8)
      fail("unknown dtype " + std::to_string(desc->dtype));
    if (desc->layout < 0 || desc->layout > CMO_LAYOUT_ANY)
      fail("unknown layout " + std::to_string(desc->layout));
    auto dt = (cmo_dtype)desc->dtype;
    auto layout = (cmo_layout)desc->layout;
    if (layout == CMO_LAYOUT_BLOCKED16 &&
        (dt != CMO_DTYPE_F32 || s.ndim != 5 || s.d[1] % 16 != 0))
      fail("blocked16 layout needs a 5-D f32 tensor with C % 16 == 0, got " + s.str() + " " +
           cmo::dtype_name(dt));
    *out = static_cast<cmo_buffer*>(cmo::alloc_buffer(backend, s, dt, layout));
  });
}

cmo_status cmo_buffer_release(cmo_buffer* buffer) {
  return cmo::guarded("cmo_buffer_release", [&] {
    if (buffer == nullptr) fail("buffer is NULL");
    cmo::release_impl(buffer);
  });
}

cmo_status cmo_buffer_describe(const cmo_buffer* buffer, cmo_tensor_desc* out) {
  return cmo::guarded("cmo_buffer_describe", [&] {
    if (buffer == nullptr || out == nullptr) fail("buffer or out pointer is NULL");
    *out = cmo_tensor_desc{};
    out->ndim = buffer->shape.ndim;
    for (int i = 0; i < CMO_MAX_DIMS; i++) out->dims[i] = i < buffer->shape.ndim ? buffer->shape.d[i] : 0;
    out->dtype = buffer->dtype;
    out->layout = buffer->layout;
  });
}

cmo_status cmo_buffer_write(cmo_buffer* buffer, const void* host, int64_t bytes) {
  return cmo::guarded("cmo_buffer_write", [&] {
    if (buffer == nullptr || (host == nullptr && bytes > 0)) fail("buffer or host pointer is NULL");
    if (bytes != buffer->bytes)
      fail("got " + std::to_string(bytes) + " bytes for a " + cmo::dtype_name(buffer->dtype) + " tensor " +
           buffer->shape.str() + " of " + std::to_string(buffer->bytes) + " bytes");
    if (bytes == 0) return;
    cmo::apply_threads(buffer->backend);
    if (buffer->blocked())
      cmo::plain_to_blocked(buffer->backend, buffer->shape, static_cast<const float*>(host), buffer->f32());
    else
      std::memcpy(buffer->data, host, (size_t)bytes);
  });
}

cmo_status cmo_buffer_read(const cmo_buffer* buffer, void* host, int64_t bytes) {
  return cmo::guarded("cmo_buffer_read", [&] {
    if (buffer == nullptr || (host == nullptr && bytes > 0)) fail("buffer or host pointer is NULL");
    if (bytes != buffer->bytes)
      fail("asked for " + std::to_string(bytes) + " bytes of a " + cmo::dtype_name(buffer->dtype) +
           " tensor " + buffer->shape.str() + " of " + std::to_string(buffer->bytes) + " bytes");
    if (bytes == 0) return;
    cmo::apply_threads(buffer->backend);
    if (buffer->blocked())
      cmo::blocked_to_plain(buffer->backend, buffer->shape, buffer->f32(), static_cast<float*>(host));
    else
      std::memcpy(host, buffer->data, (size_t)bytes);
  });
}

cmo_status cmo_op_execute(cmo_backend* backend, int32_t op, cmo_buffer* const* inputs, int32_t n_inputs,
                          cmo_buffer** outputs, int32_t n_outputs, const void* params,
                          int64_t params_bytes) {
  const char* name = cmo::op_name(op);
  std::string prefix = name ? name : "cmo_op_execute";
  std::vector<cmo::Buffer*> outs;
  std::vector<bool> was_null;
  cmo_status st = cmo::guarded(prefix, [&] {
    cmo::check_backend(backend, prefix.c_str());
    std::vector<const cmo::Buffer*> ins;
    cmo_common::check_op_call<cmo::Buffer>(backend, op, inputs, n_inputs, outputs, n_outputs, ins, outs, was_null);
    cmo::KernelFn fn = op < cmo::kMaxOps ? cmo::kernel_table()[op] : nullptr;
    if (fn == nullptr) cmo::unsupported("not implemented by the CPU backend");
    std::lock_guard<std::mutex> lock(backend->exec_mu);
    cmo::apply_threads(backend);
    cmo::KernelArgs args{backend, ins.data(), n_inputs, outs.data(), n_outputs, params, params_bytes};
    fn(args);
    for (int i = 0; i < n_outputs; i++) outputs[i] = static_cast<cmo_buffer*>(outs[(size_t)i]);
  });
  if (st != CMO_OK) {
    // Outputs the failed kernel allocated are released; the caller's slots stay as they were.
    for (size_t i = 0; i < outs.size(); i++)
      if (was_null[i] && outs[i] != nullptr) cmo::free_buffer(outs[i]);
  }
  return st;
}

}  // extern "C"
