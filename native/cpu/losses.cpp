// losses.cpp — SOFTMAX_CROSS_ENTROPY_FORWARD / _BACKWARD and DICE_STATS_FORWARD / _BACKWARD.
//
// Logits / probabilities are [N,K,...] (also 2-D [N,K]) and are seen as [N, K, S]. Integer labels
// are [N,...] or [N,1,...]. Work is cut into tasks (n, strip of S) whose partial sums (double) are
// combined in a fixed order, so losses and statistics are identical for any thread count.
// Blocked inputs are converted to plain; outputs are PLAIN.
// Vectorisation of the math below needs these (no FP exceptions or errno are relied on anywhere).
#pragma GCC optimize("no-trapping-math", "no-math-errno")

#include <atomic>
#include <cmath>

#include "kernel_util.hpp"

namespace cmo {
namespace {

constexpr int64_t kStrip = 256;   // positions per softmax strip
constexpr int64_t kDiceChunk = 16384;

struct Split {
  int64_t N, K, S;
};

Split split_nk(const Buffer* x, const char* name) {
  if (x->shape.ndim < 2) fail(ku::desc(name, x) + " must have at least 2 dims [N,K,...]");
  Split s{x->shape.d[0], x->shape.d[1], 1};
  for (int i = 2; i < x->shape.ndim; i++) s.S *= x->shape.d[i];
  return s;
}

// Labels must be [N, spatial...] or [N, 1, spatial...] for logits [N, K, spatial...].
void check_label_shape(const Buffer* lab, const Buffer* x, const char* xname) {
  ku::need_dtype(lab, "labels", CMO_DTYPE_I32);
  const Shape& xs = x->shape;
  const Shape& ls = lab->shape;
  bool ok = false;
  if (ls.ndim == xs.ndim - 1) {
    ok = ls.d[0] == xs.d[0];
    for (int i = 1; ok && i < ls.ndim; i++) ok = ls.d[i] == xs.d[i + 1];
  } else if (ls.ndim == xs.ndim) {
    ok = ls.d[0] == xs.d[0] && ls.d[1] == 1;
    for (int i = 2; ok && i < ls.ndim; i++) ok = ls.d[i] == xs.d[i];
  }
  if (!ok) {
    Shape a = xs, b;
    a.d[1] = 1;
    b.ndim = xs.ndim - 1;
    b.d[0] = xs.d[0];
    for (int i = 2; i < xs.ndim; i++) b.d[i - 1] = xs.d[i];
    fail("labels " + ls.str() + " do not match " + xname + " " + xs.str() + ": expected " + b.str() + " or " +
         a.str());
  }
}

// Fails naming the first label that is neither in 0..K-1 nor ignore_index.
void check_label_values(Backend* be, const int32_t* lab, int64_t n, int64_t K, int64_t ignore) {
  const int64_t nc = ku::n_chunks(n);
  std::vector<int64_t> first((size_t)nc, -1);
  ku::parallel_tasks(be, nc, n, [&](int64_t c) {
    const int64_t lo = c * ku::kChunk, hi = std::min(n, lo + ku::kChunk);
    for (int64_t i = lo; i < hi; i++) {
      const int64_t v = lab[i];
      if ((v < 0 || v >= K) && v != ignore) {
        first[(size_t)c] = i;
        return;
      }
    }
  });
  for (int64_t c = 0; c < nc; c++)
    if (first[(size_t)c] >= 0) {
      const int64_t i = first[(size_t)c];
      fail("label " + std::to_string(lab[i]) + " at flat position " + std::to_string(i) +
           " is outside 0.." + std::to_string(K - 1) + " (K = " + std::to_string(K) + " classes)" +
           " and is not ignore_index " + std::to_string(ignore));
    }
}

// ------------------------------------------------------------------ cross-entropy
void ce_forward(const KernelArgs& a) {
  const auto& p = a.p<cmo_cross_entropy_params>("SOFTMAX_CROSS_ENTROPY_FORWARD");
  const Buffer* x = ku::input(a, 0, "logits");
  const Buffer* lab = ku::input(a, 1, "labels");
  ku::need_dtype(x, "logits", CMO_DTYPE_F32);
  const Split s = split_nk(x, "logits");
  check_label_shape(lab, x, "logits");
  const int32_t* pl = lab->i32();
  check_label_values(a.backend, pl, s.N * s.S, s.K, p.ignore_index);
  Buffer* loss = a.output(0, ku::make_shape({1}), CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "SOFTMAX_CROSS_ENTROPY_FORWARD");
  Buffer* probs = a.output(1, x->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "SOFTMAX_CROSS_ENTROPY_FORWARD");
  TempBuffer tx;
  const float* px = ku::plain(x, tx)->f32();
  const int64_t K = s.K, S = s.S, ns = (S + kStrip - 1) / kStrip;
  std::vector<double> part((size_t)(s.N * ns));
  std::vector<int64_t> cnt((size_t)(s.N * ns));
  ku::write_plain_into(a.backend, probs, [&](Buffer* out) {
    float* pp = out->f32();
    ku::parallel_tasks(a.backend, s.N * ns, s.N * K * S, [&](int64_t t) {
      const int64_t n = t / ns, i0 = (t % ns) * kStrip, w = std::min(S, i0 + kStrip) - i0;
      const float* xb = px + n * K * S + i0;
      float* pb = pp + n * K * S + i0;
      const int32_t* lb = pl + n * S + i0;
      float m[kStrip], sum[kStrip];
      for (int64_t i = 0; i < w; i++) {
        m[i] = xb[i];
        sum[i] = 0;
      }
      for (int64_t k = 1; k < K; k++)
        for (int64_t i = 0; i < w; i++) m[i] = xb[k * S + i] > m[i] ? xb[k * S + i] : m[i];
      for (int64_t k = 0; k < K; k++)
        for (int64_t i = 0; i < w; i++) {
          float e = ku::fast_exp(xb[k * S + i] - m[i]);
          pb[k * S + i] = e;
          sum[i] += e;
        }
      float lse[kStrip];
      for (int64_t i = 0; i < w; i++) {
        lse[i] = ku::fast_log(sum[i]);  // log-sum-exp minus the max
        sum[i] = 1.0f / sum[i];
      }
      double acc = 0;
      int64_t c = 0;
      for (int64_t i = 0; i < w; i++) {
        const int64_t l = lb[i];
        if (l >= 0 && l < K && l != p.ignore_index) {
          acc += ((double)m[i] - (double)xb[l * S + i]) + (double)lse[i];
          c++;
        }
      }
      for (int64_t k = 0; k < K; k++)
        for (int64_t i = 0; i < w; i++) pb[k * S + i] *= sum[i];
      part[(size_t)t] = acc;
      cnt[(size_t)t] = c;
    });
  });
  double total = 0;
  int64_t count = 0;
  for (size_t i = 0; i < part.size(); i++) {
    total += part[i];
    count += cnt[i];
  }
  loss->f32()[0] = count > 0 ? (float)(total / (double)count) : 0.0f;
}

void ce_backward(const KernelArgs& a) {
  const auto& p = a.p<cmo_cross_entropy_params>("SOFTMAX_CROSS_ENTROPY_BACKWARD");
  const Buffer* probs = ku::input(a, 0, "probs");
  const Buffer* lab = ku::input(a, 1, "labels");
  const Buffer* dloss = ku::input(a, 2, "dloss");
  ku::need_dtype(probs, "probs", CMO_DTYPE_F32);
  ku::need_dtype(dloss, "dloss", CMO_DTYPE_F32);
  if (dloss->numel() != 1) fail("dloss " + dloss->shape.str() + " must have one element");
  const Split s = split_nk(probs, "probs");
  check_label_shape(lab, probs, "probs");
  const int32_t* pl = lab->i32();
  check_label_values(a.backend, pl, s.N * s.S, s.K, p.ignore_index);
  Buffer* dx = a.output(0, probs->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "SOFTMAX_CROSS_ENTROPY_BACKWARD");
  TempBuffer tp;
  const float* pp = ku::plain(probs, tp)->f32();
  const int64_t K = s.K, S = s.S, n = s.N * S;
  // Count of non-ignored positions (integer, exact).
  const int64_t nc = ku::n_chunks(n);
  std::vector<int64_t> cnt((size_t)nc);
  ku::parallel_tasks(a.backend, nc, n, [&](int64_t c) {
    const int64_t lo = c * ku::kChunk, hi = std::min(n, lo + ku::kChunk);
    int64_t k = 0;
    for (int64_t i = lo; i < hi; i++) k += pl[i] != p.ignore_index;
    cnt[(size_t)c] = k;
  });
  int64_t count = 0;
  for (int64_t c : cnt) count += c;
  const float g = count > 0 ? (float)((double)dloss->f32()[0] / (double)count) : 0.0f;
  const int64_t ns = (S + kStrip - 1) / kStrip;
  ku::write_plain_into(a.backend, dx, [&](Buffer* out) {
    float* pd = out->f32();
    ku::parallel_tasks(a.backend, s.N * ns, s.N * K * S, [&](int64_t t) {
      const int64_t nn = t / ns, i0 = (t % ns) * kStrip, w = std::min(S, i0 + kStrip) - i0;
      const float* pb = pp + nn * K * S + i0;
      float* db = pd + nn * K * S + i0;
      const int32_t* lb = pl + nn * S + i0;
      for (int64_t k = 0; k < K; k++)
        for (int64_t i = 0; i < w; i++) {
          const int32_t l = lb[i];
          const float v = (l == p.ignore_index) ? 0.0f : (pb[k * S + i] - (l == k ? 1.0f : 0.0f)) * g;
          db[k * S + i] = v;
        }
    });
  });
}

// ------------------------------------------------------------------ Dice statistics
struct DiceTarget {
  bool labels = false;
  const int32_t* lab = nullptr;
  const float* soft = nullptr;
  TempBuffer tmp;
};

// Labels equal to ignore_index take no part in any statistic (and get no gradient).
void prepare_target(const KernelArgs& a, const Buffer* probs, const Buffer* target, const Split& s, int64_t ignore,
                    DiceTarget& t) {
  if (target->dtype == CMO_DTYPE_I32) {
    check_label_shape(target, probs, "probs");
    t.labels = true;
    t.lab = target->i32();
    check_label_values(a.backend, t.lab, s.N * s.S, s.K, ignore);
  } else if (target->dtype == CMO_DTYPE_F32) {
    if (target->shape != probs->shape)
      fail("soft target " + target->shape.str() + " must have the shape of probs " + probs->shape.str() +
           " (or pass i32 labels)");
    t.soft = ku::plain(target, t.tmp)->f32();
  } else {
    fail(ku::desc("target", target) + " must be i32 labels or f32 soft targets");
  }
}

void dice_forward(const KernelArgs& a) {
  const auto& p = a.p<cmo_dice_params>("DICE_STATS_FORWARD");
  const Buffer* probs = ku::input(a, 0, "probs");
  const Buffer* target = ku::input(a, 1, "target");
  ku::need_dtype(probs, "probs", CMO_DTYPE_F32);
  const Split s = split_nk(probs, "probs");
  DiceTarget tg;
  prepare_target(a, probs, target, s, p.ignore_index, tg);
  Buffer* stats = a.output(0, ku::make_shape({3, s.K}), CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "DICE_STATS_FORWARD");
  TempBuffer tp;
  const float* pp = ku::plain(probs, tp)->f32();
  const int64_t K = s.K, S = s.S, nc = ku::n_chunks(S, kDiceChunk);
  std::vector<double> part((size_t)(s.N * K * nc * 3));
  ku::parallel_tasks(a.backend, s.N * K * nc, s.N * K * S, [&](int64_t t) {
    const int64_t c = t % nc, k = (t / nc) % K, n = t / (nc * K);
    const int64_t lo = c * kDiceChunk, hi = std::min(S, lo + kDiceChunk);
    const float* pb = pp + (n * K + k) * S;
    double spt = 0, sp = 0, st = 0;
    if (tg.labels) {
      const int32_t* lb = tg.lab + n * S;
      const int64_t ig = p.ignore_index;
      for (int64_t i = lo; i < hi; i++) {
        const int64_t l = lb[i];
        if (l == ig) continue;
        const double v = pb[i];
        sp += v;
        if (l == k) {
          spt += v;
          st += 1;
        }
      }
    } else {
      const float* tb = tg.soft + (n * K + k) * S;
      for (int64_t i = lo; i < hi; i++) {
        const double v = pb[i], w = tb[i];
        sp += v;
        spt += v * w;
        st += w;
      }
    }
    part[(size_t)(t * 3)] = spt;
    part[(size_t)(t * 3 + 1)] = sp;
    part[(size_t)(t * 3 + 2)] = st;
  });
  ku::write_plain_into(a.backend, stats, [&](Buffer* out) {
    float* po = out->f32();
    for (int64_t k = 0; k < K; k++)
      for (int r = 0; r < 3; r++) {
        double acc = 0;
        for (int64_t n = 0; n < s.N; n++)
          for (int64_t c = 0; c < nc; c++) acc += part[(size_t)((((n * K + k) * nc) + c) * 3 + r)];
        po[r * K + k] = (float)acc;
      }
  });
}

void dice_backward(const KernelArgs& a) {
  const auto& p = a.p<cmo_dice_params>("DICE_STATS_BACKWARD");
  const Buffer* probs = ku::input(a, 0, "probs");
  const Buffer* target = ku::input(a, 1, "target");
  const Buffer* dstats = ku::input(a, 2, "dstats");
  ku::need_dtype(probs, "probs", CMO_DTYPE_F32);
  ku::need_dtype(dstats, "dstats", CMO_DTYPE_F32);
  const Split s = split_nk(probs, "probs");
  if (dstats->shape != ku::make_shape({3, s.K}))
    fail("dstats " + dstats->shape.str() + " must be [3," + std::to_string(s.K) + "] for probs " +
         probs->shape.str());
  DiceTarget tg;
  prepare_target(a, probs, target, s, p.ignore_index, tg);
  Buffer* dp = a.output(0, probs->shape, CMO_DTYPE_F32, CMO_LAYOUT_PLAIN, "DICE_STATS_BACKWARD");
  TempBuffer tds;
  const float* ds = ku::plain(dstats, tds)->f32();
  const int64_t K = s.K, S = s.S, nc = ku::n_chunks(S);
  ku::write_plain_into(a.backend, dp, [&](Buffer* out) {
    float* po = out->f32();
    ku::parallel_tasks(a.backend, s.N * K * nc, s.N * K * S, [&](int64_t t) {
      const int64_t c = t % nc, k = (t / nc) % K, n = t / (nc * K);
      const int64_t lo = c * ku::kChunk, hi = std::min(S, lo + ku::kChunk);
      const float g0 = ds[k], g1 = ds[K + k];
      float* ob = po + (n * K + k) * S;
      if (tg.labels) {
        const int32_t* lb = tg.lab + n * S;
        const int64_t ig = p.ignore_index;
        for (int64_t i = lo; i < hi; i++) {
          const int64_t l = lb[i];
          ob[i] = l == ig ? 0.0f : (l == k ? g0 : 0.0f) + g1;
        }
      } else {
        const float* tb = tg.soft + (n * K + k) * S;
        for (int64_t i = lo; i < hi; i++) ob[i] = g0 * tb[i] + g1;
      }
    });
  });
}

}  // namespace

CMO_REGISTER_KERNEL(CMO_OP_SOFTMAX_CROSS_ENTROPY_FORWARD, ce_forward);
CMO_REGISTER_KERNEL(CMO_OP_SOFTMAX_CROSS_ENTROPY_BACKWARD, ce_backward);
CMO_REGISTER_KERNEL(CMO_OP_DICE_STATS_FORWARD, dice_forward);
CMO_REGISTER_KERNEL(CMO_OP_DICE_STATS_BACKWARD, dice_backward);

}  // namespace cmo
