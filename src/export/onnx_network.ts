/**
 * The inference graph of a comodal network as ONNX: the same computation as `MethodModel.predict`
 * (students only; deep-supervision heads are dropped, as inference never calls them).
 *
 * Graph inputs are one float32 image per input modality, [N, 1, D, H, W], named "image_<modality>"
 * (early fusion concatenates them inside the graph); outputs are one logits tensor per output
 * modality, [N, K, D, H, W], named "logits_<modality>". N, D, H and W are symbolic: D, H, W must be
 * multiples of the plan's total downsampling (the training patch size always is).
 *
 * Weights are stored as initializers named by the parameters' dotted names
 * ("encoders.0.levels.1.conv2.conv.weight").
 *
 * @module
 */
import type { Tensor } from "../engine.ts";
import { CmcNet, type FusionLayer, type MiaBlock } from "../nn/cmc.ts";
import type { Conv3d, ConvBlock, ConvTranspose3d, Norm3d } from "../nn/layers.ts";
import type { Module } from "../nn/module.ts";
import { UNet, type UNetDecoder, UNetEncoder } from "../nn/unet.ts";
import type { MethodModel } from "../train/methods.ts";
import { type Dim, GraphBuilder } from "./onnx_graph.ts";

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
    if (!(e instanceof UNetEncoder)) {
      throw new Error("ONNX export: only the U-Net encoder backbone can be exported");
    }
    const skips: string[] = [];
    let h = x;
    e.levels.items.forEach((level, i) => {
      h = this.block(level.second, this.block(level.first, h));
      if (i < e.levels.length - 1) skips.push(h);
    });
    return { skips, deep: h };
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
  const imageDims: Dim[] = ["N", 1, "D", "H", "W"];
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
  } else if (net instanceof UNet) {
    const x = xs.length === 1 ? xs[0] : g.op("Concat", xs, { axis: 1 }, "channels");
    const enc = e.encoder(net.encoder, x);
    logits = [e.decoder(net.decoder, enc.deep, enc.skips)];
    channels = net.decoder.numClasses;
  } else {
    throw new Error(
      `ONNX export: the ${model.method} model's network (${net.constructor.name}) cannot be exported; ` +
        "U-Net-backbone networks can",
    );
  }
  if (logits.length !== outputs.length) {
    throw new Error(`ONNX export: ${logits.length} logits for ${outputs.length} outputs`);
  }
  outputs.forEach((p, i) => g.output(p.name, logits[i], ["N", channels, "D", "H", "W"]));
  return { graph: g, inputs, outputs, channels };
}
