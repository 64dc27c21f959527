// dnnl_ctx.hpp — oneDNN context and backend services for the CPU op files that call oneDNN
// (conv.cpp) or need more than internal.hpp offers. Not part of the ABI.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

#include "internal.hpp"

namespace cmo {

// The oneDNN engine and stream of a backend (one of each per backend, created with it).
dnnl::engine& dnnl_engine(Backend* be);
dnnl::stream& dnnl_stream(Backend* be);

// Releases a buffer made by alloc_buffer (kernels normally use TempBuffer instead).
void free_buffer(Buffer* b);

// Per-backend cache of objects (primitives, descriptors) keyed by a string. `make` runs once per key
// (under the cache lock); the entry lives until cmo_backend_trim or the backend is destroyed.
std::shared_ptr<void> cache_get(Backend* be, const std::string& key);
void cache_put(Backend* be, const std::string& key, std::shared_ptr<void> value);

template <typename T, typename Make>
std::shared_ptr<T> cached(Backend* be, const std::string& key, Make&& make) {
  std::shared_ptr<void> v = cache_get(be, key);
  if (v) return std::static_pointer_cast<T>(v);
  std::shared_ptr<T> made = std::make_shared<T>(make());
  cache_put(be, key, made);
  return made;
}

// Number of entries in the cache (tests check that a second identical call creates none).
int64_t cache_size(Backend* be);
// Total number of cache misses since the backend was created.
int64_t cache_misses(Backend* be);

// The plain<->blocked conversion on raw pointers (5-D f32 shape, C % 16 == 0).
void plain_to_blocked(Backend* be, const Shape& s, const float* src, float* dst);
void blocked_to_plain(Backend* be, const Shape& s, const float* src, float* dst);

}  // namespace cmo
