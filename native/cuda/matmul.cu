// matmul.cu — batched matrix product with optional transposes and a broadcast batch of 1.
// Our own tiled kernel (no cuBLAS on the build machines): 64x64 output tiles, 16-deep K steps in
// shared memory, 4x4 outputs per thread, FP32 FMA.
#include <cstdlib>

#include "internal.cuh"

namespace cmocu {
namespace {

constexpr int TM = 64, TN = 64, TK = 16;

// blockIdx.z = batch * splits + split; split s covers k in [s * k_chunk, (s + 1) * k_chunk) and writes
// its partial product to C + split * batches * M * N (summed afterwards in a fixed order).
__global__ void __launch_bounds__(256) matmul_kernel(const float* __restrict__ A, const float* __restrict__ B,
                                                     float* __restrict__ C, int64_t M, int64_t N, int64_t K,
                                                     bool ta, bool tb, int64_t a_bs, int64_t b_bs, int splits,
                                                     int64_t k_chunk, int64_t batches) {
  __shared__ float As[TK][TM + 4];
  __shared__ float Bs[TK][TN + 4];
  const int64_t batch = blockIdx.z / splits, split = blockIdx.z % splits;
  const float* a = A + batch * a_bs;
  const float* b = B + batch * b_bs;
  float* c = C + (split * batches + batch) * M * N;
  const int64_t m0 = (int64_t)blockIdx.y * TM, n0 = (int64_t)blockIdx.x * TN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  const int64_t k_begin = split * k_chunk;
  const int64_t k_end = k_begin + k_chunk < K ? k_begin + k_chunk : K;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += TK) {
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
      if (gm < M && gk < k_end) v = ta ? a[gk * M + gm] : a[gm * K + gk];
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
      if (gn < N && gk < k_end) v = tb ? b[gn * K + gk] : b[gk * N + gn];
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
  Backend* be = a.backend;
  const int64_t tiles = ((N + TN - 1) / TN) * ((M + TM - 1) / TM) * batch;
  // Split K when the output tiles alone cannot fill the GPU (e.g. C x C products over all voxels).
  // Opt-in (COMODAL_CUDA_SPLITK=1) until it has run on hardware: the parity driver checks it.
  int64_t splits = 1;
  const int64_t want = 2LL * sm_count(be);
  const char* sk = std::getenv("COMODAL_CUDA_SPLITK");
  const bool split_ok = sk && *sk && std::string(sk) != "0";
  if (split_ok && tiles < want && Ka >= 4096) splits = std::min<int64_t>((want + tiles - 1) / tiles, Ka / 1024);
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535 / batch));
  int64_t k_chunk = (Ka + splits - 1) / splits;
  k_chunk = (k_chunk + TK - 1) / TK * TK;
  splits = (Ka + k_chunk - 1) / k_chunk;
  dim3 grid((unsigned)((N + TN - 1) / TN), (unsigned)((M + TM - 1) / TM), (unsigned)(batch * splits));
  if (grid.y > 65535) unsupported(std::string(op) + ": M = " + std::to_string(M) + " is too large");
  const int64_t a_bs = ba == 1 ? 0 : M * Ka, b_bs = bb == 1 ? 0 : Ka * N;
  if (splits == 1) {
    matmul_kernel<<<grid, 256, 0, stream(be)>>>(A->f32(), B->f32(), y->f32(), M, N, Ka, ta, tb, a_bs, b_bs, 1, Ka, batch);
    check_launch(op);
    return;
  }
  const int64_t out_n = batch * M * N;
  Scratch part(be, (size_t)(splits * out_n) * sizeof(float));
  matmul_kernel<<<grid, 256, 0, stream(be)>>>(A->f32(), B->f32(), part.as<float>(), M, N, Ka, ta, tb, a_bs, b_bs,
                                              (int)splits, k_chunk, batch);
  check_launch(op);
  const float* pp = part.as<float>();
  float* yp = y->f32();
  launch_elementwise(be, out_n, [=] __device__(int64_t i) {
    float s = 0.f;
    for (int64_t k = 0; k < splits; k++) s += pp[k * out_n + i];
    yp[i] = s;
  }, op);
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_MATMUL, matmul);

}  // namespace cmocu
