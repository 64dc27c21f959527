#!/usr/bin/env python3
"""Golden values for SAM-Med3D's attention details in src/nn/vit.ts: the decomposed relative
position bias and windowed attention of Block3D (segment_anything/modeling/image_encoder3D.py).

    /tmp/torchvenv/bin/python tests/gen_vit_relpos_golden.py   # writes tests/golden/vit_relpos.safetensors

A small re-implementation in float64, written from the public code's math:
  - block: x = x + attn(norm1(x)) [windowed]; x = x + lin2(gelu(lin1(norm2(x)))), LayerNorm eps 1e-6;
  - attention: per head, logits = (q / sqrt(hd)) k^T + bias(q) with the *unscaled* q, where
    bias[t, (kd, kh, kw)] = q_t . (Rd[td, kd] + Rh[th, kh] + Rw[tw, kw]) and R_a[i, j] =
    rel_pos_a[i - j + s_a - 1] (tables [2 s_a - 1, hd] shared by the heads, s_a the attention grid:
    the window in windowed blocks, the token grid in global ones);
  - windows: the normalised tokens zero-padded at the end of each axis to a multiple of the
    window, cut into windows (batch-major, windows d-major), attention per window, then the inverse
    permutation and crop. SAM-Med3D's unpartition views the padded grid as (Hp, Wp, Dp): the same
    as (Dp, Hp, Wp) for a cubic padded grid (checked on case "cube"; SAM-Med3D's 8^3 grid with
    window 14 is one), not the inverse permutation otherwise (case "win" fails with a shape error).

Cases (prefix "<case>."): "win" (grid 2x3x5, window 2: 6 windows, padding on H and W), "cube" (grid
2x2x3, window 3: one padded window), "glob" (global attention with relative positions, grid 2x3x4),
"aniso" (grid 2x3x4, per-axis window 1x2x3, our extension). Each stores the parameters ("<case>.block.*",
random, tables included), "x" [B, N, C], "y", "dy" and the gradients of sum(y * dy) ("grad.x",
"grad.block.<param>"), and "grid"/"window" as float vectors. "interp.*": a table resampled as
get_rel_pos does (F.interpolate, linear) to more and to fewer rows.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn


def rel_index(s):
    """[s, s] table row of the relative position i - j (offset by s - 1)."""
    i = torch.arange(s)
    return i[:, None] - i[None, :] + (s - 1)


def rel_bias(q, size, tables):
    """q [B, T, c] on grid size (T = prod(size)) -> [B, T, T] decomposed relative position bias."""
    b, t, c = q.shape
    d, h, w = size
    rd, rh, rw = (tab[rel_index(s)] for tab, s in zip(tables, size))  # each [s, s, c]
    g = q.reshape(b, d, h, w, c)
    bd = torch.einsum("bdhwc,dkc->bdhwk", g, rd)[..., :, None, None]
    bh = torch.einsum("bdhwc,hkc->bdhwk", g, rh)[..., None, :, None]
    bw = torch.einsum("bdhwc,wkc->bdhwk", g, rw)[..., None, None, :]
    return (bd + bh + bw).reshape(b, t, t)


class Attention(nn.Module):
    def __init__(self, dim, heads, size):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        for a, s in zip("dhw", size):
            setattr(self, f"rel_pos_{a}", nn.Parameter(torch.zeros(2 * s - 1, self.hd)))

    def forward(self, x):  # x [B', d, h, w, C]
        b, d, h, w, c = x.shape
        t = d * h * w
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, t, self.hd).unbind(0)
        logits = (q * self.hd**-0.5) @ k.transpose(-2, -1)
        logits = logits + rel_bias(q, (d, h, w), (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w))
        o = logits.softmax(-1) @ v
        o = o.view(b, self.heads, d, h, w, self.hd).permute(0, 2, 3, 4, 1, 5).reshape(b, d, h, w, c)
        return self.proj(o)


def partition(x, win):
    b, d, h, w, c = x.shape
    pads = [(-n) % s for n, s in zip((d, h, w), win)]
    x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    dp, hp, wp = d + pads[0], h + pads[1], w + pads[2]
    x = x.view(b, dp // win[0], win[0], hp // win[1], win[1], wp // win[2], win[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, *win, c), (dp, hp, wp)


def unpartition(y, win, padded, grid, b, sam_view=False):
    dp, hp, wp = padded
    x = y.view(b, dp // win[0], hp // win[1], wp // win[2], *win, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(b, hp, wp, dp, -1) if sam_view else x.reshape(b, dp, hp, wp, -1)
    return x[:, : grid[0], : grid[1], : grid[2]]


class Block(nn.Module):
    def __init__(self, dim, heads, grid, window):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, window or grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.lin1 = nn.Linear(dim, 2 * dim)
        self.mlp.act = nn.GELU()
        self.mlp.lin2 = nn.Linear(2 * dim, dim)
        self.sam_view = False

    def forward(self, x):  # x [B, D, H, W, C]
        h = self.norm1(x)
        if self.window:
            b, grid = x.shape[0], x.shape[1:4]
            h, padded = partition(h, self.window)
            h = unpartition(self.attn(h), self.window, padded, grid, b, self.sam_view)
        else:
            h = self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


def case(out, name, g, batch, grid, window, dim=8, heads=2):
    block = Block(dim, heads, grid, window)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.4)
    block = block.double()
    x = torch.randn((batch, *grid, dim), generator=g, dtype=torch.float32).double().requires_grad_(True)
    y = block(x)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float32).double()
    (y * dy).sum().backward()
    if name == "cube":  # SAM-Med3D's literal unpartition view agrees on a cubic padded grid
        block.sam_view = True
        assert torch.equal(block(x), y)
    n = grid[0] * grid[1] * grid[2]
    for k, p in block.named_parameters():
        out[f"{name}.block.{k}"] = p.detach().float().contiguous()
        out[f"{name}.grad.block.{k}"] = p.grad.float().contiguous()
    out[f"{name}.x"] = x.detach().float().reshape(batch, n, dim)
    out[f"{name}.y"] = y.detach().float().reshape(batch, n, dim)
    out[f"{name}.dy"] = dy.float().reshape(batch, n, dim)
    out[f"{name}.grad.x"] = x.grad.float().reshape(batch, n, dim)
    out[f"{name}.grid"] = torch.tensor(grid, dtype=torch.float32)
    out[f"{name}.window"] = torch.tensor(window or (0, 0, 0), dtype=torch.float32)


def main():
    g = torch.Generator().manual_seed(4321)
    out = {}
    case(out, "win", g, 2, (2, 3, 5), (2, 2, 2))
    case(out, "cube", g, 1, (2, 2, 3), (3, 3, 3))
    case(out, "glob", g, 1, (2, 3, 4), None)
    case(out, "aniso", g, 1, (2, 3, 4), (1, 2, 3))
    src = torch.randn((5, 3), generator=g, dtype=torch.float32)
    out["interp.src"] = src
    for key, n in (("up", 9), ("down", 3)):
        r = F.interpolate(src.double().T[None], size=n, mode="linear")[0].T
        out[f"interp.{key}"] = r.float().contiguous()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "vit_relpos.safetensors")
    save_file(out, path, metadata={"generator": "tests/gen_vit_relpos_golden.py", "torch": torch.__version__})
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
