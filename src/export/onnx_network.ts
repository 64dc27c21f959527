/**
 * The inference graph of a comodal network as ONNX: the same computation as `MethodModel.predict`
 * (students only; deep-supervision heads are dropped, as inference never calls them).
 *
 * Graph inputs are one float32 image per input modality, [N, 1, D, H, W], named "image_<modality>"
 * (early fusion concatenates them inside the graph); outputs are one logits tensor per output
 * modality, [N, K, D, H, W], named "logits_<modality>". N is symbolic; so are D, H and W for the
 * U-Net backbone (multiples of the plan's total downsampling, as the training patch size always is),
 * while the ViT backbone's learned position embedding fixes them to the training patch size.
 *
 * Weights are stored as initializers named by the parameters' dotted names
 * ("encoders.0.levels.1.conv2.conv.weight").
 *
 * @module
 */
import { noGrad, type Tensor, tidy } from "../engine.ts";
import { CmcNet, type FusionLayer, type MiaBlock } from "../nn/cmc.ts";
import type { Conv3d, ConvBlock, ConvTranspose3d, Norm3d } from "../nn/layers.ts";
import type { Module } from "../nn/module.ts";
import { UNet, type UNetDecoder, UNetEncoder } from "../nn/unet.ts";
import {
  type Attention,
  type ChannelLayerNorm,
  type LayerNorm,
  type Linear,
  relPosTables,
  type VitBlock,
  VitEncoder,
  VitUNet,
} from "../nn/vit.ts";
import type { Triple } from "../nn/layers.ts";
import type { MethodModel } from "../train/methods.ts";
import { type Dim, GraphBuilder } from "./onnx_graph.ts";

/**
 * The [s_0 + s_1 + s_2, T] 0/1 matrix whose row (a, i) marks the keys with coordinate i along axis a
 * (keys d-major on the grid): per-axis relative-position terms side by side times it give the bias
 * over all keys, term_d[kd] + term_h[kh] + term_w[kw] (one MatMul in the graph).
 */
function keyExpansion(size: Triple): { data: Float32Array; dims: number[] } {
  const [d, h, w] = size;
  const t = d * h * w;
  const e = new Float32Array((d + h + w) * t);
  for (let k = 0; k < t; k++) {
    const kd = Math.floor(k / (h * w)), kh = Math.floor(k / w) % h, kw = k % w;
    e[kd * t + k] = 1;
    e[(d + kh) * t + k] = 1;
    e[(d + h + kw) * t + k] = 1;
  }
  return { data: e, dims: [d + h + w, t] };
}

/** A graph input or output and the modality it belongs to. */
export interface OnnxPort {
  name: string;
  modality: string;
}

export interface OnnxNetwork {
  graph: GraphBuilder;
  inputs: OnnxPort[];
  outputs: OnnxPort[];
  /** Output channels (classes, or regions with region outputs). */
  channels: number;
}

const NORM_EPS = 1e-5;
const LEAKY_SLOPE = 0.01;

/** Emits the layers of one network into a graph, weights named by their parameter names. */
class Emitter {
  readonly #names = new Map<Tensor, string>();
  readonly #emitted = new Map<string, string>();

  constructor(readonly g: GraphBuilder, root: Module) {
    for (const [n, p] of root.namedParameters()) this.#names.set(p, n);
  }

  /** The initializer of parameter `t` (reshaped to `dims` when given). */
  param(t: Tensor, dims: number[] = [...t.shape]): string {
    const base = this.#names.get(t);
    if (!base) throw new Error("ONNX export: a layer uses a tensor that is not a model parameter");
    const key = `${base}|${dims.join(",")}`;
    const have = this.#emitted.get(key);
    if (have) return have;
    const name = dims.join() === t.shape.join() ? base : `${base}.reshaped`;
    this.g.float(name, t.toArray() as Float32Array, dims);
    this.#emitted.set(key, name);
    return name;
  }

  conv(c: Conv3d, x: string): string {
    const ins = [x, this.param(c.weight)];
    if (c.bias) ins.push(this.param(c.bias));
    return this.g.op("Conv", ins, {
      kernel_shape: [...c.kernel],
      strides: [...c.stride],
      pads: [...c.padding, ...c.padding],
      dilations: [1, 1, 1],
    }, "conv");
  }

  convTranspose(c: ConvTranspose3d, x: string): string {
    const ins = [x, this.param(c.weight)];
    if (c.bias) ins.push(this.param(c.bias));
    return this.g.op("ConvTranspose", ins, {
      kernel_shape: [...c.stride],
      strides: [...c.stride],
    }, "up");
  }

  norm(n: Norm3d, x: string, activation: "none" | "relu" | "leaky_relu"): string {
    const eps = { float: NORM_EPS };
    let y: string;
    if (n.kind === "instance") {
      y = this.g.op("InstanceNormalization", [x, this.param(n.gamma), this.param(n.beta)], {
        epsilon: eps,
      }, "norm");
    } else {
      // Group norm: instance norm over [N, G, rest], back to x's shape, then the per-channel affine.
      const G = n.groups;
      const grouped = this.g.op("Reshape", [x, this.g.int64("groups", [0, G, -1])]);
      const ones = this.g.constant("ones", new Float32Array(G).fill(1), [G]);
      const zeros = this.g.constant("zeros", new Float32Array(G), [G]);
      const normed = this.g.op("InstanceNormalization", [grouped, ones, zeros], { epsilon: eps });
      const back = this.g.op("Reshape", [normed, this.g.op("Shape", [x])]);
      const C = n.channels;
      const scaled = this.g.op("Mul", [back, this.param(n.gamma, [C, 1, 1, 1])]);
      y = this.g.op("Add", [scaled, this.param(n.beta, [C, 1, 1, 1])], {}, "norm");
    }
    if (activation === "leaky_relu") {
      return this.g.op("LeakyRelu", [y], { alpha: { float: LEAKY_SLOPE } }, "act");
    }
    return activation === "relu" ? this.g.op("Relu", [y], {}, "act") : y;
  }

  block(b: ConvBlock, x: string): string {
    return this.norm(b.norm, this.conv(b.conv, x), b.activation);
  }

  encoder(e: Module, x: string): { skips: string[]; deep: string } {
    if (e instanceof VitEncoder) return this.vitEncoder(e, x);
    if (!(e instanceof UNetEncoder)) {
      throw new Error(`ONNX export: cannot export an encoder of type ${e.constructor.name}`);
    }
    const skips: string[] = [];
    let h = x;
    e.levels.items.forEach((level, i) => {
      h = this.block(level.second, this.block(level.first, h));
      if (i < e.levels.length - 1) skips.push(h);
    });
    return { skips, deep: h };
  }

  /** A constant float32 scalar. */
  scalar(v: number): string {
    return this.g.constant("c", Float32Array.of(v), []);
  }

  /** x W^T + b on the last axis (PyTorch's Linear; W [out, in]). */
  linear(l: Linear, x: string): string {
    const wt = this.g.op("Transpose", [this.param(l.weight)], { perm: [1, 0] });
    const y = this.g.op("MatMul", [x, wt]);
    return l.bias ? this.g.op("Add", [y, this.param(l.bias)], {}, "linear") : y;
  }

  /** The exact (erf) GELU: 0.5 x (1 + erf(x / sqrt 2)). */
  gelu(x: string): string {
    const e = this.g.op("Erf", [this.g.op("Mul", [x, this.scalar(Math.SQRT1_2)])]);
    const onePlus = this.g.op("Add", [e, this.scalar(1)]);
    return this.g.op("Mul", [this.g.op("Mul", [x, onePlus]), this.scalar(0.5)], {}, "gelu");
  }

  layerNorm(n: LayerNorm, x: string): string {
    return this.g.op("LayerNormalization", [x, this.param(n.weight), this.param(n.bias)], {
      axis: -1,
      epsilon: { float: n.eps },
    }, "ln");
  }

  /** SAM's LayerNorm3d: per voxel over the channels of [N, C, ...]. */
  channelLayerNorm(n: ChannelLayerNorm, x: string): string {
    const mu = this.g.op("ReduceMean", [x], { axes: [1], keepdims: 1 });
    const d = this.g.op("Sub", [x, mu]);
    const v = this.g.op("ReduceMean", [this.g.op("Mul", [d, d])], { axes: [1], keepdims: 1 });
    const y = this.g.op("Div", [d, this.g.op("Sqrt", [this.g.op("Add", [v, this.scalar(n.eps)])])]);
    const C = n.channels;
    const scaled = this.g.op("Mul", [y, this.param(n.weight, [C, 1, 1, 1])]);
    return this.g.op("Add", [scaled, this.param(n.bias, [C, 1, 1, 1])], {}, "cln");
  }

  /** Tokens [N, T, C] on `grid` as a feature map [N, C, ...grid]. */
  tokensToMap(t: string, grid: Triple, c: number): string {
    const cm = this.g.op("Transpose", [t], { perm: [0, 2, 1] });
    return this.g.op("Reshape", [cm, this.g.int64("map", [0, c, ...grid])]);
  }

  /** A 1x1x1 convolution without bias by its weight [out, in, 1, 1, 1]. */
  pointwise(w: Tensor, x: string): string {
    return this.g.op("Conv", [x, this.param(w)], { kernel_shape: [1, 1, 1] }, "proj");
  }

  attention(a: Attention, x: string): string {
    const qkv = this.linear(a.qkv, x);
    const hd = a.headDim;
    const last = this.g.int64("axis", [2]);
    const part = (start: number) =>
      this.g.op("Slice", [
        qkv,
        this.g.int64("start", [start]),
        this.g.int64("end", [start + hd]),
        last,
      ]);
    let rel: { rows: string; keys: string } | null = null;
    if (a.relSize) {
      // The gathered tables depend on the weights only: computed here, stored as constants.
      const size = a.relSize;
      const { rows, rowDims } = tidy(() =>
        noGrad(() => {
          const r = relPosTables(size, [a.rel_pos_d!, a.rel_pos_h!, a.rel_pos_w!], 1);
          return { rows: r.rows.toArray() as Float32Array, rowDims: [...r.rows.shape] };
        })
      );
      const keys = keyExpansion(size);
      // rows [T, S, c] -> [T, c, S] for a product per query position.
      const rowsT = this.g.op("Transpose", [this.g.constant("relpos_rows", rows, rowDims)], {
        perm: [0, 2, 1],
      });
      rel = { rows: rowsT, keys: this.g.constant("relpos_keys", keys.data, keys.dims) };
    }
    const outs: string[] = [];
    for (let h = 0; h < a.heads; h++) {
      const q = part(h * hd);
      const k = part(a.dim + h * hd);
      const v = part(2 * a.dim + h * hd);
      const kt = this.g.op("Transpose", [k], { perm: [0, 2, 1] });
      let logits = this.g.op("MatMul", [this.g.op("Mul", [q, this.scalar(1 / Math.sqrt(hd))]), kt]);
      if (rel) {
        // bias[b, t, :] = (q[b, t] . rows[t]^T) keys, from the unscaled q.
        const qt = this.g.op("Transpose", [q], { perm: [1, 0, 2] }); // [T, N, c]
        const terms = this.g.op("Transpose", [this.g.op("MatMul", [qt, rel.rows])], {
          perm: [1, 0, 2],
        }); // [N, T, S]
        logits = this.g.op("Add", [logits, this.g.op("MatMul", [terms, rel.keys])]);
      }
      const attn = this.g.op("Softmax", [logits], { axis: 2 });
      outs.push(this.g.op("MatMul", [attn, v]));
    }
    return this.linear(
      a.proj,
      outs.length === 1 ? outs[0] : this.g.op("Concat", outs, { axis: 2 }),
    );
  }

  /** SAM's window_partition3D: [N, T, C] on `grid` -> [N * windows, w0*w1*w2, C]. */
  windowPartition(x: string, grid: Triple, win: Triple, c: number): string {
    const n = grid.map((g, a) => Math.ceil(g / win[a]));
    const padded = n.map((k, a) => k * win[a]);
    let t = this.g.op("Reshape", [x, this.g.int64("grid", [0, ...grid, c])]);
    if (padded.some((p, a) => p > grid[a])) {
      const pads = [0, 0, 0, 0, 0, 0, ...padded.map((p, a) => p - grid[a]), 0];
      t = this.g.op("Pad", [t, this.g.int64("pads", pads)], { mode: "constant" });
    }
    const split = this.g.op("Reshape", [
      t,
      this.g.int64("windows", [0, n[0], win[0], n[1], win[1], n[2], win[2], c]),
    ]);
    const perm = this.g.op("Transpose", [split], { perm: [0, 1, 3, 5, 2, 4, 6, 7] });
    return this.g.op("Reshape", [perm, this.g.int64("win", [-1, win[0] * win[1] * win[2], c])]);
  }

  /** SAM's window_unpartition3D: [N * windows, w0*w1*w2, C] -> [N, T, C], padding cropped. */
  windowUnpartition(y: string, grid: Triple, win: Triple, c: number): string {
    const n = grid.map((g, a) => Math.ceil(g / win[a]));
    const split = this.g.op("Reshape", [
      y,
      this.g.int64("windows", [-1, n[0], n[1], n[2], win[0], win[1], win[2], c]),
    ]);
    const perm = this.g.op("Transpose", [split], { perm: [0, 1, 4, 2, 5, 3, 6, 7] });
    let t = this.g.op("Reshape", [
      perm,
      this.g.int64("grid", [0, n[0] * win[0], n[1] * win[1], n[2] * win[2], c]),
    ]);
    if (n.some((k, a) => k * win[a] > grid[a])) {
      t = this.g.op("Slice", [
        t,
        this.g.int64("start", [0, 0, 0]),
        this.g.int64("end", [...grid]),
        this.g.int64("axes", [1, 2, 3]),
      ]);
    }
    return this.g.op("Reshape", [t, this.g.int64("tokens", [0, -1, c])]);
  }

  vitBlock(b: VitBlock, x: string, c: number): string {
    let h = this.layerNorm(b.norm1, x);
    if (b.window) h = this.windowPartition(h, b.grid!, b.window, c);
    let a = this.attention(b.attn, h);
    if (b.window) a = this.windowUnpartition(a, b.grid!, b.window, c);
    if (b.adapter) {
      const ad = b.adapter;
      a = this.g.op("Add", [a, this.linear(ad.fc2, this.gelu(this.linear(ad.fc1, a)))]);
    }
    h = this.g.op("Add", [x, a], {}, "res");
    const m = this.linear(
      b.mlp.lin2,
      this.gelu(this.linear(b.mlp.lin1, this.layerNorm(b.norm2, h))),
    );
    return this.g.op("Add", [h, m], {}, "block");
  }

  // deno-lint-ignore no-explicit-any
  levelHead(head: any, x: string, grid: Triple, c: number): string {
    let h: string;
    if (head.fromTokens) h = this.pointwise(head.projWeight, this.tokensToMap(x, grid, c));
    else h = head.projWeight ? this.pointwise(head.projWeight, x) : x;
    if (head.down) h = this.block(head.down, h);
    for (let i = 0; i < head.ups.length; i++) {
      h = this.block(head.blocks.items[i], this.convTranspose(head.ups.items[i], h));
    }
    if (head.ups.length === 0 && head.blocks.length === 1) h = this.block(head.blocks.items[0], h);
    return h;
  }

  vitEncoder(e: VitEncoder, x: string): { skips: string[]; deep: string } {
    const dim = e.settings.dim;
    const p = e.patch_embed.proj;
    const f = this.g.op(
      "Conv",
      [x, this.param(p.weight), ...(p.bias ? [this.param(p.bias)] : [])],
      {
        kernel_shape: [...e.patch],
        strides: [...e.patch],
      },
      "embed",
    );
    const flat = this.g.op("Reshape", [f, this.g.int64("flat", [0, dim, -1])]);
    const T = e.grid[0] * e.grid[1] * e.grid[2];
    let t = this.g.op(
      "Add",
      [
        this.g.op("Transpose", [flat], { perm: [0, 2, 1] }),
        this.param(e.pos_embed, [1, T, dim]),
      ],
      {},
      "tokens",
    );
    const saved = new Map<number, string>();
    const want = new Set(e.skipBlocks);
    e.blocks.items.forEach((b, i) => {
      t = this.vitBlock(b, t, dim);
      if (want.has(i)) saved.set(i, t);
    });
    const neck = e.neck;
    let deep = this.pointwise(neck.conv1Weight, this.tokensToMap(t, e.grid, dim));
    deep = this.channelLayerNorm(neck.norm1, deep);
    deep = this.channelLayerNorm(neck.norm2, this.conv(neck.conv2, deep));
    if (e.deepHead) deep = this.levelHead(e.deepHead, deep, e.grid, e.settings.neckChannels);
    const skips = e.skipBlocks.map((b, l) => {
      if (l === 0) {
        // deno-lint-ignore no-explicit-any
        const stem = e.skips.items[0] as any;
        return this.block(stem.conv2, this.block(stem.conv1, x));
      }
      return this.levelHead(e.skips.items[l], saved.get(b)!, e.grid, dim);
    });
    return { skips, deep };
  }

  /** The decoder's full-resolution logits (its deep-supervision heads are not emitted). */
  decoder(d: UNetDecoder, deep: string, skips: string[]): string {
    let h = deep;
    for (let i = d.levels.length - 1; i >= 0; i--) {
      const level = d.levels.items[i];
      const u = this.convTranspose(level.up, h);
      const cat = this.g.op("Concat", [u, skips[i]], { axis: 1 });
      h = this.block(level.second, this.block(level.first, cat));
    }
    return this.conv(d.head, h);
  }

  /** Y = gamma * (softmax(-X X^T) X) + X over F flattened to X [N, C, voxels]. */
  mia(m: MiaBlock, f: string): string {
    const x = this.g.op("Reshape", [f, this.g.int64("flat", [0, 0, -1])]);
    const xt = this.g.op("Transpose", [x], { perm: [0, 2, 1] });
    const energy = this.g.op("MatMul", [x, xt], {}, "energy");
    const attention = this.g.op("Softmax", [this.g.op("Neg", [energy])], { axis: 2 }, "attention");
    const out = this.g.op("MatMul", [attention, x]);
    const y = this.g.op("Add", [this.g.op("Mul", [out, this.param(m.gamma)]), x], {}, "mia");
    return this.g.op("Reshape", [y, this.g.op("Shape", [f])]);
  }

  fusion(f: FusionLayer, ys: string[]): string[] {
    const cat = ys.length === 1 ? ys[0] : this.g.op("Concat", ys, { axis: 1 });
    const g = this.g.op("Sigmoid", [this.block(f.b2, this.block(f.b1, cat))], {}, "gate");
    if (f.mode === "add") {
      const gated = f.alpha ? this.g.op("Mul", [g, this.param(f.alpha)]) : g;
      return ys.map((y) => this.g.op("Add", [y, gated], {}, "fused"));
    }
    return ys.map((y, m) =>
      this.conv(
        f.mixConvs.items[m],
        this.norm(f.mixNorms.items[m], this.g.op("Concat", [g, y], { axis: 1 }), "leaky_relu"),
      )
    );
  }
}

/**
 * Builds the inference graph of `model` (its student), whose input and output modalities are
 * indices into `modalities`.
 */
export function networkGraph(model: MethodModel, modalities: readonly string[]): OnnxNetwork {
  const g = new GraphBuilder();
  const net = model.student;
  const e = new Emitter(g, net);
  const port = (hint: string, m: number): OnnxPort => {
    const modality = modalities[m];
    if (modality === undefined) throw new Error(`ONNX export: no modality ${m}`);
    return { name: `${hint}_${modality}`, modality };
  };
  const inputs = model.inputs.map((m) => port("image", m));
  const outputs = model.outputs.map((m) => port("logits", m));
  // The ViT backbone's position embedding fixes the input size to the training patch.
  const vit = net instanceof VitUNet ||
    (net instanceof CmcNet && net.encoders.items.some((x) => x instanceof VitEncoder));
  const spatial: Dim[] = vit ? [...modelPatch(net)] : ["D", "H", "W"];
  const imageDims: Dim[] = ["N", 1, ...spatial];
  const xs = inputs.map((p) => g.input(p.name, imageDims));
  let logits: string[];
  let channels: number;
  if (net instanceof CmcNet) {
    const o = net.options;
    const encoded = xs.map((x, m) => e.encoder(net.encoders.items[m], x));
    const ys = encoded.map((enc, m) => (o.mia ? e.mia(net.mias.items[m], enc.deep) : enc.deep));
    const zs = net.fusion ? e.fusion(net.fusion, ys) : ys;
    logits = zs.map((z, m) =>
      e.decoder(net.decoders.items[o.sharedDecoder ? 0 : m], z, encoded[m].skips)
    );
    channels = net.decoders.items[0].numClasses;
  } else if (net instanceof UNet || net instanceof VitUNet) {
    const x = xs.length === 1 ? xs[0] : g.op("Concat", xs, { axis: 1 }, "channels");
    const enc = e.encoder(net.encoder, x);
    logits = [e.decoder(net.decoder, enc.deep, enc.skips)];
    channels = net.decoder.numClasses;
  } else {
    throw new Error(
      `ONNX export: the ${model.method} model's network (${net.constructor.name}) cannot be exported; ` +
        "U-Net and ViT-backbone U-Nets and CMC networks can",
    );
  }
  if (logits.length !== outputs.length) {
    throw new Error(`ONNX export: ${logits.length} logits for ${outputs.length} outputs`);
  }
  outputs.forEach((p, i) => g.output(p.name, logits[i], ["N", channels, ...spatial]));
  return { graph: g, inputs, outputs, channels };
}

/** The training patch a ViT-backbone network was built for. */
function modelPatch(net: Module): Triple {
  const enc = net instanceof VitUNet
    ? net.encoder
    : (net as CmcNet).encoders.items.find((x) => x instanceof VitEncoder) as VitEncoder;
  return [...enc.opts.plan.patchSize] as Triple;
}
