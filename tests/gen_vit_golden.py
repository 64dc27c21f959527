#!/usr/bin/env python3
"""Golden values for one SAM-Med3D-style ViT block (src/nn/vit.ts VitBlock), written with the
reference safetensors library so the test also checks our reader against its writer.

    /tmp/torchvenv/bin/python tests/gen_vit_golden.py     # writes tests/golden/vit_block.safetensors

The block is SAM-Med3D's Block3D without relative positions or windows: x = x + proj(attn(norm1(x)));
x = x + lin2(gelu(lin1(norm2(x)))), LayerNorm eps 1e-6, qkv laid out as (3, heads, head_dim). It is
evaluated in float64 from float32 parameters and input; stored: the parameters under "block.",
the input "x" [B, D, H, W, C], the output "y", the upstream gradient "dy" and the gradients of
sum(y * dy) ("grad.x", "grad.block.<param>"), plus "half.f16"/"half.bf16" copies of a few values
and "half.values" (their float32 originals) to check F16/BF16 decoding.
"""
import os

import torch
from safetensors.torch import save_file
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # as SAM-Med3D's image_encoder3D.Attention (use_rel_pos=False)
        B, D, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, D * H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, D * H * W, -1).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).view(B, self.num_heads, D, H, W, -1).permute(0, 2, 3, 4, 1, 5).reshape(B, D, H, W, -1)
        return self.proj(x)


class MLPBlock(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class Block3D(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def main():
    g = torch.Generator().manual_seed(1234)
    dim, heads, ratio = 8, 2, 2.0
    block = Block3D(dim, heads, ratio)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.4)
    block = block.double()
    x = torch.randn((2, 2, 2, 3, dim), generator=g, dtype=torch.float32).double().requires_grad_(True)
    y = block(x)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float32).double()
    (y * dy).sum().backward()
    out = {f"block.{n}": p.detach().float().contiguous() for n, p in block.named_parameters()}
    out["x"] = x.detach().float()
    out["y"] = y.detach().float()
    out["dy"] = dy.float()
    out["grad.x"] = x.grad.float()
    for n, p in block.named_parameters():
        out[f"grad.block.{n}"] = p.grad.float().contiguous()
    vals = torch.tensor([1.0, -2.0, 0.333251953125, 65504.0, 2.0**-24, 3.140625, -123.5], dtype=torch.float32)
    out["half.values"] = vals
    out["half.f16"] = vals.half()
    out["half.bf16"] = vals[[0, 1, 5, 6]].bfloat16()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "vit_block.safetensors")
    save_file(out, path, metadata={"generator": "tests/gen_vit_golden.py", "torch": torch.__version__})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
