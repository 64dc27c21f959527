#!/usr/bin/env python3
"""PyTorch baseline for bench/conv_bench.ts: times conv3d forward and forward+backward.

Usage: python bench/torch_conv.py '<json>'   where json is
  {"threads": 2, "warmup": 2, "runs": 5,
   "cases": [{"name", "n", "ci", "co", "size": [d,h,w], "k", "padding", "inputGrad": bool}]}
Prints one JSON object on stdout: {"torch": version, "threads", "cases": [{"name", "forwardMs",
"forwardBackwardMs", "forwardRunsMs", "forwardBackwardRunsMs"}]}. Times are medians in ms.
The first layer of a network needs no input gradient: with inputGrad false, x.requires_grad is False
so backward computes only the weight and bias gradients (as the engine does).
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def timed(fn, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(int(cfg.get("threads", 2)))
    warmup, runs = int(cfg.get("warmup", 2)), int(cfg.get("runs", 5))
    g = torch.Generator().manual_seed(0)
    results = []
    for c in cfg["cases"]:
        d, h, w = c["size"]
        k, p = c["k"], c["padding"]
        x = torch.randn(c["n"], c["ci"], d, h, w, generator=g)
        wt = (torch.randn(c["co"], c["ci"], k, k, k, generator=g) * (c["ci"] * k ** 3) ** -0.5)
        b = torch.zeros(c["co"])
        with torch.no_grad():
            fwd = timed(lambda: F.conv3d(x, wt, b, padding=p), warmup, runs)
        xg = x.clone().requires_grad_(bool(c["inputGrad"]))
        wg = wt.clone().requires_grad_(True)
        bg = b.clone().requires_grad_(True)
        dy = torch.randn(F.conv3d(x, wt, b, padding=p).shape, generator=g)

        def step():
            y = F.conv3d(xg, wg, bg, padding=p)
            y.backward(dy)
            wg.grad = None
            bg.grad = None
            xg.grad = None

        fb = timed(step, warmup, runs)
        results.append({
            "name": c["name"],
            "forwardMs": statistics.median(fwd),
            "forwardBackwardMs": statistics.median(fb),
            "forwardRunsMs": fwd,
            "forwardBackwardRunsMs": fb,
        })
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "cases": results}))


if __name__ == "__main__":
    main()
