// permute.cpp — PERMUTE (any axis order, any dtype).
//
// One oneDNN reorder between a descriptor of x's memory and one of y's memory: for a plain x, the
// copy plan of native/common/permute_plan.hpp (size-1 axes dropped, axes that stay neighbours
// merged) in y's axis order, with x's strides as the source strides and y row-major; a blocked x
// (nCdhw16c) is read in place, its own descriptor against y's row-major strides permuted back to x's
// axis order. An order that keeps the row-major sequence is a memcpy. Where oneDNN has no reorder
// for a pair of descriptors, a strided loop over the plan does the copy.
#include <oneapi/dnnl/dnnl.hpp>

#include "../common/permute_plan.hpp"
#include "dnnl_ctx.hpp"
#include "kernel_util.hpp"

namespace cmo {
namespace {

using dnnl::memory;
using cmo_common::PermutePlan;

memory::data_type dnnl_dtype(cmo_dtype t) {
  switch (t) {
    case CMO_DTYPE_F32:
      return memory::data_type::f32;
    case CMO_DTYPE_I32:
      return memory::data_type::s32;
    case CMO_DTYPE_U8:
      return memory::data_type::u8;
  }
  return memory::data_type::undef;
}

// y (row-major over the plan's dims) from x read with the plan's strides.
template <typename T>
void strided_copy(Backend* be, const T* x, T* y, const PermutePlan& pl) {
  const int n = pl.ndim;
  const int64_t inner = pl.dims[n - 1], is = pl.strides[n - 1];
  int64_t rows = 1;
  for (int i = 0; i < n - 1; i++) rows *= pl.dims[i];
  const int64_t per = std::max<int64_t>(1, ku::kChunk / inner);
  ku::parallel_tasks(be, (rows + per - 1) / per, rows * inner, [&](int64_t t) {
    const int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
    for (int64_t r = r0; r < r1; r++) {
      int64_t off = 0, rem = r;
      for (int i = n - 2; i >= 0; i--) {
        off += (rem % pl.dims[i]) * pl.strides[i];
        rem /= pl.dims[i];
      }
      const T* px = x + off;
      T* py = y + r * inner;
      for (int64_t j = 0; j < inner; j++) py[j] = px[j * is];
    }
  });
}

struct PermutePrim {
  memory::desc src, dst;
  dnnl::reorder prim;  // empty when oneDNN has no reorder for the pair (the strided loop runs)
  bool ok = false;
};

std::string dims_key(const memory::dims& d) {
  std::string k;
  for (auto v : d) k += std::to_string(v) + ",";
  return k;
}

void permute(const KernelArgs& a) {
  const auto& p = a.p<cmo_permute_params>("PERMUTE");
  const Buffer* x = ku::input(a, 0, "x");
  const PermutePlan pl = cmo_common::permute_plan(x->shape, p);
  Buffer* y = a.output(0, pl.out, x->dtype, CMO_LAYOUT_PLAIN, "PERMUTE");
  if (x->numel() == 0) return;
  const int64_t es = ku::elem_size(x->dtype);
  ku::write_plain_into(a.backend, y, [&](Buffer* out) {
    if (!x->blocked() && pl.contiguous) {
      const char* src = static_cast<const char*>(x->data);
      char* dst = static_cast<char*>(out->data);
      ku::parallel_range(a.backend, x->numel() * es, [&](int64_t lo, int64_t hi) {
        std::memcpy(dst + lo, src + lo, (size_t)(hi - lo));
      }, int64_t(1) << 18);
      return;
    }
    memory::dims dims, src_st, dst_st;
    if (x->blocked()) {
      // x's logical dims; y's row-major stride of output axis i belongs to x axis order[i].
      int64_t ys[CMO_MAX_DIMS], acc = 1;
      for (int i = pl.out.ndim - 1; i >= 0; i--) {
        ys[i] = acc;
        acc *= pl.out.d[i];
      }
      dims.assign(x->shape.d, x->shape.d + x->shape.ndim);
      dst_st.assign(x->shape.ndim, 0);
      for (int i = 0; i < pl.out.ndim; i++) dst_st[p.order[i]] = ys[i];
    } else {
      dims.assign(pl.dims, pl.dims + pl.ndim);
      src_st.assign(pl.strides, pl.strides + pl.ndim);
      dst_st.assign(pl.ndim, 0);
      int64_t acc = 1;
      for (int i = pl.ndim - 1; i >= 0; i--) {
        dst_st[i] = acc;
        acc *= pl.dims[i];
      }
    }
    const std::string key = "permute:" + std::to_string((int)x->dtype) + (x->blocked() ? ":b:" : ":p:") +
                            dims_key(dims) + ":" + dims_key(src_st) + ":" + dims_key(dst_st) + ":" +
                            std::to_string(threads(a.backend));
    dnnl::engine& eng = dnnl_engine(a.backend);
    auto e = cached<PermutePrim>(a.backend, key, [&] {
      PermutePrim r;
      const memory::data_type dt = dnnl_dtype(x->dtype);
      r.src = x->blocked() ? memory::desc(dims, dt, memory::format_tag::nCdhw16c) : memory::desc(dims, dt, src_st);
      r.dst = memory::desc(dims, dt, dst_st);
      try {
        r.prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, r.src, eng, r.dst));
        r.ok = true;
      } catch (const dnnl::error&) {
        r.ok = false;  // no implementation for this pair: the strided loop below
      }
      return r;
    });
    if (e->ok) {
      dnnl::stream& strm = dnnl_stream(a.backend);
      memory sm(e->src, eng, x->data), dm(e->dst, eng, out->data);
      e->prim.execute(strm, sm, dm);
      strm.wait();
      return;
    }
    TempBuffer t;
    const Buffer* px = ku::plain(x, t);
    if (es == 4)
      strided_copy<uint32_t>(a.backend, static_cast<const uint32_t*>(px->data), static_cast<uint32_t*>(out->data),
                             pl);
    else
      strided_copy<uint8_t>(a.backend, static_cast<const uint8_t*>(px->data), static_cast<uint8_t*>(out->data), pl);
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_PERMUTE, permute);

}  // namespace cmo
