#!/usr/bin/env python3
"""Generates the PyTorch golden files of tests/golden/ (one file per op family).

Run with the PyTorch venv (never needed by the tests themselves):

    /tmp/torchvenv/bin/python tests/gen_golden.py            # writes tests/golden/*.cmogold

Every case draws float32 inputs from a generator seeded by the case name (crc32), computes the op in
float64 from exactly those float32 values, and stores forward outputs, the upstream gradient of each
output that takes part in the loss (``dout.<name>``) and the gradient of
``loss = sum_o sum(out_o * dout_o)`` with respect to every input that requires grad
(``grad.<name>``), all cast to float32. Optimizer cases store the state after each step instead.

File format (read by tests/golden_io.ts):
    bytes 0..7   magic "CMOGOLD1"
    bytes 8..11  u32 LE: length L of the JSON header (padded with spaces so data starts 16-aligned)
    bytes 12..   JSON: {"format", "family", "generator", "torch", "cases": [{
                     "name", "op", "attrs", "inputs": [{"name", "requiresGrad"}], "outputs": [names],
                     "gradOutputs": [names], "tensors": {name: {"dtype", "shape", "offset"}}}]}
    then         raw little-endian data; each offset is relative to the start of the data section and
                 8-aligned. dtype is "f32" or "i32".
Tensor names inside a case: in.<input>, out.<output>, dout.<output>, grad.<input>; optimizer cases use
in.<state>, in.grad1/in.grad2 and out.<state>1/out.<state>2 (state after step 1 and step 2).
"""
from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

MAGIC = b"CMOGOLD1"
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
F64 = torch.float64


def gen_for(name: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(zlib.crc32(name.encode()))
    return g


def randn(g: torch.Generator, shape, scale=1.0, shift=0.0, away=0.0) -> torch.Tensor:
    """float32 normal values (as float64); with away > 0 every |value| >= away (kinks of relu/abs)."""
    x = torch.randn(shape, generator=g, dtype=torch.float32) * scale + shift
    if away > 0:
        x = torch.where(x.abs() < away, torch.sign(x + 1e-30) * (away + x.abs()), x)
    return x.to(F64)


def uniform(g: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    x = torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo
    return x.to(F64)


def labels(g: torch.Generator, shape, k: int) -> torch.Tensor:
    return torch.randint(0, k, shape, generator=g, dtype=torch.int32)


@dataclass
class Inp:
    name: str
    value: torch.Tensor
    requires_grad: bool = True


@dataclass
class Case:
    name: str
    op: str
    attrs: dict
    inputs: list[Inp]
    fn: Callable[..., dict]  # inputs (float64 / int32) in order -> {output name: tensor}
    grad_outputs: list[str] | None = None  # None = every float output
    tensors: dict = field(default_factory=dict)


def run_case(c: Case) -> Case:
    g = gen_for(c.name + "/dout")
    leaves = []
    for i in c.inputs:
        v = i.value.clone()
        if v.dtype == F64 and i.requires_grad:
            v.requires_grad_(True)
        leaves.append(v)
    outs = c.fn(*leaves)
    grad_outs = c.grad_outputs if c.grad_outputs is not None else [
        k for k, v in outs.items() if v.is_floating_point()]
    for i, inp in zip(leaves, c.inputs):
        c.tensors[f"in.{inp.name}"] = i.detach()
    for k, v in outs.items():
        c.tensors[f"out.{k}"] = v.detach()
    loss = None
    for k in grad_outs:
        d = randn(g, tuple(outs[k].shape))
        c.tensors[f"dout.{k}"] = d
        term = (outs[k] * d).sum()
        loss = term if loss is None else loss + term
    need = [(inp, leaf) for inp, leaf in zip(c.inputs, leaves) if leaf.requires_grad]
    if loss is not None and need:
        grads = torch.autograd.grad(loss, [leaf for _, leaf in need], allow_unused=True)
        for (inp, leaf), gr in zip(need, grads):
            c.tensors[f"grad.{inp.name}"] = torch.zeros_like(leaf) if gr is None else gr
    c.grad_outputs = grad_outs
    return c


# ----------------------------------------------------------------------------- op families

def conv_cases() -> list[Case]:
    out = []

    def conv(name, x_shape, w_shape, bias, stride=1, padding=0, dilation=1, x_grad=True):
        g = gen_for(name)
        fan_in = w_shape[1] * w_shape[2] * w_shape[3] * w_shape[4]
        inputs = [Inp("x", randn(g, x_shape), x_grad), Inp("w", randn(g, w_shape, fan_in ** -0.5))]
        if bias:
            inputs.append(Inp("b", randn(g, (w_shape[0],), 0.5)))

        def fn(x, w, b=None):
            return {"y": F.conv3d(x, w, b, stride=stride, padding=padding, dilation=dilation)}

        attrs = {"stride": stride, "padding": padding, "dilation": dilation, "hasBias": bias}
        out.append(Case(name, "conv3d", attrs, inputs, fn))

    conv("conv3d_k3_pad1_bias", (2, 3, 5, 6, 4), (4, 3, 3, 3, 3), True, padding=1)
    conv("conv3d_k3_pad1_c16_blocked", (1, 16, 4, 4, 4), (16, 16, 3, 3, 3), True, padding=1)
    conv("conv3d_k1_nobias_c16_to_8", (2, 16, 3, 4, 5), (8, 16, 1, 1, 1), False)
    conv("conv3d_k3_stride2_pad1", (1, 4, 6, 6, 5), (16, 4, 3, 3, 3), True, stride=2, padding=1)
    conv("conv3d_aniso_k133_s122_nobias", (1, 16, 3, 6, 6), (16, 16, 1, 3, 3), False,
         stride=[1, 2, 2], padding=[0, 1, 1])
    conv("conv3d_first_layer_c2_to_16_no_xgrad", (1, 2, 5, 5, 5), (16, 2, 3, 3, 3), True,
         padding=1, x_grad=False)
    conv("conv3d_dilation2_pad2", (1, 3, 6, 7, 6), (5, 3, 3, 3, 3), True, padding=2, dilation=2)
    conv("conv3d_k3_nopad_c32_to_16", (1, 32, 4, 4, 5), (16, 32, 3, 3, 3), True)
    return out


def conv_transpose_cases() -> list[Case]:
    out = []

    def deconv(name, x_shape, w_shape, bias, stride=2):
        g = gen_for(name)
        inputs = [Inp("x", randn(g, x_shape)), Inp("w", randn(g, w_shape, 0.3))]
        if bias:
            inputs.append(Inp("b", randn(g, (w_shape[1],), 0.5)))

        def fn(x, w, b=None):
            return {"y": F.conv_transpose3d(x, w, b, stride=stride)}

        out.append(Case(name, "convTranspose3d", {"stride": stride, "hasBias": bias}, inputs, fn))

    deconv("conv_transpose3d_k2_s2_bias", (2, 4, 3, 2, 3), (4, 3, 2, 2, 2), True)
    deconv("conv_transpose3d_k2_s2_c32_to_16", (1, 32, 2, 2, 2), (32, 16, 2, 2, 2), True)
    deconv("conv_transpose3d_k2_s2_nobias_c16_to_8", (1, 16, 2, 3, 2), (16, 8, 2, 2, 2), False)
    return out


def norm_cases() -> list[Case]:
    out = []

    def gn(name, shape, groups, eps=1e-5, op="groupNorm", activation=None, slope=0.01):
        g = gen_for(name)
        c = shape[1]
        inputs = [Inp("x", randn(g, shape, 2.0, 0.5)), Inp("gamma", randn(g, (c,), 0.3, 1.0)),
                  Inp("beta", randn(g, (c,), 0.3))]

        def fn(x, gamma, beta):
            y = F.group_norm(x, groups, gamma, beta, eps)
            if activation == "relu":
                y = F.relu(y)
            elif activation == "leaky_relu":
                y = F.leaky_relu(y, slope)
            return {"y": y}

        attrs = {"groups": groups, "eps": eps} if op == "groupNorm" else {"eps": eps}
        if activation is not None:
            attrs.update({"activation": activation, "slope": slope})
        out.append(Case(name, op, attrs, inputs, fn))

    gn("group_norm_c8_g4", (2, 8, 3, 4, 5), 4)
    gn("group_norm_c32_g8_blocked", (2, 32, 2, 3, 3), 8)
    gn("group_norm_c6_g1_eps1e-3", (1, 6, 3, 3, 2), 1, eps=1e-3)
    gn("instance_norm_c16_blocked", (2, 16, 3, 3, 4), 16, op="instanceNorm")
    gn("instance_norm_c3", (1, 3, 4, 4, 4), 3, op="instanceNorm")
    gn("instance_norm_c4_eps1e-3", (2, 4, 2, 3, 5), 4, eps=1e-3, op="instanceNorm")
    # Fused activations (the pre-activation is recomputed in backward).
    gn("instance_norm_leaky_relu_c16_blocked", (2, 16, 3, 3, 4), 16, op="instanceNorm",
       activation="leaky_relu", slope=0.01)
    gn("instance_norm_leaky_relu_slope0.2_c3", (1, 3, 4, 4, 4), 3, op="instanceNorm",
       activation="leaky_relu", slope=0.2)
    gn("group_norm_relu_c8_g4", (2, 8, 3, 4, 5), 4, activation="relu")
    return out


def unary_cases() -> list[Case]:
    out = []
    defs = {
        "relu": (lambda x: F.relu(x), {}, dict(away=0.02)),
        "leakyRelu": (lambda x: F.leaky_relu(x, 0.01), {"slope": 0.01}, dict(away=0.02)),
        "sigmoid": (lambda x: torch.sigmoid(x), {}, dict(scale=2.0)),
        "gelu": (lambda x: F.gelu(x), {}, dict(scale=2.0)),
        "exp": (lambda x: torch.exp(x), {}, dict()),
        "log": (lambda x: torch.log(x), {}, dict(lo=0.1, hi=3.0)),
        "tanh": (lambda x: torch.tanh(x), {}, dict(scale=1.5)),
        "sqrt": (lambda x: torch.sqrt(x), {}, dict(lo=0.05, hi=4.0)),
        "abs": (lambda x: torch.abs(x), {}, dict(away=0.02)),
        "neg": (lambda x: -x, {}, dict()),
    }
    for op, (f, attrs, gen) in defs.items():
        for suffix, shape in (("", (2, 3, 4, 5)), ("_c16_blocked", (1, 16, 2, 2, 3))):
            name = f"unary_{op}{suffix}"
            g = gen_for(name)
            if "lo" in gen:
                x = uniform(g, shape, gen["lo"], gen["hi"])
            else:
                x = randn(g, shape, gen.get("scale", 1.0), away=gen.get("away", 0.0))
            out.append(Case(name, op, dict(attrs), [Inp("x", x)], (lambda f: lambda x: {"y": f(x)})(f)))
    # leaky relu with another slope
    g = gen_for("unary_leakyRelu_slope0.2")
    out.append(Case("unary_leakyRelu_slope0.2", "leakyRelu", {"slope": 0.2},
                    [Inp("x", randn(g, (3, 7), away=0.02))], lambda x: {"y": F.leaky_relu(x, 0.2)}))
    return out


def binary_cases() -> list[Case]:
    out = []
    fns = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "maximum": lambda a, b: torch.maximum(a, b),
    }
    layouts = {
        "same": ((2, 3, 4, 5), (2, 3, 4, 5)),
        "per_channel": ((2, 3, 4, 5, 2), (1, 3, 1, 1, 1)),
        "row_vector": ((2, 3, 4), (4,)),
        "c16_blocked_per_channel": ((1, 16, 2, 3, 2), (1, 16, 1, 1, 1)),
        "c16_blocked_same": ((1, 16, 2, 2, 2), (1, 16, 2, 2, 2)),
        "left_broadcast": ((3, 1), (2, 3, 4)),
        "scalar_tensor": ((2, 3, 4), ()),
    }
    for op, f in fns.items():
        for lname, (sa, sb) in layouts.items():
            if op == "maximum" and lname not in ("same", "per_channel", "row_vector"):
                continue
            name = f"binary_{op}_{lname}"
            g = gen_for(name)
            a = randn(g, sa)
            b = uniform(g, sb, 0.5, 2.0) * torch.where(torch.rand(sb, generator=g) < 0.5, -1.0, 1.0).to(F64) \
                if op == "div" else randn(g, sb)
            if op == "maximum":
                # keep |a - b| away from 0 so the gradient is well defined
                bb = torch.broadcast_to(b, torch.broadcast_shapes(sa, sb))
                aa = torch.broadcast_to(a, bb.shape)
                assert (aa - bb).abs().min() > 1e-3, name
            out.append(Case(name, op, {}, [Inp("a", a), Inp("b", b)],
                            (lambda f: lambda a, b: {"y": f(a, b)})(f)))
    return out


def scalar_cases() -> list[Case]:
    out = []
    g = gen_for("affine_scalar")
    out.append(Case("affine_scalar", "affine", {"alpha": -1.75, "beta": 0.3},
                    [Inp("x", randn(g, (2, 3, 4)))], lambda x: {"y": -1.75 * x + 0.3}))
    g = gen_for("affine_scalar_c16_blocked")
    out.append(Case("affine_scalar_c16_blocked", "affine", {"alpha": 0.5, "beta": -2.0},
                    [Inp("x", randn(g, (1, 16, 2, 2, 2)))], lambda x: {"y": 0.5 * x - 2.0}))
    g = gen_for("mul_scalar")
    out.append(Case("mul_scalar", "mulScalar", {"s": 3.25}, [Inp("x", randn(g, (5, 4)))],
                    lambda x: {"y": x * 3.25}))
    g = gen_for("add_scalar")
    out.append(Case("add_scalar", "addScalar", {"s": -0.625}, [Inp("x", randn(g, (5, 4)))],
                    lambda x: {"y": x - 0.625}))
    return out


def shape_cases() -> list[Case]:
    out = []

    def concat(name, shapes, axis):
        g = gen_for(name)
        ins = [Inp(f"x{i}", randn(g, s)) for i, s in enumerate(shapes)]
        out.append(Case(name, "concat", {"axis": axis}, ins, lambda *xs: {"y": torch.cat(xs, axis)}))

    concat("concat_axis1", [(2, 3, 4), (2, 5, 4)], 1)
    concat("concat_axis1_c16_blocked", [(1, 16, 2, 2, 2), (1, 16, 2, 2, 2)], 1)
    concat("concat_axis1_mixed_c16_c3", [(1, 16, 2, 2, 2), (1, 3, 2, 2, 2)], 1)
    concat("concat_last_axis_three", [(2, 3, 2), (2, 3, 1), (2, 3, 4)], 2)

    def slc(name, shape, axis, start, length):
        g = gen_for(name)
        out.append(Case(name, "slice", {"axis": axis, "start": start, "length": length},
                        [Inp("x", randn(g, shape))],
                        lambda x: {"y": x.narrow(axis, start, length)}))

    slc("slice_axis1", (2, 6, 4), 1, 2, 3)
    slc("slice_axis1_c32_blocked", (1, 32, 2, 2, 2), 1, 16, 16)
    slc("slice_axis1_c16_partial", (1, 16, 2, 2, 2), 1, 3, 5)
    slc("slice_axis4", (1, 2, 3, 3, 5), 4, 1, 3)

    g = gen_for("split_axis1")
    out.append(Case("split_axis1", "split", {"axis": 1, "sizes": [2, 5]}, [Inp("x", randn(g, (2, 7, 3)))],
                    lambda x: dict(zip(["y0", "y1"], torch.split(x, [2, 5], 1)))))
    g = gen_for("expand_broadcast")
    out.append(Case("expand_broadcast", "expand", {"shape": [2, 3, 4]}, [Inp("x", randn(g, (1, 3, 1)))],
                    lambda x: {"y": x.expand(2, 3, 4)}))
    g = gen_for("expand_new_leading_dims")
    out.append(Case("expand_new_leading_dims", "expand", {"shape": [2, 3, 4]}, [Inp("x", randn(g, (4,)))],
                    lambda x: {"y": x.expand(2, 3, 4)}))
    g = gen_for("reshape_infer")
    out.append(Case("reshape_infer", "reshape", {"shape": [6, -1]}, [Inp("x", randn(g, (2, 3, 4)))],
                    lambda x: {"y": x.reshape(6, -1)}))
    g = gen_for("reshape_c16_blocked_flatten")
    out.append(Case("reshape_c16_blocked_flatten", "reshape", {"shape": [1, 16, -1]},
                    [Inp("x", randn(g, (1, 16, 2, 3, 2)))], lambda x: {"y": x.reshape(1, 16, -1)}))

    def perm(name, shape, order):
        g = gen_for(name)
        out.append(Case(name, "permute", {"order": order}, [Inp("x", randn(g, shape))],
                        lambda x: {"y": x.permute(*order)}))

    perm("permute_last_two", (2, 3, 4), [0, 2, 1])
    perm("permute_reverse_4d_size1", (2, 3, 1, 4), [3, 2, 1, 0])
    perm("permute_c16_blocked_channels_last", (1, 16, 2, 3, 2), [0, 2, 3, 4, 1])
    perm("permute_6d_windows", (2, 3, 2, 2, 3, 2), [0, 2, 4, 1, 3, 5])
    return out


def matmul_cases() -> list[Case]:
    out = []

    def mm(name, sa, sb, trans_a=False, trans_b=False):
        g = gen_for(name)

        def fn(a, b):
            aa = a.transpose(-1, -2) if trans_a else a
            bb = b.transpose(-1, -2) if trans_b else b
            return {"y": torch.matmul(aa, bb)}

        out.append(Case(name, "matmul", {"transA": trans_a, "transB": trans_b},
                        [Inp("a", randn(g, sa)), Inp("b", randn(g, sb))], fn))

    mm("matmul_batched", (2, 3, 4), (2, 4, 5))
    mm("matmul_trans_a", (2, 4, 3), (2, 4, 5), trans_a=True)
    mm("matmul_trans_b", (2, 3, 4), (2, 5, 4), trans_b=True)
    mm("matmul_trans_ab", (2, 4, 3), (2, 5, 4), True, True)
    mm("matmul_rank2", (3, 4), (4, 5))
    mm("matmul_rank2_trans_b_gram", (16, 12), (16, 12), trans_b=True)
    mm("matmul_batch_broadcast", (1, 3, 4), (2, 4, 5))
    return out


def softmax_cases() -> list[Case]:
    out = []

    def sm(name, shape, axis):
        g = gen_for(name)
        out.append(Case(name, "softmax", {"axis": axis}, [Inp("x", randn(g, shape, 2.0))],
                        lambda x: {"y": torch.softmax(x, axis)}))

    sm("softmax_axis1", (2, 4, 3, 3), 1)
    sm("softmax_last_axis", (2, 3, 5), 2)
    sm("softmax_axis1_c16_blocked", (1, 16, 2, 2, 2), 1)
    sm("softmax_last_axis_5d", (1, 2, 2, 3, 6), 4)
    return out


def reduce_cases() -> list[Case]:
    out = []

    def red(name, op, shape, axes, keep=False):
        g = gen_for(name)
        x = randn(g, shape)
        dims = list(range(len(shape))) if axes == "all" else axes

        def fn(x):
            if op == "sum":
                y = x.sum(dim=dims, keepdim=keep)
            elif op == "mean":
                y = x.mean(dim=dims, keepdim=keep)
            else:
                y = torch.amax(x, dim=dims, keepdim=keep)
            return {"y": y}

        out.append(Case(name, op, {"axes": axes, "keepDims": keep}, [Inp("x", x)], fn))

    red("sum_axis1", "sum", (2, 3, 4, 5), [1])
    red("sum_axes02_keep", "sum", (2, 3, 4, 5), [0, 2], True)
    red("sum_all", "sum", (2, 3, 4), "all")
    red("sum_spatial_c16_blocked", "sum", (2, 16, 2, 3, 2), [2, 3, 4], True)
    red("mean_spatial", "mean", (2, 3, 2, 3, 2), [2, 3, 4])
    red("mean_all", "mean", (3, 4, 5), "all")
    red("mean_axis0_c16_blocked", "mean", (2, 16, 2, 2, 2), [0], True)
    red("max_axis1", "max", (2, 5, 4), [1])
    red("max_axes23_keep", "max", (2, 3, 4, 5), [2, 3], True)
    red("max_all", "max", (4, 6), "all")
    return out


def pool_cases() -> list[Case]:
    out = []

    def pool(name, shape, od):
        g = gen_for(name)
        out.append(Case(name, "adaptiveAvgPool3d", {"outDims": od}, [Inp("x", randn(g, shape))],
                        lambda x: {"y": F.adaptive_avg_pool3d(x, od)}))

    pool("adaptive_avg_pool3d_nondivisible", (1, 2, 5, 7, 6), [2, 3, 4])
    pool("adaptive_avg_pool3d_c16_blocked", (2, 16, 4, 5, 3), [3, 2, 2])
    pool("adaptive_avg_pool3d_global", (2, 3, 3, 4, 5), [1, 1, 1])
    pool("adaptive_avg_pool3d_upsizing", (1, 2, 2, 3, 2), [3, 4, 2])
    return out


def l2_cases() -> list[Case]:
    out = []

    def l2(name, shape, axis, eps=1e-12, scale=1.0):
        g = gen_for(name)
        out.append(Case(name, "l2Normalize", {"axis": axis, "eps": eps}, [Inp("x", randn(g, shape, scale))],
                        lambda x: {"y": F.normalize(x, p=2.0, dim=axis, eps=eps)}))

    l2("l2_normalize_axis1", (2, 8, 3), 1)
    l2("l2_normalize_axis1_c16_blocked", (1, 16, 2, 2, 2), 1)
    l2("l2_normalize_last_axis", (3, 5), 1)
    l2("l2_normalize_eps_active", (2, 4), 1, eps=0.5, scale=0.05)  # norm < eps: y = x / eps
    return out


def loss_cases() -> list[Case]:
    out = []

    def ce(name, lshape, lab_shape, k, ignore, n_ignored):
        g = gen_for(name)
        logits = randn(g, lshape, 1.5)
        lab = labels(g, lab_shape, k)
        flat = lab.view(-1)
        idx = torch.randperm(flat.numel(), generator=g)[:n_ignored]
        flat[idx] = ignore

        def fn(x, y):
            yy = y.long()
            if yy.dim() == x.dim():
                yy = yy.squeeze(1)
            return {"loss": F.cross_entropy(x, yy, ignore_index=ignore), "probs": torch.softmax(x, 1)}

        attrs = {} if ignore == -100 else {"ignoreIndex": ignore}
        out.append(Case(name, "softmaxCrossEntropy", attrs,
                        [Inp("logits", logits), Inp("labels", lab, False)], fn, grad_outputs=["loss"]))

    ce("softmax_cross_entropy_ignore_default", (2, 4, 3, 3, 2), (2, 3, 3, 2), 4, -100, 5)
    ce("softmax_cross_entropy_c16_blocked_ignore255_n1", (1, 16, 2, 2, 2), (1, 1, 2, 2, 2), 16, 255, 2)
    ce("softmax_cross_entropy_2d", (3, 5), (3,), 5, -100, 1)

    def dice(name, pshape, soft, channel_dim=False):
        g = gen_for(name)
        probs = torch.softmax(randn(g, pshape, 2.0), 1)
        probs = probs.to(torch.float32).to(F64)
        if soft:
            t = torch.softmax(randn(g, pshape, 3.0), 1).to(torch.float32).to(F64)
        else:
            lshape = (pshape[0], 1) + tuple(pshape[2:]) if channel_dim else (pshape[0],) + tuple(pshape[2:])
            t = labels(g, lshape, pshape[1])
        k = pshape[1]

        def fn(p, t):
            if t.dtype == torch.int32:
                tt = t.long()
                if tt.dim() == p.dim():
                    tt = tt.squeeze(1)
                oh = F.one_hot(tt, k).movedim(-1, 1).to(F64)
            else:
                oh = t
            dims = [0] + list(range(2, p.dim()))
            return {"stats": torch.stack([(p * oh).sum(dims), p.sum(dims), oh.sum(dims)])}

        out.append(Case(name, "diceStats", {}, [Inp("probs", probs), Inp("target", t, False)], fn))

    dice("dice_stats_labels", (2, 3, 4, 4, 2), False)
    dice("dice_stats_labels_n1", (1, 4, 3, 3, 3), False, channel_dim=True)
    dice("dice_stats_soft", (2, 3, 3, 4, 2), True)
    dice("dice_stats_labels_c16_blocked", (1, 16, 2, 2, 2), False)
    return out


def optim_cases() -> list[Case]:
    """Two optimizer steps from torch.optim (float64), stored as explicit before/after states."""
    out = []

    def states(name, op, attrs, shape, make_opt, state_names):
        g = gen_for(name)
        p0 = randn(g, shape)
        g1, g2 = randn(g, shape), randn(g, shape)
        p = p0.clone().requires_grad_(True)
        opt = make_opt([p])
        c = Case(name, op, attrs, [], lambda: {})
        c.tensors["in.param"] = p0
        for s in state_names:
            c.tensors[f"in.{s}"] = torch.zeros(shape, dtype=F64)
        c.tensors["in.grad1"], c.tensors["in.grad2"] = g1, g2
        for step, gr in ((1, g1), (2, g2)):
            p.grad = gr.clone()
            opt.step()
            c.tensors[f"out.param{step}"] = p.detach().clone()
            st = opt.state[p]
            key = {"momentumBuf": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq"}
            for s in state_names:
                c.tensors[f"out.{s}{step}"] = st[key[s]].detach().clone()
        c.grad_outputs = []
        out.append(c)

    sgd = {"lr": 0.1, "momentum": 0.9, "weightDecay": 1e-3, "nesterov": True}
    states("sgd_nesterov_two_steps", "sgdUpdate", sgd, (3, 4),
           lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
           ["momentumBuf"])
    states("sgd_nesterov_two_steps_c16_weight", "sgdUpdate", sgd, (4, 16, 1, 1, 2),
           lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
           ["momentumBuf"])
    plain = {"lr": 0.05, "momentum": 0.5, "weightDecay": 0.0, "nesterov": False}
    states("sgd_momentum_two_steps", "sgdUpdate", plain, (7,),
           lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5), ["momentumBuf"])
    adamw = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weightDecay": 0.05}
    states("adamw_two_steps_wd", "adamwUpdate", adamw, (4, 5),
           lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
           ["m", "v"])
    states("adamw_two_steps_c16_weight", "adamwUpdate", {**adamw, "beta1": 0.8, "beta2": 0.99},
           (2, 16, 1, 1, 1),
           lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.05),
           ["m", "v"])

    # EMA: ema = decay * ema + (1 - decay) * param, two steps with two parameter values.
    name = "ema_two_steps"
    g = gen_for(name)
    e0, q1, q2 = randn(g, (3, 5)), randn(g, (3, 5)), randn(g, (3, 5))
    c = Case(name, "emaUpdate", {"decay": 0.99}, [], lambda: {})
    c.tensors.update({"in.ema": e0, "in.param1": q1, "in.param2": q2})
    e1 = 0.99 * e0 + 0.01 * q1
    e2 = 0.99 * e1 + 0.01 * q2
    c.tensors.update({"out.ema1": e1, "out.ema2": e2})
    c.grad_outputs = []
    out.append(c)
    return out


def no_grad_cases() -> list[Case]:
    """Ops without gradients (argmax, equal): forward parity only."""
    out = []

    def am(name, shape, axis, keep):
        g = gen_for(name)
        out.append(Case(name, "argmax", {"axis": axis, "keepDims": keep}, [Inp("x", randn(g, shape), False)],
                        lambda x: {"y": torch.argmax(x, axis, keepdim=keep).to(torch.int32)}, grad_outputs=[]))

    am("argmax_axis1", (2, 5, 3, 2), 1, False)
    am("argmax_axis1_c16_blocked_keep", (1, 16, 2, 2, 3), 1, True)
    am("argmax_last_axis", (3, 7), 1, False)

    def eq(name, sa, sb):
        g = gen_for(name)
        a = torch.randint(0, 3, sa, generator=g).to(F64)
        b = torch.randint(0, 3, sb, generator=g).to(F64)
        out.append(Case(name, "equal", {}, [Inp("a", a, False), Inp("b", b, False)],
                        lambda a, b: {"y": (a == b).to(F64)}, grad_outputs=[]))

    eq("equal_same_shape", (2, 3, 4), (2, 3, 4))
    eq("equal_broadcast_row", (2, 3, 4), (4,))
    return out


FAMILIES: dict[str, Callable[[], list[Case]]] = {
    "no_grad": no_grad_cases,
    "conv3d": conv_cases,
    "conv_transpose3d": conv_transpose_cases,
    "norm": norm_cases,
    "unary": unary_cases,
    "binary": binary_cases,
    "scalar": scalar_cases,
    "shape": shape_cases,
    "matmul": matmul_cases,
    "softmax": softmax_cases,
    "reduce": reduce_cases,
    "pool": pool_cases,
    "l2_normalize": l2_cases,
    "losses": loss_cases,
    "optim": optim_cases,
}


def to_bytes(t: torch.Tensor) -> tuple[str, bytes]:
    if t.dtype in (torch.int32, torch.int64):
        return "i32", t.to(torch.int32).contiguous().numpy().astype("<i4").tobytes()
    return "f32", t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()


def write_family(family: str, cases: list[Case]) -> int:
    data = bytearray()
    header_cases = []
    for c in cases:
        table = {}
        for name, t in c.tensors.items():
            dtype, raw = to_bytes(t)
            while len(data) % 8:
                data.append(0)
            table[name] = {"dtype": dtype, "shape": list(t.shape), "offset": len(data)}
            data += raw
        header_cases.append({
            "name": c.name, "op": c.op, "attrs": c.attrs,
            "inputs": [{"name": i.name, "requiresGrad": bool(i.requires_grad and i.value.is_floating_point())}
                       for i in c.inputs],
            "outputs": [k[4:] for k in c.tensors if k.startswith("out.")] if c.inputs else [],
            "gradOutputs": list(c.grad_outputs or []),
            "tensors": table,
        })
    header = json.dumps({"format": "CMOGOLD1", "family": family, "generator": "tests/gen_golden.py",
                         "torch": torch.__version__, "cases": header_cases}, separators=(",", ":"))
    hb = header.encode()
    pad = (-(len(MAGIC) + 4 + len(hb))) % 16
    hb += b" " * pad
    blob = MAGIC + struct.pack("<I", len(hb)) + hb + bytes(data)
    with open(os.path.join(OUT_DIR, f"{family}.cmogold"), "wb") as f:
        f.write(blob)
    return len(blob)


def main() -> None:
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    n = 0
    for family, make in FAMILIES.items():
        cases = [c if not c.inputs else run_case(c) for c in make()]
        names = [c.name for c in cases]
        assert len(names) == len(set(names)), f"duplicate case names in {family}"
        size = write_family(family, cases)
        total += size
        n += len(cases)
        print(f"{family:18s} {len(cases):3d} cases {size / 1024:8.1f} KiB")
    print(f"{'total':18s} {n:3d} cases {total / 1024:8.1f} KiB -> {OUT_DIR}")
    if total > 2 * 1024 * 1024:
        sys.exit("golden files exceed 2 MB; shrink the shapes")


if __name__ == "__main__":
    main()
