// test_kernels_host.cpp — runs the source of two CUDA kernels of the backend on the CPU through
// host_emulation.hpp and compares them with naive references: the FP32 convolution weight gradient
// (conv_wgrad_kernel.cuh, all channel-block widths, kernel shapes and tile edges) and the tiled
// matrix product with and without split-K (matmul_kernel.cuh). Catches indexing, bounds and
// barrier mistakes on machines without a GPU.
// Build: g++ -std=c++20 -O2 -pthread -Wno-unknown-pragmas native/cuda/tests/test_kernels_host.cpp -o build/test_kernels_host
#include "host_emulation.hpp"
// (the emulation header must come first: it defines the CUDA keywords the kernels use)
#include "../conv_wgrad_kernel.cuh"
#include "../matmul_kernel.cuh"
#include "host_check.hpp"

#include <cstdio>
#include <string>

namespace {

using host_check::check;
uint64_t g_rng = 0x9e3779b97f4a7c15ull;
float frand() {
  g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(g_rng >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

// Compares got with ref (double) element by element.
bool close(const std::vector<float>& got, const std::vector<double>& ref, double atol, double rtol, std::string* why) {
  if (got.size() != ref.size()) {
    *why = "size differs";
    return false;
  }
  for (size_t i = 0; i < got.size(); i++) {
    double err = std::fabs(got[i] - ref[i]);
    if (!(err <= atol + rtol * std::fabs(ref[i]))) {
      char b[160];
      std::snprintf(b, sizeof b, "element %zu: got %.7g expected %.7g", i, got[i], ref[i]);
      *why = b;
      return false;
    }
  }
  return true;
}

// ------------------------------------------------------------------ weight gradient
using namespace cmocu::wgrad;

template <int KD, int KH, int KW>
void run_wgrad(int cb, EmuDim grid, const float* x, const float* dy, float* part, const WgradGeo& g) {
  auto go = [&](auto kernel) { emulate_launch(grid, 256, [&] { kernel(x, dy, part, g); }); };
  switch (cb) {
    case 16: go(wgrad_kernel<KD, KH, KW, 16>); break;
    case 8: go(wgrad_kernel<KD, KH, KW, 8>); break;
    case 4: go(wgrad_kernel<KD, KH, KW, 4>); break;
    case 2: go(wgrad_kernel<KD, KH, KW, 2>); break;
    default: go(wgrad_kernel<KD, KH, KW, 1>); break;
  }
}

void wgrad_case(int N, int C, int K, int D, int H, int W, int kd, int kh, int kw, int pd, int ph, int pw, int sms) {
  const int OD = D + 2 * pd - kd + 1, OH = H + 2 * ph - kh + 1, OW = W + 2 * pw - kw + 1;
  std::vector<float> x((size_t)N * C * D * H * W), dy((size_t)N * K * OD * OH * OW);
  for (auto& v : x) v = frand();
  for (auto& v : dy) v = frand();
  const WgradGeo g = plan(N, C, D, H, W, K, OD, OH, OW, pd, ph, pw, sms);
  const int T = kd * kh * kw;
  const int64_t kct = (int64_t)K * C * T, parts = g.splits * g.R;
  std::vector<float> part((size_t)(parts * kct), NAN);  // poisoned: every entry must be written
  EmuDim grid{(unsigned)g.splits, (unsigned)(g.cgroups * g.kgroups), 1};
  if (kd == 3)
    run_wgrad<3, 3, 3>(g.cb, grid, x.data(), dy.data(), part.data(), g);
  else if (kh == 3)
    run_wgrad<1, 3, 3>(g.cb, grid, x.data(), dy.data(), part.data(), g);
  else
    run_wgrad<1, 1, 1>(g.cb, grid, x.data(), dy.data(), part.data(), g);
  std::vector<float> got((size_t)kct, 0.f);
  for (int64_t q = 0; q < parts; q++)
    for (int64_t i = 0; i < kct; i++) got[(size_t)i] += part[(size_t)(q * kct + i)];
  std::vector<double> ref((size_t)kct, 0.0);
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++)
      for (int c = 0; c < C; c++)
        for (int a = 0; a < kd; a++)
          for (int b = 0; b < kh; b++)
            for (int e = 0; e < kw; e++) {
              double s = 0;
              for (int od = 0; od < OD; od++)
                for (int oh = 0; oh < OH; oh++)
                  for (int ow = 0; ow < OW; ow++) {
                    int id = od + a - pd, ih = oh + b - ph, iw = ow + e - pw;
                    if (id < 0 || id >= D || ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                    s += (double)dy[(((size_t)n * K + k) * OD + od) * OH * OW + (size_t)oh * OW + ow] *
                         x[(((size_t)n * C + c) * D + id) * H * W + (size_t)ih * W + iw];
                  }
              ref[((size_t)k * C + c) * T + (a * kh + b) * kw + e] += s;
            }
  char name[200];
  std::snprintf(name, sizeof name, "wgrad N%d C%d K%d %dx%dx%d k%dx%dx%d pad %d,%d,%d (cb %d, R %d, %lld splits)", N, C, K, D,
                H, W, kd, kh, kw, pd, ph, pw, g.cb, g.R, (long long)g.splits);
  std::string why;
  check(close(got, ref, 1e-4, 1e-4, &why), name, why);
}

// ------------------------------------------------------------------ matrix product
using namespace cmocu::mm;

void matmul_case(int64_t ba, int64_t bb, int64_t M, int64_t N, int64_t K, bool ta, bool tb, int sms, bool allow_split) {
  const int64_t batch = std::max(ba, bb);
  std::vector<float> A((size_t)(ba * M * K)), B((size_t)(bb * K * N));
  for (auto& v : A) v = frand();
  for (auto& v : B) v = frand();
  const int64_t tiles = ((N + TN - 1) / TN) * ((M + TM - 1) / TM) * batch;
  const SplitPlan sp = plan_splits(tiles, K, batch, sms, allow_split);
  const int64_t out_n = batch * M * N;
  std::vector<float> part((size_t)(sp.splits * out_n), NAN);
  EmuDim grid{(unsigned)((N + TN - 1) / TN), (unsigned)((M + TM - 1) / TM), (unsigned)(batch * sp.splits)};
  const int64_t k_chunk = sp.splits == 1 ? K : sp.k_chunk;
  emulate_launch(grid, 256, [&] {
    matmul_kernel(A.data(), B.data(), part.data(), M, N, K, ta, tb, ba == 1 ? 0 : M * K, bb == 1 ? 0 : K * N,
                  (int)sp.splits, k_chunk, batch);
  });
  std::vector<float> got((size_t)out_n, 0.f);
  for (int64_t s = 0; s < sp.splits; s++)
    for (int64_t i = 0; i < out_n; i++) got[(size_t)i] += part[(size_t)(s * out_n + i)];
  std::vector<double> ref((size_t)out_n, 0.0);
  for (int64_t b = 0; b < batch; b++) {
    const float* a = A.data() + (ba == 1 ? 0 : b * M * K);
    const float* bm = B.data() + (bb == 1 ? 0 : b * K * N);
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++)
          s += (double)(ta ? a[k * M + m] : a[m * K + k]) * (tb ? bm[n * K + k] : bm[k * N + n]);
        ref[(size_t)((b * M + m) * N + n)] = s;
      }
  }
  char name[200];
  std::snprintf(name, sizeof name, "matmul [%lld|%lld] %lldx%lldx%lld%s%s (%lld splits)", (long long)ba, (long long)bb,
                (long long)M, (long long)K, (long long)N, ta ? " transA" : "", tb ? " transB" : "", (long long)sp.splits);
  std::string why;
  check(close(got, ref, 1e-3, 1e-4, &why), name, why);
}

}  // namespace

int main() {
  // weight gradient: every channel-block width (1..16), channel counts that do not fill a block,
  // several channel groups, the three kernel shapes, paddings 0..2, tiles cut by every edge
  wgrad_case(1, 3, 5, 5, 9, 10, 3, 3, 3, 1, 1, 1, 2);
  wgrad_case(2, 16, 16, 6, 12, 17, 3, 3, 3, 1, 1, 1, 2);
  wgrad_case(1, 1, 16, 4, 8, 8, 3, 3, 3, 1, 1, 1, 2);
  wgrad_case(1, 40, 24, 3, 5, 9, 3, 3, 3, 1, 1, 1, 3);
  wgrad_case(1, 5, 7, 3, 10, 11, 1, 3, 3, 0, 1, 1, 2);
  wgrad_case(1, 8, 4, 4, 6, 6, 1, 1, 1, 0, 0, 0, 2);
  wgrad_case(1, 4, 4, 5, 5, 5, 3, 3, 3, 2, 2, 2, 1);
  wgrad_case(2, 2, 3, 7, 9, 8, 3, 3, 3, 0, 0, 0, 4);
  // matrix product: plain tiles, transposes, broadcast batch, split-K with ragged chunks
  matmul_case(2, 2, 37, 29, 45, false, false, 4, false);
  matmul_case(2, 2, 37, 29, 45, true, false, 4, false);
  matmul_case(1, 3, 70, 66, 130, false, true, 4, false);
  matmul_case(2, 1, 33, 65, 17, true, true, 4, false);
  matmul_case(1, 1, 16, 16, 5000, false, true, 64, true);
  matmul_case(2, 2, 4, 16, 9000, false, true, 64, true);
  matmul_case(1, 1, 24, 20, 7001, true, false, 64, true);
  return host_check::summary();
}
