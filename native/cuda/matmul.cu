// matmul.cu — batched matrix product with optional transposes and a broadcast batch of 1.
// Our own tiled kernel (no cuBLAS on the build machines): 64x64 output tiles, 16-deep K steps in
// shared memory, 4x4 outputs per thread, FP32 FMA.
#include "internal.cuh"

namespace cmocu {
namespace {

constexpr int TM = 64, TN = 64, TK = 16;

__global__ void __launch_bounds__(256) matmul_kernel(const float* __restrict__ A, const float* __restrict__ B,
                                                     float* __restrict__ C, int64_t M, int64_t N, int64_t K,
                                                     bool ta, bool tb, int64_t a_bs, int64_t b_bs) {
  __shared__ float As[TK][TM + 4];
  __shared__ float Bs[TK][TN + 4];
  const int64_t batch = blockIdx.z;
  const float* a = A + batch * a_bs;
  const float* b = B + batch * b_bs;
  float* c = C + batch * M * N;
  const int64_t m0 = (int64_t)blockIdx.y * TM, n0 = (int64_t)blockIdx.x * TN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += TK) {
    for (int l = threadIdx.x; l < TM * TK; l += 256) {
      int mm, kk;
      if (ta) {  // A stored [K,M]: consecutive threads walk m
        mm = l % TM;
        kk = l / TM;
      } else {  // A stored [M,K]: consecutive threads walk k
        kk = l % TK;
        mm = l / TK;
      }
      int64_t gm = m0 + mm, gk = k0 + kk;
      float v = 0.f;
      if (gm < M && gk < K) v = ta ? a[gk * M + gm] : a[gm * K + gk];
      As[kk][mm] = v;
    }
    for (int l = threadIdx.x; l < TN * TK; l += 256) {
      int nn, kk;
      if (tb) {  // B stored [N,K]
        kk = l % TK;
        nn = l / TK;
      } else {  // B stored [K,N]
        nn = l % TN;
        kk = l / TN;
      }
      int64_t gn = n0 + nn, gk = k0 + kk;
      float v = 0.f;
      if (gn < N && gk < K) v = tb ? b[gn * K + gk] : b[gk * N + gn];
      Bs[kk][nn] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TK; kk++) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; j++) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      int64_t gn = n0 + tx + 16 * j;
      if (gn < N) c[gm * N + gn] = acc[i][j];
    }
  }
}

void matmul(const KernelArgs& a) {
  const char* op = "MATMUL";
  const auto& p = a.p<cmo_matmul_params>(op);
  const Buffer *A = a.in[0], *B = a.in[1];
  need_f32(A, op, "a");
  need_f32(B, op, "b");
  auto bmk = [&](const Buffer* x, const char* role, int64_t* bt, int64_t* r, int64_t* c) {
    if (x->shape.ndim == 2) {
      *bt = 1;
      *r = x->shape.d[0];
      *c = x->shape.d[1];
    } else if (x->shape.ndim == 3) {
      *bt = x->shape.d[0];
      *r = x->shape.d[1];
      *c = x->shape.d[2];
    } else {
      fail(std::string(op) + ": " + role + " must be 2-D or 3-D, got " + x->shape.str());
    }
  };
  int64_t ba, ar, ac, bb, br, bc;
  bmk(A, "a", &ba, &ar, &ac);
  bmk(B, "b", &bb, &br, &bc);
  const bool ta = p.trans_a != 0, tb = p.trans_b != 0;
  int64_t M = ta ? ac : ar, Ka = ta ? ar : ac;
  int64_t Kb = tb ? bc : br, N = tb ? br : bc;
  if (Ka != Kb)
    fail(std::string(op) + ": inner dimensions differ: a " + A->shape.str() + (ta ? " (transposed)" : "") + " and b " +
         B->shape.str() + (tb ? " (transposed)" : ""));
  if (ba != bb && ba != 1 && bb != 1)
    fail(std::string(op) + ": batch sizes " + std::to_string(ba) + " and " + std::to_string(bb) + " do not broadcast");
  int64_t batch = std::max(ba, bb);
  Shape ys;
  if (A->shape.ndim == 2 && B->shape.ndim == 2) {
    ys.ndim = 2;
    ys.d[0] = M;
    ys.d[1] = N;
  } else {
    ys.ndim = 3;
    ys.d[0] = batch;
    ys.d[1] = M;
    ys.d[2] = N;
  }
  Buffer* y = a.output(0, ys, CMO_DTYPE_F32, op);
  if (ys.numel() == 0) return;
  if (Ka == 0) {
    check_cuda(cudaMemsetAsync(y->data, 0, y->bytes, stream(a.backend)), op);
    return;
  }
  if (batch > 65535) unsupported(std::string(op) + ": batch " + std::to_string(batch) + " exceeds 65535");
  dim3 grid((unsigned)((N + TN - 1) / TN), (unsigned)((M + TM - 1) / TM), (unsigned)batch);
  if (grid.y > 65535) unsupported(std::string(op) + ": M = " + std::to_string(M) + " is too large");
  matmul_kernel<<<grid, 256, 0, stream(a.backend)>>>(A->f32(), B->f32(), y->f32(), M, N, Ka, ta, tb,
                                                     ba == 1 ? 0 : M * Ka, bb == 1 ? 0 : Ka * N);
  check_launch(op);
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_MATMUL, matmul);

}  // namespace cmocu
