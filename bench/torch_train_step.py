"""PyTorch side of the training-step benchmark (bench/train_step.ts): the same two networks as the
engine's, built layer for layer, and one training step each (forward, loss, backward, AdamW step).

  unet  plain 3D U-Net as src/nn/unet.ts UNet: per level two conv3x3x3 (no bias) -> instance norm
        (affine, eps 1e-5) -> LeakyReLU(0.01) blocks, the first conv of levels 1.. with stride 2,
        transposed conv 2x2x2 stride 2 (no bias) up, concat [up, skip], two blocks, 1x1x1 head (bias).
        Loss: CE + (1 - soft Dice over foreground classes, batch Dice, smooth 1e-5).
  cmc   the CMC network as src/nn/cmc.ts CmcNet: one such encoder per modality, the MIA block on each
        deep feature map, the fusion layer G = sigmoid(B2(B1(concat))) added to each branch, one
        decoder per modality. Loss as src/train/methods.ts "cmc": L_sup (mean over modalities, labeled
        half of the batch) + w (0.1 L_csc + 0.1 L_cac), L_csc over the whole batch (grid 4, tau 0.5),
        L_cac on the unlabeled half (class prototypes, tau 0.1, mass threshold 1).

Usage: python bench/torch_train_step.py '<json config>'   (config keys: see main()). Prints one JSON
object on stdout: torch version, per-step times in ms, parameter count and memory figures.

The networks, batches and losses here are the one definition of the PyTorch twins: bench/gpu_torch.py
(the CUDA benchmark) imports build_twin, host_batch and twin_loss from this file. Everything below
works on any device (tensors made inside the losses follow their inputs' device).

Memory: "rss_before_model" is the resident set after importing torch and creating the inputs; the
peak is the resident high-water mark (VmHWM) of the timed steps only (reset through
/proc/self/clear_refs after the warm-up steps); "peak_rss_increase" = peak - rss_before_model, i.e.
parameters, gradients, optimiser state, activations and allocator slack.
"""

import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def proc_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def cpu_ticks():
    """(busy ticks of the whole machine, ticks of this process) from /proc/stat and /proc/self/stat."""
    with open("/proc/stat") as f:
        v = [int(t) for t in f.readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    with open("/proc/self/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return busy, int(rest[11]) + int(rest[12])


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ConvBlock(nn.Module):
    def __init__(self, ci, co, stride=1):
        super().__init__()
        self.conv = nn.Conv3d(ci, co, 3, stride, 1, bias=False)
        self.norm = nn.InstanceNorm3d(co, eps=1e-5, affine=True)

    def forward(self, x):
        return F.leaky_relu(self.norm(self.conv(x)), 0.01)


class Encoder(nn.Module):
    def __init__(self, ci, widths):
        super().__init__()
        self.levels = nn.ModuleList()
        for i, w in enumerate(widths):
            self.levels.append(nn.Sequential(ConvBlock(ci, w, 1 if i == 0 else 2), ConvBlock(w, w)))
            ci = w

    def forward(self, x):
        skips = []
        for i, lvl in enumerate(self.levels):
            x = lvl(x)
            if i < len(self.levels) - 1:
                skips.append(x)
        return skips, x


class DecoderLevel(nn.Module):
    def __init__(self, deep_c, out_c):
        super().__init__()
        self.up = nn.ConvTranspose3d(deep_c, out_c, 2, 2, bias=False)
        self.conv1 = ConvBlock(2 * out_c, out_c)
        self.conv2 = ConvBlock(out_c, out_c)

    def forward(self, x, skip):
        return self.conv2(self.conv1(torch.cat([self.up(x), skip], 1)))


class Decoder(nn.Module):
    def __init__(self, widths, classes):
        super().__init__()
        self.levels = nn.ModuleList(DecoderLevel(widths[i + 1], widths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv3d(widths[0], classes, 1, bias=True)

    def forward(self, deep, skips):
        h = deep
        for i in range(len(self.levels) - 1, -1, -1):
            h = self.levels[i](h, skips[i])
        return self.head(h), h


class UNet(nn.Module):
    def __init__(self, ci, classes, widths):
        super().__init__()
        self.encoder = Encoder(ci, widths)
        self.decoder = Decoder(widths, classes)

    def forward(self, x):
        skips, deep = self.encoder(x)
        return self.decoder(deep, skips)[0]


class Mia(nn.Module):
    """E = X X^T, A = softmax_row(max_row(E) - E), Y = gamma (A X) + X, gamma initialised to 0."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, f):
        b, c = f.shape[:2]
        x = f.reshape(b, c, -1)
        energy = torch.bmm(x, x.transpose(1, 2))
        att = torch.softmax(energy.max(-1, keepdim=True)[0].expand_as(energy) - energy, -1)
        return (self.gamma * torch.bmm(att, x) + x).reshape(f.shape)


class Fusion(nn.Module):
    def __init__(self, modalities, c):
        super().__init__()
        self.b1 = ConvBlock(modalities * c, c)
        self.b2 = ConvBlock(c, c)

    def forward(self, ys):
        g = torch.sigmoid(self.b2(self.b1(torch.cat(ys, 1))))
        return [y + g for y in ys]


class CmcNet(nn.Module):
    def __init__(self, modalities, classes, widths):
        super().__init__()
        self.encoders = nn.ModuleList(Encoder(1, widths) for _ in range(modalities))
        self.mias = nn.ModuleList(Mia() for _ in range(modalities))
        self.fusion = Fusion(modalities, widths[-1])
        self.decoders = nn.ModuleList(Decoder(widths, classes) for _ in range(modalities))

    def forward(self, xs):
        enc = [e(x) for e, x in zip(self.encoders, xs)]
        ys = [m(deep) for m, (_, deep) in zip(self.mias, enc)]
        zs = self.fusion(ys)
        outs = []
        for d, z, (skips, deep) in zip(self.decoders, zs, enc):
            logits, feats = d(z, skips)
            outs.append((logits, feats, deep))
        return outs


def supervised_loss(logits, labels, smooth=1e-5):
    """CE + (1 - mean soft Dice over foreground classes); labels [B,1,...] int."""
    y = labels[:, 0].long()
    ce = F.cross_entropy(logits, y, ignore_index=-100)
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(y, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0,) + tuple(range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return ce + (1 - dice[1:].mean())


def channel_descriptors(f, grid):
    b, c = f.shape[:2]
    g = [min(s, grid) for s in f.shape[2:]]
    pooled = f if list(f.shape[2:]) == g else F.adaptive_avg_pool3d(f, g)
    return F.normalize(pooled.reshape(b, c, -1), dim=2)


def nt_xent_joint(u, v, tau):
    b, n = u.shape[:2]
    z = torch.cat([u, v], 1)
    sim = torch.bmm(z, z.transpose(1, 2)) / tau
    sim = sim + torch.diag(torch.full((2 * n,), -1e9, device=sim.device, dtype=sim.dtype))
    idx = torch.arange(2 * n, device=sim.device)
    labels = torch.where(idx < n, idx + n, idx - n).repeat(b)
    return F.cross_entropy(sim.reshape(b * 2 * n, 2 * n), labels)


def class_prototypes(probs, feats, eps=1e-6):
    b, k = probs.shape[:2]
    c = feats.shape[1]
    p = probs.reshape(b, k, -1)
    h = F.normalize(feats, dim=1).reshape(b, c, -1)
    mass = p.sum(2, keepdim=True)
    raw = torch.bmm(p, h.transpose(1, 2))
    return F.normalize(raw / (mass + eps), dim=2), mass.detach()[..., 0]


def nt_xent_cross(u, v, tau, valid):
    b, n = u.shape[:2]
    logits = torch.bmm(u, v.transpose(1, 2)) / tau
    logits_t = torch.bmm(v, u.transpose(1, 2)) / tau
    labels = torch.where(valid, torch.arange(n, device=u.device).expand(b, n),
                         torch.full((b, n), -100, device=u.device)).reshape(-1)
    mask = torch.where(valid, 0.0, -1e9)[:, None, :].expand(b, n, n)
    l1 = F.cross_entropy((logits + mask).reshape(b * n, n), labels)
    l2 = F.cross_entropy((logits_t + mask).reshape(b * n, n), labels)
    return 0.5 * (l1 + l2)


def cmc_loss(outs, labels, bl, w, lam_csc=0.1, lam_cac=0.1, terms=None):
    """terms: a dict that receives the loss terms (tensors) sup, csc, cac, as methods.ts logs them."""
    sup = sum(supervised_loss(logits[:bl], y) for (logits, _, _), y in zip(outs, labels)) / len(outs)
    pairs = [(a, b) for a in range(len(outs)) for b in range(a + 1, len(outs))]
    csc = sum(nt_xent_joint(channel_descriptors(outs[a][2], 4), channel_descriptors(outs[b][2], 4), 0.5)
              for a, b in pairs) / len(pairs)
    branches = [(torch.softmax(logits[bl:], 1), feats[bl:]) for logits, feats, _ in outs]
    cac = 0
    for a, b in pairs:
        ua, ma = class_prototypes(*branches[a])
        ub, mb = class_prototypes(*branches[b])
        cac = cac + nt_xent_cross(ua, ub, 0.1, (ma >= 1) & (mb >= 1))
    cac = cac / len(pairs)
    if terms is not None:
        terms.update(sup=sup.detach(), csc=csc.detach(), cac=cac.detach())
    return sup + csc * (w * lam_csc) + cac * (w * lam_cac)


def build_twin(model_kind, classes=4, widths=(16, 32, 64, 128), unet_in_channels=2):
    """The PyTorch twin of one benchmark model: "unet" (src/nn/unet.ts UNet with unet_in_channels
    input channels: 2 in the CPU benchmark, 1 for the "supervised" method of the GPU benchmark) or
    "cmc" (src/nn/cmc.ts CmcNet, 2 modalities, MIA and additive fusion on)."""
    if model_kind == "unet":
        return UNet(unet_in_channels, classes, list(widths))
    if model_kind == "cmc":
        return CmcNet(2, classes, list(widths))
    raise SystemExit(f"unknown model {model_kind!r} (unet, cmc)")


def host_batch(model_kind, size, classes=4, unet_in_channels=2, generator=None):
    """One batch as the benchmarks build it, on the CPU: "unet" x [2,C,s^3] in [-1,1) and int32 labels
    y [2,1,s^3]; "cmc" per modality one labeled case (lab, ys) and one unlabeled case (unl)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(7)
    sp = (size, size, size)
    if model_kind == "unet":
        x = torch.rand((2, unet_in_channels) + sp, generator=gen) * 2 - 1
        y = torch.randint(0, classes, (2, 1) + sp, generator=gen, dtype=torch.int32)
        return {"x": x, "y": y}
    if model_kind == "cmc":
        lab = [torch.rand((1, 1) + sp, generator=gen) * 2 - 1 for _ in range(2)]
        unl = [torch.rand((1, 1) + sp, generator=gen) * 2 - 1 for _ in range(2)]
        ys = [torch.randint(0, classes, (1, 1) + sp, generator=gen, dtype=torch.int32) for _ in range(2)]
        return {"lab": lab, "unl": unl, "ys": ys}
    raise SystemExit(f"unknown model {model_kind!r} (unet, cmc)")


def batch_to(batch, device, non_blocking=False):
    """The batch on `device` (an upload, as our engine uploads each step's batch)."""
    return {k: ([t.to(device, non_blocking=non_blocking) for t in v] if isinstance(v, list)
                else v.to(device, non_blocking=non_blocking)) for k, v in batch.items()}


def twin_loss(model_kind, model, batch, terms=None):
    """The loss of one step, as src/train/methods.ts computes it: "unet" CE + (1 - foreground soft
    Dice) over the batch; "cmc" L_sup (mean over the modalities, labeled half) + w (0.1 L_csc + 0.1
    L_cac) at w = 1, with the labeled and unlabeled cases of a modality in one forward pass. terms: a
    dict that receives the loss terms (tensors)."""
    if model_kind == "unet":
        loss = supervised_loss(model(batch["x"]), batch["y"])
        if terms is not None:
            terms.update(sup=loss.detach())
        return loss
    xs = [torch.cat([batch["lab"][m], batch["unl"][m]], 0) for m in range(2)]
    return cmc_loss(model(xs), batch["ys"], 1, 1.0, terms=terms)


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def main():
    cfg = json.loads(sys.argv[1])
    threads = int(cfg.get("threads", 2))
    torch.set_num_threads(threads)
    torch.manual_seed(int(cfg.get("seed", 0)))
    model_kind = cfg["model"]
    size = int(cfg.get("size", 64))
    classes = int(cfg.get("classes", 4))
    widths = list(cfg.get("widths", [16, 32, 64, 128]))
    warmup = int(cfg.get("warmup", 2))
    runs = int(cfg.get("runs", 5))
    batch = host_batch(model_kind, size, classes)
    rss_before_model = proc_status_kib("VmRSS")
    model = build_twin(model_kind, classes, widths)

    def loss_fn():
        return twin_loss(model_kind, model, batch)

    params = param_count(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return float(loss.detach())

    losses = [step() for _ in range(warmup)]
    hwm_reset = reset_hwm()
    rss_at_reset = proc_status_kib("VmRSS")
    times = []
    busy0, own0 = cpu_ticks()
    w0 = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        losses.append(step())
        times.append((time.perf_counter() - t0) * 1000)
    peak = proc_status_kib("VmHWM")
    busy1, own1 = cpu_ticks()
    wall = time.perf_counter() - w0
    hz = os.sysconf("SC_CLK_TCK")
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": model_kind,
        "params": params,
        "step_runs_ms": times,
        "median_ms": statistics.median(times),
        "losses": losses,
        "rss_before_model_mib": rss_before_model / 1024,
        "rss_at_hwm_reset_mib": rss_at_reset / 1024,
        "peak_rss_mib": peak / 1024,
        "hwm_reset": hwm_reset,
        "peak_rss_increase_mib": (peak - rss_before_model) / 1024,
        "own_cores": (own1 - own0) / hz / wall,
        "other_cores": ((busy1 - busy0) - (own1 - own0)) / hz / wall,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
