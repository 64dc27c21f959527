"""The plain PyTorch 3D U-Net that comodal is compared with on real data (bench/quality/RECIPE.md):
network, loss, sampling, augmentation, schedule and sliding-window inference of that recipe, on the
arrays bench/quality/reference_prep.py wrote.

    python bench/quality/torch_reference_unet.py --data PREP --out OUT --seed 0 [--iterations 400]

Trains on PREP/imagesTr + labelsTr, predicts PREP/imagesTs and writes OUT/<case>.nii.gz (label map at
the coarse grid; bench/quality/score.py pastes it back and scores it) and OUT/train.json (loss per
iteration, wall time, peak memory).
"""

import argparse
import glob
import json
import math
import os
import resource
import time

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(cin, cout, stride=1):
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=True),
        nn.InstanceNorm3d(cout, eps=1e-5, affine=True),
        nn.LeakyReLU(0.01),
    )


class UNet(nn.Module):
    def __init__(self, cin, k, widths=(16, 32, 64, 128)):
        super().__init__()
        self.enc = nn.ModuleList()
        prev = cin
        for i, w in enumerate(widths):
            self.enc.append(nn.Sequential(conv(prev, w, 1 if i == 0 else 2), conv(w, w)))
            prev = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(widths) - 2, -1, -1):
            self.up.append(nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2))
            self.dec.append(nn.Sequential(conv(2 * widths[i], widths[i]), conv(widths[i], widths[i])))
        self.head = nn.Conv3d(widths[0], k, 1)

    def forward(self, x):
        skips = []
        for e in self.enc:
            x = e(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


def loss_fn(logits, y, k):
    ce = F.cross_entropy(logits, y)
    p = torch.softmax(logits, 1)
    g = F.one_hot(y, k).permute(0, 4, 1, 2, 3).to(p.dtype)
    dims = (0, 2, 3, 4)
    inter = (p * g).sum(dims)
    dice = (2 * inter + 1e-5) / (p.sum(dims) + g.sum(dims) + 1e-5)
    return ce + 1 - dice[1:].mean()


def load_case(d, sub, cid, nch):
    imgs = [np.asarray(nib.load(os.path.join(d, sub, f"{cid}_{c:04d}.nii.gz")).get_fdata(dtype=np.float32)) for c in range(nch)]
    return np.stack(imgs), nib.load(os.path.join(d, sub, f"{cid}_0000.nii.gz")).affine


def pad_to(a, shape, value=0):
    pads = [(0, 0)] * (a.ndim - len(shape)) + [(0, max(0, s - a.shape[a.ndim - len(shape) + i])) for i, s in enumerate(shape)]
    return np.pad(a, pads, constant_values=value)


class Sampler:
    """Exactly 1 in 3 patches holds foreground: a random labelled voxel at a random offset inside it."""

    def __init__(self, cases, patch, rng):
        self.cases, self.patch, self.rng, self.count = cases, patch, rng, 0
        self.fg = [np.argwhere(lab > 0) for _, lab in cases]

    def one(self):
        ci = self.rng.integers(len(self.cases))
        img, lab = self.cases[ci]
        shape = lab.shape
        force = self.count % 3 == 0 and len(self.fg[ci]) > 0
        self.count += 1
        start = []
        if force:
            v = self.fg[ci][self.rng.integers(len(self.fg[ci]))]
            for a in range(3):
                off = self.rng.integers(self.patch[a])
                start.append(int(np.clip(v[a] - off, 0, max(0, shape[a] - self.patch[a]))))
        else:
            start = [int(self.rng.integers(max(1, shape[a] - self.patch[a] + 1))) for a in range(3)]
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        x = pad_to(img[(slice(None),) + sl], self.patch)
        y = pad_to(lab[sl], self.patch)
        for a in range(3):
            if self.rng.random() < 0.5:
                x = np.flip(x, a + 1)
                y = np.flip(y, a)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)


def gaussian(patch):
    axes = []
    for p in patch:
        c = (p - 1) / 2
        s = p / 8
        axes.append(np.exp(-((np.arange(p) - c) ** 2) / (2 * s * s)))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


@torch.no_grad()
def sliding_window(model, img, patch, k, overlap=0.5):
    c, *shape = img.shape
    x = pad_to(img, patch)
    pshape = x.shape[1:]
    starts = []
    for a in range(3):
        n = pshape[a]
        step = max(1, int(patch[a] * (1 - overlap)))
        s = list(range(0, max(1, n - patch[a] + 1), step))
        if s[-1] != n - patch[a]:
            s.append(n - patch[a])
        starts.append(s)
    acc = np.zeros((k,) + tuple(pshape), np.float32)
    wsum = np.zeros(pshape, np.float32)
    g = gaussian(patch)
    for z in starts[0]:
        for yy in starts[1]:
            for xx in starts[2]:
                sl = (slice(z, z + patch[0]), slice(yy, yy + patch[1]), slice(xx, xx + patch[2]))
                t = torch.from_numpy(np.ascontiguousarray(x[(slice(None),) + sl]))[None]
                p = torch.softmax(model(t), 1)[0].numpy()
                acc[(slice(None),) + sl] += p * g
                wsum[sl] += g
    prob = acc / wsum
    return prob[:, : shape[0], : shape[1], : shape[2]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    ds = json.load(open(os.path.join(a.data, "dataset.json")))
    nch, k = len(ds["channel_names"]), len(ds["labels"])
    ids = sorted(os.path.basename(f)[: -len(".nii.gz")] for f in glob.glob(os.path.join(a.data, "labelsTr", "*.nii.gz")))
    cases = []
    for cid in ids:
        img, _ = load_case(a.data, "imagesTr", cid, nch)
        lab = np.rint(nib.load(os.path.join(a.data, "labelsTr", f"{cid}.nii.gz")).get_fdata()).astype(np.int64)
        cases.append((img, lab))
    patch = (a.patch,) * 3
    model = UNet(nch, k)
    nparam = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-5, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / a.iterations)))
    sampler = Sampler(cases, patch, rng)
    os.makedirs(a.out, exist_ok=True)
    losses = []
    t0 = time.time()
    model.train()
    for it in range(a.iterations):
        xs, ys = zip(*(sampler.one() for _ in range(a.batch)))
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        loss = loss_fn(model(x), y, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        if it % 50 == 0 or it == a.iterations - 1:
            print(f"[torch-ref seed {a.seed}] it {it} loss {losses[-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
    train_s = time.time() - t0
    model.eval()
    test_ids = sorted({os.path.basename(f)[:-12] for f in glob.glob(os.path.join(a.data, "imagesTs", "*_0000.nii.gz"))})
    t1 = time.time()
    for cid in test_ids:
        img, aff = load_case(a.data, "imagesTs", cid, nch)
        prob = sliding_window(model, img, patch, k)
        nib.save(nib.Nifti1Image(prob.argmax(0).astype(np.uint8), aff), os.path.join(a.out, f"{cid}.nii.gz"))
    json.dump({
        "params": nparam, "seed": a.seed, "iterations": a.iterations, "train_s": train_s,
        "predict_s": time.time() - t1, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": losses,
    }, open(os.path.join(a.out, "train.json"), "w"))
    print(f"[torch-ref seed {a.seed}] {nparam} parameters, trained {train_s:.0f} s, predicted {len(test_ids)} cases", flush=True)


if __name__ == "__main__":
    main()
