// bench_ops.cpp — timings of the non-conv, non-norm CPU kernels at project sizes (not a test).
// Prints one line per case: name, median ms over the repetitions, GB/s or GFLOP/s.
// The PyTorch side of the same cases: native/tests/bench_ops_torch.py.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "../include/comodal.h"

namespace {

cmo_backend* g_be = nullptr;

cmo_buffer* make(std::vector<int64_t> d, cmo_dtype t, cmo_layout l, float fill_scale = 1.0f) {
  cmo_tensor_desc desc{};
  desc.ndim = (int64_t)d.size();
  int64_t n = 1;
  for (size_t i = 0; i < d.size(); i++) {
    desc.dims[i] = d[i];
    n *= d[i];
  }
  desc.dtype = t;
  desc.layout = l;
  cmo_buffer* b = nullptr;
  if (cmo_buffer_create(g_be, &desc, &b) != CMO_OK) {
    std::printf("create failed: %s\n", cmo_last_error());
    std::exit(1);
  }
  if (t == CMO_DTYPE_F32) {
    std::vector<float> v((size_t)n);
    uint32_t s = 12345;
    for (auto& x : v) {
      s = s * 1664525u + 1013904223u;
      x = ((float)(s >> 8) / (float)(1u << 24) - 0.5f) * fill_scale;
    }
    cmo_buffer_write(b, v.data(), n * 4);
  } else {
    std::vector<int32_t> v((size_t)n);
    for (int64_t i = 0; i < n; i++) v[(size_t)i] = (int32_t)((i * 7 + i / 97) % 4);
    cmo_buffer_write(b, v.data(), n * 4);
  }
  return b;
}

template <typename P>
void exec(cmo_op op, std::vector<cmo_buffer*> in, std::vector<cmo_buffer*>& out, const P& p) {
  if (cmo_op_execute(g_be, op, in.data(), (int32_t)in.size(), out.data(), (int32_t)out.size(), &p, sizeof(P)) !=
      CMO_OK) {
    std::printf("op %d failed: %s\n", (int)op, cmo_last_error());
    std::exit(1);
  }
}

double cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// Runs fn reps times (after one warm-up), prints the median wall time and the median process CPU
// time (on a busy machine the CPU time of a 1-thread run is the steadier figure).
void bench(const std::string& name, double work, const char* unit, int reps, const std::function<void()>& fn) {
  fn();
  std::vector<double> ms, cpu;
  for (int r = 0; r < reps; r++) {
    auto t0 = std::chrono::steady_clock::now();
    double c0 = cpu_ms();
    fn();
    cpu.push_back(cpu_ms() - c0);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  std::sort(cpu.begin(), cpu.end());
  double med = ms[ms.size() / 2];
  std::printf("%-52s %9.3f ms  cpu %9.3f ms  %8.2f %s\n", name.c_str(), med, cpu[cpu.size() / 2],
              work / (med * 1e-3) / 1e9, unit);
}

void release(std::vector<cmo_buffer*>& v) {
  for (auto*& b : v)
    if (b) {
      cmo_buffer_release(b);
      b = nullptr;
    }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  int reps = argc > 2 ? std::atoi(argv[2]) : 9;
  cmo_backend_create(0, &g_be);
  cmo_backend_set_threads(g_be, threads);
  std::printf("bench_ops: %d threads, median of %d\n", threads, reps);
  const int64_t N = 2, C = 32, S64 = 64;
  const std::vector<int64_t> act = {N, C, S64, S64, S64};
  const double nact = (double)(N * C * S64 * S64 * S64);
  cmo_buffer* x = make(act, CMO_DTYPE_F32, CMO_LAYOUT_BLOCKED16);
  cmo_buffer* x2 = make(act, CMO_DTYPE_F32, CMO_LAYOUT_BLOCKED16);
  cmo_buffer* xp = make(act, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
  cmo_buffer* chan = make({1, C, 1, 1, 1}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
  {
    std::vector<cmo_buffer*> o{nullptr};
    bench("add same-shape blocked [2,32,64^3]", nact * 12, "GB/s", reps, [&] {
      exec(CMO_OP_BINARY, {x, x2}, o, cmo_binary_params{CMO_BINARY_ADD});
      release(o);
    });
    bench("mul blocked x per-channel [1,32,1,1,1]", nact * 8, "GB/s", reps, [&] {
      exec(CMO_OP_BINARY, {x, chan}, o, cmo_binary_params{CMO_BINARY_MUL});
      release(o);
    });
    bench("add plain x per-channel [1,32,1,1,1]", nact * 8, "GB/s", reps, [&] {
      exec(CMO_OP_BINARY, {xp, chan}, o, cmo_binary_params{CMO_BINARY_ADD});
      release(o);
    });
    bench("leaky_relu forward blocked", nact * 8, "GB/s", reps, [&] {
      exec(CMO_OP_UNARY_FORWARD, {x}, o, cmo_unary_params{CMO_UNARY_LEAKY_RELU, 0.01});
      release(o);
    });
    bench("leaky_relu backward blocked", nact * 12, "GB/s", reps, [&] {
      exec(CMO_OP_UNARY_BACKWARD, {x, x2}, o, cmo_unary_params{CMO_UNARY_LEAKY_RELU, 0.01});
      release(o);
    });
    bench("sigmoid forward blocked", nact * 8, "GB/s", reps, [&] {
      exec(CMO_OP_UNARY_FORWARD, {x}, o, cmo_unary_params{CMO_UNARY_SIGMOID, 0});
      release(o);
    });
    bench("sum over {0,2,3,4} blocked", nact * 4, "GB/s", reps, [&] {
      exec(CMO_OP_REDUCE, {x}, o, cmo_reduce_params{CMO_REDUCE_SUM, 0x1d});
      release(o);
    });
    bench("sum over {0,2,3,4} plain", nact * 4, "GB/s", reps, [&] {
      exec(CMO_OP_REDUCE, {xp}, o, cmo_reduce_params{CMO_REDUCE_SUM, 0x1d});
      release(o);
    });
    bench("mean over all plain", nact * 4, "GB/s", reps, [&] {
      exec(CMO_OP_REDUCE, {xp}, o, cmo_reduce_params{CMO_REDUCE_MEAN, 0x1f});
      release(o);
    });
    bench("concat channels blocked 2x[2,32,64^3]", nact * 16, "GB/s", reps, [&] {
      exec(CMO_OP_CONCAT, {x, x2}, o, cmo_axis_params{1});
      release(o);
    });
    bench("slice channels blocked [16:32]", nact * 4, "GB/s", reps, [&] {
      exec(CMO_OP_SLICE, {x}, o, cmo_slice_params{1, 16, 16});
      release(o);
    });
    bench("adaptive avg pool -> 4^3 blocked", nact * 4, "GB/s", reps, [&] {
      exec(CMO_OP_ADAPTIVE_AVG_POOL3D_FORWARD, {x}, o, cmo_pool_params{{4, 4, 4}, {0, 0, 0}});
      release(o);
    });
    cmo_buffer* g = make({N, C, 4, 4, 4}, CMO_DTYPE_F32, CMO_LAYOUT_BLOCKED16);
    bench("adaptive avg pool backward 4^3 -> 64^3 blocked", nact * 4, "GB/s", reps, [&] {
      exec(CMO_OP_ADAPTIVE_AVG_POOL3D_BACKWARD, {g}, o, cmo_pool_params{{4, 4, 4}, {64, 64, 64}});
      release(o);
    });
    cmo_buffer_release(g);
  }
  cmo_buffer_release(x);
  cmo_buffer_release(x2);
  cmo_buffer_release(xp);
  cmo_buffer_release(chan);
  {
    const int64_t K = 4, S = 96;
    const double nl = (double)(N * K * S * S * S);
    cmo_buffer* logits = make({N, K, S, S, S}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, 6.0f);
    cmo_buffer* labels = make({N, 1, S, S, S}, CMO_DTYPE_I32, CMO_LAYOUT_PLAIN);
    std::vector<cmo_buffer*> o{nullptr, nullptr}, d{nullptr}, st{nullptr};
    exec(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {logits, labels}, o, cmo_cross_entropy_params{-100});
    cmo_buffer* dl = make({1}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    cmo_buffer* ds = make({3, K}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    std::vector<cmo_buffer*> o2{nullptr};
    bench("softmax axis 1 [2,4,96^3]", nl * 8, "GB/s", reps, [&] {
      exec(CMO_OP_SOFTMAX_FORWARD, {logits}, o2, cmo_axis_params{1});
      release(o2);
    });
    bench("softmax CE forward [2,4,96^3]", nl * 8, "GB/s", reps, [&] {
      std::vector<cmo_buffer*> t{nullptr, nullptr};
      exec(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, {logits, labels}, t, cmo_cross_entropy_params{-100});
      release(t);
    });
    bench("softmax CE backward", nl * 8, "GB/s", reps, [&] {
      exec(CMO_OP_SOFTMAX_CROSS_ENTROPY_BACKWARD, {o[1], labels, dl}, d, cmo_cross_entropy_params{-100});
      release(d);
    });
    bench("dice stats forward (labels)", nl * 4, "GB/s", reps, [&] {
      exec(CMO_OP_DICE_STATS_FORWARD, {o[1], labels}, st, cmo_dice_params{-100});
      release(st);
    });
    bench("dice stats backward (labels)", nl * 4, "GB/s", reps, [&] {
      exec(CMO_OP_DICE_STATS_BACKWARD, {o[1], labels, ds}, d, cmo_dice_params{-100});
      release(d);
    });
    // Prototype-style matmul: probs [K, N] x features [C, N]^T, N = 96^3.
    const int64_t NV = S * S * S, CF = 16;
    cmo_buffer* pk = make({K, NV}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    cmo_buffer* fc = make({CF, NV}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    bench("matmul [4 x 96^3] x [16 x 96^3]^T (K-split)", 2.0 * K * CF * NV, "GFLOP/s", reps, [&] {
      exec(CMO_OP_MATMUL, {pk, fc}, o2, cmo_matmul_params{0, 1});
      release(o2);
    });
    cmo_buffer_release(pk);
    cmo_buffer_release(fc);
    release(o);
    cmo_buffer_release(dl);
    cmo_buffer_release(ds);
    cmo_buffer_release(logits);
    cmo_buffer_release(labels);
  }
  {
    std::vector<cmo_buffer*> o{nullptr};
    cmo_buffer* a = make({2, 256, 64}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    bench("matmul attention [2,256,64] x [2,256,64]^T", 2.0 * 2 * 256 * 256 * 64, "GFLOP/s", reps, [&] {
      exec(CMO_OP_MATMUL, {a, a}, o, cmo_matmul_params{0, 1});
      release(o);
    });
    cmo_buffer* e = make({2, 256, 256}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    bench("softmax last axis [2,256,256]", 2.0 * 256 * 256 * 8, "GB/s", reps, [&] {
      exec(CMO_OP_SOFTMAX_FORWARD, {e}, o, cmo_axis_params{2});
      release(o);
    });
    cmo_buffer* big = make({1, 512, 512}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    bench("matmul [512 x 512] x [512 x 512]", 2.0 * 512 * 512 * 512, "GFLOP/s", reps, [&] {
      exec(CMO_OP_MATMUL, {big, big}, o, cmo_matmul_params{0, 0});
      release(o);
    });
    cmo_buffer* f = make({2, 32, 16, 16, 16}, CMO_DTYPE_F32, CMO_LAYOUT_BLOCKED16);
    bench("l2 normalize axis 1 blocked [2,32,16^3]", 2.0 * 32 * 4096 * 8, "GB/s", reps, [&] {
      exec(CMO_OP_L2_NORMALIZE_FORWARD, {f}, o, cmo_l2_normalize_params{1, 1e-12});
      release(o);
    });
    cmo_buffer* pw = make({64, 64, 3, 3, 3}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    cmo_buffer* gw = make({64, 64, 3, 3, 3}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    cmo_buffer* m = make({64, 64, 3, 3, 3}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    cmo_buffer* v = make({64, 64, 3, 3, 3}, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN);
    std::vector<cmo_buffer*> none;
    bench("adamw update 110592 params", 110592.0 * 4 * 7, "GB/s", reps, [&] {
      exec(CMO_OP_ADAMW_UPDATE, {pw, gw, m, v}, none, cmo_adamw_params{1e-4, 0.9, 0.999, 1e-8, 0.01, 5});
    });
    for (auto* b : {a, e, big, f, pw, gw, m, v}) cmo_buffer_release(b);
  }
  cmo_backend_destroy(g_be);
  return 0;
}
