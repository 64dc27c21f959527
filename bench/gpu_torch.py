"""PyTorch + cuDNN baseline for the CUDA backend's conv3d benchmark (native/cuda/tests/test_cuda_parity.cpp
--bench): conv3d 3x3x3, padding 1, forward, backward-data and backward-weights timed apart, batch 2,
on the same shapes, in strict FP32 and with TF32 allowed. cudnn.benchmark is on (PyTorch then picks
algorithms by timing them, as our backend does with cudnnFind*AlgorithmEx).

Also times one training step (forward, Dice + CE loss, backward, SGD) of a plain 3D U-Net
(conv-instance norm-LeakyReLU blocks, strided conv down, transposed conv up) at 2 x 1 x 128^3, as a
reference for the step-time target of issue 6.

Run on a GPU machine: python3 bench/gpu_torch.py [--json out.json]
"""

import argparse
import json
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = [  # (N, Ci, D, H, W, Co): same list as the C++ benchmark
    (2, 16, 128, 128, 128, 16),
    (2, 32, 64, 64, 64, 32),
    (2, 64, 32, 32, 32, 64),
    (2, 1, 128, 128, 128, 16),
    (2, 128, 16, 16, 16, 128),
]


def time_ms(fn, reps=7, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def conv_bench(tf32: bool):
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    rows = []
    for n, ci, d, h, w, co in SHAPES:
        x = torch.rand(n, ci, d, h, w, device="cuda") * 2 - 1
        wt = (torch.rand(co, ci, 3, 3, 3, device="cuda") * 2 - 1) * 0.1
        dy = torch.rand(n, co, d, h, w, device="cuda") * 2 - 1
        args = dict(stride=[1, 1, 1], padding=[1, 1, 1], dilation=[1, 1, 1], transposed=False,
                    output_padding=[0, 0, 0], groups=1)
        fwd = lambda: F.conv3d(x, wt, None, 1, 1)
        bwd_data = lambda: torch.ops.aten.convolution_backward(dy, x, wt, None, **args,
                                                               output_mask=[True, False, False])
        bwd_w = lambda: torch.ops.aten.convolution_backward(dy, x, wt, None, **args,
                                                            output_mask=[False, True, False])
        ms = [time_ms(fwd), time_ms(bwd_data), time_ms(bwd_w)]
        flops = 2.0 * n * co * d * h * w * ci * 27
        total = sum(ms)
        rows.append({"shape": f"[{n},{ci},{d},{h},{w}]->{co}", "fwd_ms": ms[0], "bwd_data_ms": ms[1],
                     "bwd_weights_ms": ms[2], "total_ms": total, "gflops": 3 * flops / (total * 1e6)})
        del x, wt, dy
    return rows


class Block(nn.Sequential):
    def __init__(self, ci, co, stride=1):
        super().__init__(nn.Conv3d(ci, co, 3, stride, 1), nn.InstanceNorm3d(co, affine=True),
                         nn.LeakyReLU(0.01), nn.Conv3d(co, co, 3, 1, 1), nn.InstanceNorm3d(co, affine=True),
                         nn.LeakyReLU(0.01))


class UNet(nn.Module):
    def __init__(self, widths=(16, 32, 64, 128), classes=4):
        super().__init__()
        self.enc = nn.ModuleList()
        ci = 1
        for i, w in enumerate(widths):
            self.enc.append(Block(ci, w, 1 if i == 0 else 2))
            ci = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose3d(ci, w, 2, 2))
            self.dec.append(Block(2 * w, w))
            ci = w
        self.head = nn.Conv3d(ci, classes, 1)

    def forward(self, x):
        skips = []
        for blk in self.enc:
            x = blk(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


def unet_step_bench(tf32: bool, size=128, batch=2, classes=4):
    torch.backends.cudnn.allow_tf32 = tf32
    model = UNet(classes=classes).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    x = torch.rand(batch, 1, size, size, size, device="cuda")
    y = torch.randint(0, classes, (batch, size, size, size), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        probs = logits.softmax(1)
        onehot = F.one_hot(y, classes).permute(0, 4, 1, 2, 3).float()
        inter = (probs * onehot).sum((0, 2, 3, 4))
        dice = 1 - (2 * inter + 1e-5) / (probs.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1e-5)
        loss = F.cross_entropy(logits, y) + dice.mean()
        loss.backward()
        opt.step()

    torch.cuda.reset_peak_memory_stats()
    ms = time_ms(step, reps=5, warmup=3)
    return {"unet_step_ms": ms, "peak_alloc_mib": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the numbers to this file")
    ap.add_argument("--no-unet", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return 0
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    out = {}
    for tf32 in (False, True):
        label = "TF32 allowed" if tf32 else "strict FP32"
        rows = conv_bench(tf32)
        out[label] = rows
        print(f"\n== PyTorch conv3d 3x3x3 pad 1 forward + backward (data + weights), {label} ==")
        print(f"{'shape':28s} {'fwd ms':>10s} {'bwd-d ms':>10s} {'bwd-w ms':>10s} {'total ms':>10s} {'GFLOP/s':>10s}")
        for r in rows:
            print(f"{r['shape']:28s} {r['fwd_ms']:10.3f} {r['bwd_data_ms']:10.3f} {r['bwd_weights_ms']:10.3f} "
                  f"{r['total_ms']:10.3f} {r['gflops']:10.0f}")
        if not args.no_unet:
            u = unet_step_bench(tf32)
            out[label + " unet"] = u
            print(f"U-Net (16-32-64-128, 2x1x128^3) training step: {u['unet_step_ms']:.1f} ms, peak allocated "
                  f"{u['peak_alloc_mib']:.0f} MiB, reserved {u['peak_reserved_mib']:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
