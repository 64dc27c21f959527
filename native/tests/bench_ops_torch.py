"""PyTorch CPU timings of the cases in bench_ops.cpp (same shapes, same thread count).

Usage: python native/tests/bench_ops_torch.py [threads] [reps]   (needs torch; not a test)
"""
import sys
import time

import torch
import torch.nn.functional as F

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 9
torch.set_num_threads(threads)
print(f"bench_ops_torch: torch {torch.__version__}, {threads} threads, median of {reps}")


def bench(name, fn):
    fn()
    ts, cs = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cs.append((time.process_time() - c0) * 1e3)
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    cs.sort()
    print(f"{name:<52} {ts[len(ts) // 2]:9.3f} ms  cpu {cs[len(cs) // 2]:9.3f} ms")


with torch.no_grad():
    x = torch.rand(2, 32, 64, 64, 64) - 0.5
    x2 = torch.rand(2, 32, 64, 64, 64) - 0.5
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    chan = torch.rand(1, 32, 1, 1, 1)
    bench("add same-shape [2,32,64^3]", lambda: x + x2)
    bench("mul x per-channel [1,32,1,1,1]", lambda: x * chan)
    bench("leaky_relu forward", lambda: F.leaky_relu(x, 0.01))
    bench("leaky_relu backward (torch kernel)", lambda: torch.ops.aten.leaky_relu_backward(x2, x, 0.01, False))
    bench("sigmoid forward", lambda: torch.sigmoid(x))
    bench("sum over {0,2,3,4}", lambda: x.sum(dim=(0, 2, 3, 4)))
    bench("mean over all", lambda: x.mean())
    bench("concat channels 2x[2,32,64^3]", lambda: torch.cat([x, x2], 1))
    bench("slice channels [16:32] (contiguous copy)", lambda: x[:, 16:32].contiguous())
    bench("adaptive avg pool -> 4^3", lambda: F.adaptive_avg_pool3d(x, 4))
    logits = (torch.rand(2, 4, 96, 96, 96) - 0.5) * 6
    labels = torch.randint(0, 4, (2, 96, 96, 96))
    bench("softmax axis 1 [2,4,96^3]", lambda: torch.softmax(logits, 1))
    bench("CE forward [2,4,96^3] (log_softmax + nll)", lambda: F.cross_entropy(logits, labels))
    probs = torch.softmax(logits, 1)
    oh = F.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    bench("dice stats (sum p*t, p, t over N and space)",
          lambda: torch.stack([(probs * oh).sum((0, 2, 3, 4)), probs.sum((0, 2, 3, 4)), oh.sum((0, 2, 3, 4))]))
    pk = torch.rand(4, 96 ** 3)
    fc = torch.rand(16, 96 ** 3)
    bench("matmul [4 x 96^3] x [16 x 96^3]^T", lambda: pk @ fc.T)
    a = torch.rand(2, 256, 64)
    bench("matmul attention [2,256,64] x [2,256,64]^T", lambda: a @ a.transpose(1, 2))
    e = torch.rand(2, 256, 256)
    bench("softmax last axis [2,256,256]", lambda: torch.softmax(e, 2))
    big = torch.rand(512, 512)
    bench("matmul [512 x 512] x [512 x 512]", lambda: big @ big)
    f = torch.rand(2, 32, 16, 16, 16)
    bench("l2 normalize axis 1 [2,32,16^3]", lambda: F.normalize(f, dim=1))

p = torch.nn.Parameter(torch.rand(64, 64, 3, 3, 3))
p.grad = torch.rand_like(p)
opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01)
bench("adamw update 110592 params", opt.step)
