// matmul.cu — batched matrix product with optional transposes and a broadcast batch of 1.
// Our own tiled kernel (no cuBLAS on the build machines): 64x64 output tiles, 16-deep K steps in
// shared memory, 4x4 outputs per thread, FP32 FMA.
#include <cstdlib>

#include "internal.cuh"
#include "matmul_kernel.cuh"

namespace cmocu {
namespace {

using namespace mm;

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
  // Split K when the output tiles alone cannot fill the GPU (e.g. the CMC class prototypes, products
  // over all voxels). Opt-in with COMODAL_CUDA_SPLITK=1 until validated on GPU hardware.
  const char* sk = std::getenv("COMODAL_CUDA_SPLITK");
  const bool split_ok = sk && std::string(sk) == "1";
  const SplitPlan sp = plan_splits(tiles, Ka, batch, sm_count(be), split_ok);
  const int64_t splits = sp.splits, k_chunk = sp.k_chunk;
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
