// bench_conv.cpp — times CONV3D forward, backward-data and backward-weights (3x3x3, pad 1) of the CPU
// library on the shapes of issue 2, plus GROUP_NORM forward+backward and the transposed conv 2x2x2.
// Not a test: `make native-bench` (threads from $CMO_THREADS, default 2).
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "../include/comodal.h"

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best of `reps` runs after `warm` untimed ones of the process CPU time divided by the thread count:
// with OMP_WAIT_POLICY=passive (make native-bench sets it) that is close to the wall time an idle
// machine would give, even when other jobs compete for the cores. The best wall time is kept in
// g_wall_ms (trust it only on an idle machine).
double g_wall_ms = 0;
int g_threads = 2;
double cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
double time_ms(const std::function<void()>& f, int warm = 1, int reps = 5) {
  for (int i = 0; i < warm; i++) f();
  std::vector<double> t, c;
  for (int i = 0; i < reps; i++) {
    double t0 = now_ms(), c0 = cpu_ms();
    f();
    t.push_back(now_ms() - t0);
    c.push_back((cpu_ms() - c0) / g_threads);
  }
  std::sort(t.begin(), t.end());
  std::sort(c.begin(), c.end());
  g_wall_ms = t[0];
  return c[0];
}

cmo_buffer* make(cmo_backend* be, std::vector<int64_t> dims, int layout) {
  cmo_tensor_desc d{};
  d.ndim = (int64_t)dims.size();
  int64_t n = 1;
  for (size_t i = 0; i < dims.size(); i++) {
    d.dims[i] = dims[i];
    n *= dims[i];
  }
  d.dtype = CMO_DTYPE_F32;
  d.layout = layout;
  cmo_buffer* b = nullptr;
  if (cmo_buffer_create(be, &d, &b) != CMO_OK) {
    std::fprintf(stderr, "buffer: %s\n", cmo_last_error());
    std::exit(1);
  }
  std::vector<float> v((size_t)n);
  for (size_t i = 0; i < v.size(); i++) v[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
  cmo_buffer_write(b, v.data(), n * 4);
  return b;
}

void run(cmo_backend* be, int op, std::vector<cmo_buffer*> in, std::vector<cmo_buffer*> out, const void* p,
         int64_t pb) {
  if (cmo_op_execute(be, op, in.data(), (int)in.size(), out.data(), (int)out.size(), p, pb) != CMO_OK) {
    std::fprintf(stderr, "op %d: %s\n", op, cmo_last_error());
    std::exit(1);
  }
}

void bench_conv(cmo_backend* be, int64_t N, int64_t Ci, int64_t Co, int64_t S, int64_t stride = 1) {
  cmo_conv3d_params q{};
  const int64_t So = (S - 1) / stride + 1;  // 3x3x3, pad 1
  for (int a = 0; a < 3; a++) {
    q.stride[a] = stride;
    q.padding[a] = 1;
    q.dilation[a] = 1;
    q.in_dims[a] = S;
  }
  q.has_bias = 1;
  cmo_buffer* x = make(be, {N, Ci, S, S, S}, CMO_LAYOUT_ANY);
  cmo_buffer* w = make(be, {Co, Ci, 3, 3, 3}, CMO_LAYOUT_PLAIN);
  cmo_buffer* b = make(be, {Co}, CMO_LAYOUT_PLAIN);
  cmo_buffer* y = make(be, {N, Co, So, So, So}, CMO_LAYOUT_ANY);
  cmo_buffer* dy = make(be, {N, Co, So, So, So}, CMO_LAYOUT_ANY);
  cmo_buffer* dx = make(be, {N, Ci, S, S, S}, CMO_LAYOUT_ANY);
  cmo_buffer* dw = make(be, {Co, Ci, 3, 3, 3}, CMO_LAYOUT_PLAIN);
  cmo_buffer* db = make(be, {Co}, CMO_LAYOUT_PLAIN);
  double flop = 2.0 * N * Ci * Co * 27.0 * So * So * So;
  double tf = time_ms([&] { run(be, CMO_OP_CONV3D_FORWARD, {x, w, b}, {y}, &q, sizeof q); });
  double td = time_ms([&] { run(be, CMO_OP_CONV3D_BACKWARD_DATA, {dy, w}, {dx}, &q, sizeof q); });
  double tw = time_ms([&] { run(be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, dy}, {dw, db}, &q, sizeof q); });
  double ta = time_ms([&] {
    cmo_buffer* yn = nullptr;
    std::vector<cmo_buffer*> ins{x, w, b};
    if (cmo_op_execute(be, CMO_OP_CONV3D_FORWARD, ins.data(), 3, &yn, 1, &q, sizeof q) == CMO_OK)
      cmo_buffer_release(yn);
  });
  std::printf("  fwd with the output allocated by the op: %.1f ms\n", ta);
  std::printf("conv3d N%lld C%lld->%lld %lld^3 stride %lld: fwd %.1f ms (%.0f GF/s), bwd-data %.1f ms (%.0f), bwd-w %.1f ms "
              "(%.0f) | fwd+bwd %.1f ms (fwd+bwd-w only %.1f ms)\n",
              (long long)N, (long long)Ci, (long long)Co, (long long)S, (long long)stride, tf, flop / tf / 1e6, td, flop / td / 1e6, tw,
              flop / tw / 1e6, tf + td + tw, tf + tw);
  for (auto* t : {x, w, b, y, dy, dx, dw, db}) cmo_buffer_release(t);
}

void bench_deconv(cmo_backend* be, int64_t N, int64_t Ci, int64_t Co, int64_t S) {
  cmo_conv3d_params q{};
  for (int a = 0; a < 3; a++) {
    q.stride[a] = 2;
    q.dilation[a] = 1;
    q.in_dims[a] = S;
  }
  q.has_bias = 1;
  cmo_buffer* x = make(be, {N, Ci, S, S, S}, CMO_LAYOUT_ANY);
  cmo_buffer* w = make(be, {Ci, Co, 2, 2, 2}, CMO_LAYOUT_PLAIN);
  cmo_buffer* b = make(be, {Co}, CMO_LAYOUT_PLAIN);
  cmo_buffer* y = make(be, {N, Co, 2 * S, 2 * S, 2 * S}, CMO_LAYOUT_ANY);
  cmo_buffer* dx = make(be, {N, Ci, S, S, S}, CMO_LAYOUT_ANY);
  cmo_buffer* dw = make(be, {Ci, Co, 2, 2, 2}, CMO_LAYOUT_PLAIN);
  cmo_buffer* db = make(be, {Co}, CMO_LAYOUT_PLAIN);
  double tf = time_ms([&] { run(be, CMO_OP_CONV_TRANSPOSE3D_FORWARD, {x, w, b}, {y}, &q, sizeof q); });
  double td = time_ms([&] { run(be, CMO_OP_CONV_TRANSPOSE3D_BACKWARD_DATA, {y, w}, {dx}, &q, sizeof q); });
  double tw = time_ms([&] { run(be, CMO_OP_CONV_TRANSPOSE3D_BACKWARD_WEIGHTS, {x, y}, {dw, db}, &q, sizeof q); });
  std::printf("deconv k2s2 N%lld C%lld->%lld %lld^3: fwd %.1f ms, bwd-data %.1f ms, bwd-w %.1f ms | total %.1f ms\n",
              (long long)N, (long long)Ci, (long long)Co, (long long)S, tf, td, tw, tf + td + tw);
  for (auto* t : {x, w, b, y, dx, dw, db}) cmo_buffer_release(t);
}

void bench_norm(cmo_backend* be, int64_t N, int64_t C, int64_t S, int layout, int act = CMO_NORM_ACT_NONE) {
  cmo_group_norm_params q{C, 1e-5, act, 0.01};
  cmo_buffer* x = make(be, {N, C, S, S, S}, layout);
  cmo_buffer* dy = make(be, {N, C, S, S, S}, layout);
  cmo_buffer* y = make(be, {N, C, S, S, S}, layout);
  cmo_buffer* dx = make(be, {N, C, S, S, S}, layout);
  cmo_buffer* g = make(be, {C}, CMO_LAYOUT_PLAIN);
  cmo_buffer* m = make(be, {N, C}, CMO_LAYOUT_PLAIN);
  cmo_buffer* r = make(be, {N, C}, CMO_LAYOUT_PLAIN);
  cmo_buffer* dg = make(be, {C}, CMO_LAYOUT_PLAIN);
  cmo_buffer* dbb = make(be, {C}, CMO_LAYOUT_PLAIN);
  double tf = time_ms([&] { run(be, CMO_OP_GROUP_NORM_FORWARD, {x, g, g}, {y, m, r}, &q, sizeof q); });
  double tb = time_ms([&] { run(be, CMO_OP_GROUP_NORM_BACKWARD, {x, dy, g, m, r, act ? g : nullptr}, {dx, dg, dbb}, &q, sizeof q); });
  double gb = (double)N * C * S * S * S * 4 / 1e9;
  std::printf("instance norm%s N%lld C%lld %lld^3 %s: fwd %.1f ms (x read and y written at %.1f GB/s), bwd %.1f ms\n",
              act ? " + leaky ReLU" : "", (long long)N, (long long)C, (long long)S,
              layout == CMO_LAYOUT_PLAIN ? "plain" : "blocked", tf, 2 * gb / tf * 1e3, tb);
  for (auto* t : {x, dy, y, dx, g, m, r, dg, dbb}) cmo_buffer_release(t);
}

// The logits head: 1x1x1 conv from 16 channels to K classes (plain output).
void bench_head(cmo_backend* be, int64_t N, int64_t Ci, int64_t K, int64_t S) {
  cmo_conv3d_params q{};
  for (int a = 0; a < 3; a++) {
    q.stride[a] = 1;
    q.dilation[a] = 1;
    q.in_dims[a] = S;
  }
  q.has_bias = 1;
  cmo_buffer* x = make(be, {N, Ci, S, S, S}, CMO_LAYOUT_ANY);
  cmo_buffer* w = make(be, {K, Ci, 1, 1, 1}, CMO_LAYOUT_PLAIN);
  cmo_buffer* b = make(be, {K}, CMO_LAYOUT_PLAIN);
  cmo_buffer* y = make(be, {N, K, S, S, S}, CMO_LAYOUT_ANY);
  cmo_buffer* dx = make(be, {N, Ci, S, S, S}, CMO_LAYOUT_ANY);
  cmo_buffer* dw = make(be, {K, Ci, 1, 1, 1}, CMO_LAYOUT_PLAIN);
  cmo_buffer* db = make(be, {K}, CMO_LAYOUT_PLAIN);
  double tf = time_ms([&] { run(be, CMO_OP_CONV3D_FORWARD, {x, w, b}, {y}, &q, sizeof q); });
  double td = time_ms([&] { run(be, CMO_OP_CONV3D_BACKWARD_DATA, {y, w}, {dx}, &q, sizeof q); });
  double tw = time_ms([&] { run(be, CMO_OP_CONV3D_BACKWARD_WEIGHTS, {x, y}, {dw, db}, &q, sizeof q); });
  std::printf("head 1x1 N%lld C%lld->%lld %lld^3: fwd %.1f ms, bwd-data %.1f ms, bwd-w %.1f ms\n", (long long)N,
              (long long)Ci, (long long)K, (long long)S, tf, td, tw);
  for (auto* t : {x, w, b, y, dx, dw, db}) cmo_buffer_release(t);
}

}  // namespace

int main(int argc, char** argv) {
  const bool norm_only = argc > 1 && std::string(argv[1]) == "--norm";  // only the norm timings
  cmo_backend* be = nullptr;
  if (cmo_backend_create(0, &be) != CMO_OK) return 1;
  const char* env = std::getenv("CMO_THREADS");
  int threads = env ? std::atoi(env) : 2;
  g_threads = threads;
  cmo_backend_set_threads(be, threads);
  std::printf("%s, %d threads; times are best-of-5 process CPU time / threads (see time_ms)\n",
              cmo_version_string(), threads);
  if (!norm_only) {
  bench_conv(be, 2, 16, 16, 64);
  bench_conv(be, 2, 32, 32, 32);
  bench_conv(be, 2, 64, 64, 16);
  bench_conv(be, 2, 2, 16, 96);
  bench_conv(be, 2, 1, 16, 96);  // one modality per encoder (CMC)
  bench_conv(be, 2, 16, 32, 64, 2);  // downsampling
  bench_conv(be, 2, 32, 64, 32, 2);
  bench_deconv(be, 2, 32, 16, 32);
  }
  bench_norm(be, 2, 16, 64, CMO_LAYOUT_BLOCKED16);
  bench_norm(be, 2, 16, 64, CMO_LAYOUT_BLOCKED16, CMO_NORM_ACT_LEAKY_RELU);
  bench_norm(be, 2, 16, 64, CMO_LAYOUT_PLAIN, CMO_NORM_ACT_LEAKY_RELU);
  bench_norm(be, 2, 16, 64, CMO_LAYOUT_PLAIN);
  bench_norm(be, 2, 16, 96, CMO_LAYOUT_BLOCKED16);
  bench_head(be, 2, 16, 4, 96);
  cmo_backend_destroy(be);
  return 0;
}
