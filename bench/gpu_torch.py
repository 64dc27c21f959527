"""PyTorch + cuDNN side of the CUDA benchmarks (scripts/gpu/test.sh), measured on the same GPU in the
same run as ours:

  conv   conv3d 3x3x3, padding 1, batch 2: forward, backward-data and backward-weights timed apart, on
         the shapes of native/cuda/tests/test_cuda_parity.cpp --bench, strict FP32 and TF32 allowed.
  step   one training step of the PyTorch twins of the two models of bench/gpu_train_step.ts:
         "unet" (the "supervised" method: U-Net 16-32-64-128, one input channel, 2 labeled cases) and
         "cmc" (two modalities, 1 labeled + 1 unlabeled case each, MIA and additive fusion, loss
         L_sup + 0.1 L_csc + 0.1 L_cac at ramp weight 1). The networks, batches and losses are those of
         bench/torch_train_step.py (imported, one definition for the CPU and the GPU benchmark).
         One step = upload the host batch, forward, loss, backward, SGD (momentum 0.99, Nesterov,
         weight decay 3e-5, lr 0.01), exactly what our step does (--inputs device keeps the batch on
         the GPU instead).

Timing: wall clock between torch.cuda.synchronize() calls (our side times the same way, with the
backend's synchronize), median of --steps steps after --warmup warm-up steps; cudnn.benchmark on
(PyTorch then times algorithms, as our backend does with cudnnFind*AlgorithmEx). Memory: after the
warm-up the peak statistics are reset; max_memory_allocated (compare with our peak live bytes),
max_memory_reserved (compare with our pool's reserved bytes) and the device memory in use
(mem_get_info, includes the CUDA context and library code: compare with ours only when each side ran
in its own process, as test.sh does).

  python3 bench/gpu_torch.py [--conv|--no-conv] [--models unet,cmc] [--precision fp32,tf32]
      [--size 128] [--steps 5] [--warmup 3] [--device cuda|cpu] [--quick] [--json out.json]

--device cpu (with a small --size, e.g. 32) checks the step benchmark's logic on a machine without a
GPU; --quick shrinks the conv shapes by 8 per axis for the same purpose.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train_step import batch_to, build_twin, host_batch, param_count, twin_loss  # noqa: E402

SHAPES = [  # (N, Ci, D, H, W, Co): same list as the C++ benchmark
    (2, 16, 128, 128, 128, 16),
    (2, 32, 64, 64, 64, 32),
    (2, 64, 32, 32, 32, 64),
    (2, 1, 128, 128, 128, 16),
    (2, 128, 16, 16, 16, 128),
]
PRECISIONS = {"fp32": "strict FP32", "tf32": "TF32 allowed"}
CLASSES = 4
WIDTHS = (16, 32, 64, 128)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_precision(prec):
    """fp32: strict; tf32: TF32 in cuDNN convolutions only, PyTorch's default and what our backend's
    COMODAL_CUDA_TF32=1 does (matrix products stay FP32 on both sides)."""
    torch.backends.cudnn.allow_tf32 = prec == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = False


def time_ms(fn, device, reps, warmup):
    """Median wall time of fn() in ms, each repetition between two synchronisations."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), times


def conv_bench(prec, device, quick):
    set_precision(prec)
    rows = []
    for n, ci, d, h, w, co in SHAPES:
        if quick:
            d, h, w = d // 8, h // 8, w // 8
        x = torch.rand(n, ci, d, h, w, device=device) * 2 - 1
        wt = (torch.rand(co, ci, 3, 3, 3, device=device) * 2 - 1) * 0.1
        dy = torch.rand(n, co, d, h, w, device=device) * 2 - 1
        args = dict(stride=[1, 1, 1], padding=[1, 1, 1], dilation=[1, 1, 1], transposed=False,
                    output_padding=[0, 0, 0], groups=1)
        fwd = lambda: F.conv3d(x, wt, None, 1, 1)  # noqa: E731
        bwd_data = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            dy, x, wt, None, **args, output_mask=[True, False, False])
        bwd_w = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            dy, x, wt, None, **args, output_mask=[False, True, False])
        ms = [time_ms(f, device, reps=7, warmup=2)[0] for f in (fwd, bwd_data, bwd_w)]
        flops = 2.0 * n * co * d * h * w * ci * 27
        total = sum(ms)
        rows.append({"shape": f"[{n},{ci},{d},{h},{w}]->{co}", "fwd_ms": ms[0], "bwd_data_ms": ms[1],
                     "bwd_weights_ms": ms[2], "total_ms": total, "gflops": 3 * flops / (total * 1e6)})
        del x, wt, dy
    return rows


def step_bench(model_kind, prec, device, size, steps, warmup, inputs):
    """One model's training step; returns times, memory and the parameter count."""
    set_precision(prec)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = build_twin(model_kind, CLASSES, WIDTHS, unet_in_channels=1).to(device)
    params = param_count(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    host = host_batch(model_kind, size, CLASSES, unet_in_channels=1)
    resident = batch_to(host, device) if inputs == "device" else None
    losses = []
    first_terms = {}

    def step():
        batch = resident if resident is not None else batch_to(host, device)
        opt.zero_grad(set_to_none=True)
        terms = {} if not losses else None
        loss = twin_loss(model_kind, model, batch, terms)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if terms is not None:
            first_terms.update({k: v.item() for k, v in terms.items()}, loss=losses[0])

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    median, times = time_ms(step, device, reps=steps, warmup=0)
    out = {"model": model_kind, "precision": prec, "params": params, "size": size, "steps": steps,
           "warmup": warmup, "inputs": inputs, "median_ms": median, "step_runs_ms": times, "losses": losses,
           "first_terms": first_terms}
    if device.type == "cuda":
        free_b, total_b = torch.cuda.mem_get_info(device)
        out.update(peak_alloc_mib=torch.cuda.max_memory_allocated(device) / 2**20,
                   peak_reserved_mib=torch.cuda.max_memory_reserved(device) / 2**20,
                   device_used_mib=(total_b - free_b) / 2**20)
    del opt, model, resident
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the numbers to this file")
    ap.add_argument("--conv", dest="conv", action="store_true", default=None, help="run the conv benchmark")
    ap.add_argument("--no-conv", dest="conv", action="store_false")
    ap.add_argument("--models", default="unet,cmc", help="training-step models (comma list; '' for none)")
    ap.add_argument("--precision", default="fp32,tf32", help="fp32 (strict), tf32 (PyTorch's default)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--inputs", default="host", choices=["host", "device"],
                    help="host: upload the batch every step, as ours does; device: keep it on the GPU")
    ap.add_argument("--quick", action="store_true", help="conv shapes / 8 per axis (logic checks)")
    ap.add_argument("--no-unet", action="store_true", help="(old flag) same as --models cmc")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    if args.no_unet:
        models = [m for m in models if m != "unet"]
    for m in models:
        if m not in ("unet", "cmc"):
            ap.error(f"--models: unknown model {m!r} (unet, cmc)")
    precs = [p for p in args.precision.split(",") if p]
    for p in precs:
        if p not in PRECISIONS:
            ap.error(f"--precision: unknown {p!r} (fp32, tf32)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (torch.cuda.is_available() is False): nothing to benchmark; "
              "--device cpu --size 32 checks the logic without a GPU")
        return 3
    device = torch.device(args.device)
    do_conv = args.conv if args.conv is not None else True
    out = {"torch": torch.__version__, "device": args.device}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        out.update(cudnn=torch.backends.cudnn.version(), device_name=torch.cuda.get_device_name(device))
        print(f"torch {torch.__version__}, cuDNN {out['cudnn']}, {out['device_name']}")
    else:
        print(f"torch {torch.__version__} on the CPU ({torch.get_num_threads()} threads): logic check, "
              f"the figures are not the GPU's")
    if do_conv:
        out["conv"] = {}
        for p in precs:
            rows = conv_bench(p, device, args.quick)
            out["conv"][p] = rows
            print(f"\n== PyTorch conv3d 3x3x3 pad 1 forward + backward (data + weights), {PRECISIONS[p]} ==")
            print(f"{'shape':28s} {'fwd ms':>10s} {'bwd-d ms':>10s} {'bwd-w ms':>10s} {'total ms':>10s} "
                  f"{'GFLOP/s':>10s}")
            for r in rows:
                print(f"{r['shape']:28s} {r['fwd_ms']:10.3f} {r['bwd_data_ms']:10.3f} "
                      f"{r['bwd_weights_ms']:10.3f} {r['total_ms']:10.3f} {r['gflops']:10.0f}")
    if models:
        out["step"] = {}
        for m in models:
            for p in precs:
                r = step_bench(m, p, device, args.size, args.steps, args.warmup, args.inputs)
                out["step"].setdefault(m, {})[p] = r
                mem = ""
                if "peak_alloc_mib" in r:
                    mem = (f", peak allocated {r['peak_alloc_mib']:.0f} MiB, reserved "
                           f"{r['peak_reserved_mib']:.0f} MiB, device used {r['device_used_mib']:.0f} MiB")
                print(f"PyTorch {m:4s} {r['params']:9d} params, batch 2 x {args.size}^3, {PRECISIONS[p]}: "
                      f"step {r['median_ms']:.1f} ms (runs {' '.join(f'{t:.0f}' for t in r['step_runs_ms'])})"
                      f"{mem}; loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
