// matmul.cpp — MATMUL: batched y[B,M,N] = op(a)[B,M,K] x op(b)[B,K,N] with transpose flags and
// batch-1 broadcasting, on oneDNN's row-major sgemm (dnnl_sgemm, jit kernels).
//
// Scheduling (all deterministic for a fixed thread count; the K-split path does not depend on the
// thread count at all):
// - long reduction with a small output (prototype sums over N = 96^3 voxels): K is cut into fixed
//   chunks, each chunk is one single-threaded sgemm into its own partial, partials are summed in
//   order in double;
// - many small batches: one single-threaded sgemm per batch, batches in parallel;
// - otherwise: batches in sequence, each sgemm multi-threaded by oneDNN.
#include <oneapi/dnnl/dnnl.h>

#include <atomic>

#include "kernel_util.hpp"

namespace cmo {
namespace {

int64_t kl_max(int64_t K, int64_t chunk) { return std::min(K, chunk); }

void check(int st, int64_t M, int64_t N, int64_t K) {
  if (st != 0)
    throw Error(CMO_ERR_BACKEND, "dnnl_sgemm failed with status " + std::to_string(st) + " for M=" +
                                     std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
}

void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C) {
  dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N,
                                0.0f, C, N);
  check((int)st, M, N, K);
}

void matmul(const KernelArgs& args) {
  const auto& p = args.p<cmo_matmul_params>("MATMUL");
  const Buffer* a = ku::input(args, 0, "a");
  const Buffer* b = ku::input(args, 1, "b");
  ku::need_dtype(a, "a", CMO_DTYPE_F32);
  ku::need_dtype(b, "b", CMO_DTYPE_F32);
  const Shape& as = a->shape;
  const Shape& bs = b->shape;
  if (as.ndim < 2 || as.ndim > 3) fail("a " + as.str() + " must have rank 2 or 3 ([M,K] or [B,M,K])");
  if (bs.ndim < 2 || bs.ndim > 3) fail("b " + bs.str() + " must have rank 2 or 3 ([K,N] or [B,K,N])");
  const bool ta = p.trans_a != 0, tb = p.trans_b != 0;
  const int64_t Ba = as.ndim == 3 ? as.d[0] : 1, Bb = bs.ndim == 3 ? bs.d[0] : 1;
  const int64_t a0 = as.d[as.ndim - 2], a1 = as.d[as.ndim - 1];
  const int64_t b0 = bs.d[bs.ndim - 2], b1 = bs.d[bs.ndim - 1];
  const int64_t M = ta ? a1 : a0, K = ta ? a0 : a1;
  const int64_t Kb = tb ? b1 : b0, N = tb ? b0 : b1;
  if (K != Kb)
    fail("inner dimensions differ: a " + as.str() + (ta ? " (transposed)" : "") + " gives K=" + std::to_string(K) +
         ", b " + bs.str() + (tb ? " (transposed)" : "") + " gives K=" + std::to_string(Kb));
  if (Ba != Bb && Ba != 1 && Bb != 1)
    fail("batch dims of a " + as.str() + " and b " + bs.str() + " differ and neither is 1");
  const int64_t B = std::max(Ba, Bb);
  Shape ys = (as.ndim == 3 || bs.ndim == 3) ? ku::make_shape({B, M, N}) : ku::make_shape({M, N});
  Buffer* y = args.output(0, ys, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "MATMUL");
  TempBuffer tpa, tpb;
  const float* pa = ku::plain(a, tpa)->f32();
  const float* pb = ku::plain(b, tpb)->f32();
  const int64_t sa = Ba == 1 ? 0 : M * K, sb = Bb == 1 ? 0 : K * N;
  Backend* be = args.backend;
  ku::write_plain_into(be, y, [&](Buffer* out) {
    float* py = out->f32();
    std::atomic<int> bad{0};  // a failed sgemm inside a parallel loop, thrown after it
    const int64_t kChunkK = 8192;
    if (M * N <= 16384 && K >= 4 * kChunkK) {
      // K-split: partial products over fixed K chunks, summed in order.
      const int64_t nk = (K + kChunkK - 1) / kChunkK;
      std::vector<float> part((size_t)(B * nk * M * N));
      parallel_for(be, B * nk, [&](int64_t t) {
        const int64_t bi = t / nk, c = t % nk;
        const int64_t k0 = c * kChunkK, kl = std::min(K, k0 + kChunkK) - k0;
        const float* A = pa + bi * sa;
        const float* Bm = pb + bi * sb;
        // Row-major sub-blocks: a[M,K] chunk starts at column k0 (lda K); a^T [K,M] at row k0.
        const float* Ak = ta ? A + k0 * M : A + k0;
        const float* Bk = tb ? Bm + k0 : Bm + k0 * N;
        dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, kl, 1.0f, Ak, ta ? M : K, Bk,
                                      tb ? K : N, 0.0f, part.data() + t * M * N, N);
        if (st != dnnl_success) bad.store((int)st);
      });
      check(bad.load(), M, N, kl_max(K, kChunkK));
      ku::parallel_tasks(be, B, B * M * N * nk, [&](int64_t bi) {
        for (int64_t i = 0; i < M * N; i++) {
          double s = 0;
          for (int64_t c = 0; c < nk; c++) s += part[(size_t)((bi * nk + c) * M * N + i)];
          py[bi * M * N + i] = (float)s;
        }
      });
      return;
    }
    const int64_t flops = M * N * K;
    if (B > 1 && (flops < (int64_t(1) << 21) || B >= 4 * threads(be))) {
      ku::parallel_tasks(be, B, B * flops / 16, [&](int64_t bi) {
        dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, pa + bi * sa, ta ? M : K,
                                      pb + bi * sb, tb ? K : N, 0.0f, py + bi * M * N, N);
        if (st != dnnl_success) bad.store((int)st);
      });
      check(bad.load(), M, N, K);
      return;
    }
    for (int64_t bi = 0; bi < B; bi++) sgemm(ta, tb, M, N, K, pa + bi * sa, pb + bi * sb, py + bi * M * N);
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_MATMUL, matmul);

}  // namespace cmo
