"""Markdown summary of one scripts/gpu/test.sh run, ready to paste into bench/gpu_notes.md.

  python3 bench/gpu_summary.py OUT_DIR [--target 0.8]      (standard library only)

Reads what the stages left in OUT_DIR (missing files just leave "-" in the tables):
  stages.tsv                     stage, status (ok / FAILED rc / TIMEOUT after s / skipped: why), seconds
  machine.txt                    GPU, driver, torch, cuDNN
  notes.txt                      one result line per stage (parity counts, training run, ...)
  bench_ours.log                 conv3d table of native/cuda/tests/test_cuda_parity.cpp --bench-only
  torch_conv.json                bench/gpu_torch.py --conv
  step_ours_<model>_<prec>.json  bench/gpu_train_step.ts --json (one model and precision per process)
  step_torch_<model>_<prec>.json bench/gpu_torch.py --models <model> --precision <prec> --json
Prints the Markdown and writes it to OUT_DIR/summary.md.
"""

import argparse
import json
import os
import re
import sys

MODELS = {"unet": "U-Net 16-32-64-128", "cmc": "CMC (2 modalities, 1 labeled + 1 unlabeled)"}
PRECS = {"fp32": "strict FP32", "tf32": "TF32"}
# conv sections of test_cuda_parity.cpp --bench-only: label prefix -> column
OURS_CONV = [
    ("strict FP32 (own", "ours FP32"),
    ("strict FP32, own", "ours FP32 wgrad=own"),
    ("strict FP32, cuDNN", "ours FP32 wgrad=cudnn"),
    ("TF32 allowed", "ours TF32"),
]


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_lines(path):
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f]
    except OSError:
        return []


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return out


def parse_ours_conv(lines):
    """{column: {shape: total_ms}} from the C++ benchmark's tables."""
    res = {}
    col = None
    for line in lines:
        m = re.match(r"^== conv3d .*\(data \+ weights\), (.*) ==$", line)
        if m:
            label = m.group(1).split(", ", 1)[1] if ", " in m.group(1) else m.group(1)
            col = next((c for p, c in OURS_CONV if label.startswith(p)), None)
            continue
        parts = line.split()
        if col and len(parts) == 6 and parts[0].startswith("["):
            try:
                res.setdefault(col, {})[parts[0]] = float(parts[4])
            except ValueError:
                pass
    return res


def conv_section(out_dir):
    ours = parse_ours_conv(read_lines(os.path.join(out_dir, "bench_ours.log")))
    torch = (load_json(os.path.join(out_dir, "torch_conv.json")) or {}).get("conv", {})
    tcol = {p: {r["shape"]: r["total_ms"] for r in rows} for p, rows in torch.items()}
    shapes = []
    for d in list(ours.values()) + list(tcol.values()):
        for s in d:
            if s not in shapes:
                shapes.append(s)
    if not shapes:
        return ["(no conv3d figures: the conv stage did not run or failed)"]
    rows = []
    for s in shapes:
        o32, t32 = ours.get("ours FP32", {}).get(s), tcol.get("fp32", {}).get(s)
        otf, ttf = ours.get("ours TF32", {}).get(s), tcol.get("tf32", {}).get(s)
        rows.append([s, o32, ours.get("ours FP32 wgrad=own", {}).get(s), ours.get("ours FP32 wgrad=cudnn", {}).get(s),
                     t32, otf, ttf,
                     fmt(o32 / t32, 2) if o32 and t32 else "-", fmt(otf / ttf, 2) if otf and ttf else "-"])
    return ["conv3d 3x3x3, padding 1: forward + backward data + backward weights, total ms (median of 7)", ""] + table(
        ["shape", "ours FP32", "ours FP32 wgrad=own", "ours FP32 wgrad=cudnn", "PyTorch FP32", "ours TF32",
         "PyTorch TF32", "ratio FP32", "ratio TF32"], rows)


def step_section(out_dir, target):
    rows, mem_rows, warnings = [], [], []
    size = None
    for m in MODELS:
        for p in PRECS:
            o = load_json(os.path.join(out_dir, f"step_ours_{m}_{p}.json"))
            t = load_json(os.path.join(out_dir, f"step_torch_{m}_{p}.json"))
            r = next((x for x in (o or {}).get("results", []) if x.get("model") == m), None)
            tr = ((t or {}).get("step", {}).get(m, {}) or {}).get(p)
            if r is None and tr is None:
                continue
            size = size or (o or {}).get("size") or (tr or {}).get("size")
            om, tm = (r or {}).get("medianMs"), (tr or {}).get("median_ms")
            ratio = om / tm if om and tm else None
            op, tp = (r or {}).get("params"), (tr or {}).get("params")
            if op is not None and tp is not None and op != tp:
                warnings.append(f"WARNING: {m} parameter counts differ: ours {op}, PyTorch {tp}")
            params = f"{op if op is not None else '-'} / {tp if tp is not None else '-'}"
            peak, alloc = (r or {}).get("peakMiB"), (tr or {}).get("peak_alloc_mib")
            res, tres = (r or {}).get("poolMiB"), (tr or {}).get("peak_reserved_mib")
            dev, tdev = (r or {}).get("deviceUsedMiB"), (tr or {}).get("device_used_mib")
            loss0 = (r or {}).get("losses", [None])[0]
            tloss0 = (tr or {}).get("losses", [None])[0]
            time_met = "-" if ratio is None else ("yes" if ratio <= target else "no")
            mem_met = "-"
            if peak is not None and alloc is not None and res is not None and tres is not None:
                mem_met = "yes" if peak <= alloc and res <= tres else "no"
            rows.append([MODELS[m], PRECS[p], params, om, tm, fmt(ratio, 2) if ratio else "-", time_met,
                         fmt(loss0, 3) + " / " + fmt(tloss0, 3)])
            mem_rows.append([MODELS[m], PRECS[p], peak, alloc, res, tres, dev or None, tdev, mem_met])
    if not rows:
        return ["(no training-step figures: the step stage did not run or failed)"]
    lines = [f"Training step, batch 2 x {size}^3 (median ms after warm-up; one step = upload, forward, loss, "
             f"backward, SGD; ratio = ours / PyTorch, target <= {target})", ""]
    lines += table(["model", "precision", "params ours / torch", "ours ms", "PyTorch ms", "ratio", "time met",
                    "first loss ours / torch"], rows)
    lines += ["", "Memory, MiB (peak over the timed steps; each model and side in its own process; target: ours <= "
              "PyTorch)", ""]
    lines += table(["model", "precision", "ours peak live", "PyTorch max allocated", "ours reserved",
                    "PyTorch max reserved", "ours device used", "PyTorch device used", "memory met"], mem_rows)
    return lines + ([""] + warnings if warnings else [])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--target", type=float, default=0.8)
    args = ap.parse_args()
    d = args.out_dir
    lines = ["## GPU run summary (scripts/gpu/test.sh)", ""]
    machine = read_lines(os.path.join(d, "machine.txt"))
    if machine:
        lines += ["- " + m for m in machine if m.strip()] + [""]
    stages = [line.split("\t") for line in read_lines(os.path.join(d, "stages.tsv")) if line.strip()]
    if stages:
        lines += table(["stage", "status", "seconds"], [[s[0], s[1], s[2] if len(s) > 2 else "-"] for s in stages])
        lines.append("")
    notes = read_lines(os.path.join(d, "notes.txt"))
    if notes:
        lines += ["- " + n for n in notes if n.strip()] + [""]
    lines += conv_section(d) + [""] + step_section(d, args.target)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    try:
        with open(os.path.join(d, "summary.md"), "w") as f:
            f.write(text)
    except OSError as e:
        print(f"(could not write summary.md: {e})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
