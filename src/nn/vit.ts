/**
 * A ViT-style 3D encoder (the "foundation backbone" of METHOD.md section 2, SAM-Med3D family) that
 * implements `Encoder`, so CMC's MIA, fusion and U-Net decoders run on it unchanged.
 *
 * - patch embedding: a conv3d with kernel = stride = p (patch_embed.proj)
 * - learned absolute position embedding for the fixed token grid patch/p (pos_embed [1,d,h,w,C]);
 *   inputs of another size are rejected (no interpolation)
 * - pre-norm transformer blocks: x += attn(norm1(x)) [+ adapter], x += mlp(norm2(x)); multi-head
 *   self-attention with one qkv projection, MLP lin1 -> GELU -> lin2
 * - optional adapters (Med-SA / SAM-Med3D style): a bottleneck MLP with a residual on the attention
 *   output, a = a + fc2(gelu(fc1(a))), fc2 initialised to zero so a pretrained model starts unchanged
 * - optional freezing of the embedding and the first k blocks (requiresGrad off: the trainer's
 *   optimiser skips parameters without a gradient); adapters stay trainable
 * - SAM's neck (conv1x1 -> LayerNorm3d -> conv3x3 -> LayerNorm3d) gives the deep features
 * - UNETR-style skips for the U-Net decoder: level 0 from the input by two conv blocks, level l >= 1
 *   from the tokens after block round(depth * l / (L-1)) - 1, projected to the level's width and
 *   resized from the token grid (stride p) to the level's stride by transposed convs (or a strided
 *   conv block when the level is coarser than the grid); the deepest level is the neck's output,
 *   projected and resized the same way when its width or stride differs from the plan's.
 *
 * Parameter names follow SAM-Med3D's ImageEncoderViT3D (patch_embed.proj.weight, pos_embed,
 * blocks.{i}.norm1, blocks.{i}.attn.qkv, blocks.{i}.attn.proj, blocks.{i}.norm2, blocks.{i}.mlp.lin1,
 * blocks.{i}.mlp.lin2, neck.0 .. neck.3), so its converted checkpoint loads by name (see
 * src/io/load_weights.ts). Not implemented: SAM-Med3D's decomposed relative position bias
 * (attn.rel_pos_d/h/w) and windowed attention.
 *
 * Layout: tokens are token-major [B, N, C] so that layer norm over channels is one normalisation
 * op over rows (see LayerNorm). The engine has no transpose op: the one transpose (conv output to
 * tokens) is a product with an identity matrix, which is exact in float32; projections from tokens
 * back to feature maps are products that produce the channel-major layout directly.
 */
import {
  add,
  addScalar,
  assign,
  concat,
  conv3d,
  div,
  gelu,
  groupNorm,
  instanceNorm,
  matmul,
  mean,
  mul,
  mulScalar,
  reshape,
  slice,
  softmax,
  sqrt,
  sub,
  type Tensor,
  tensor,
} from "../engine.ts";
import { loadSafetensorsInto, type LoadWeightsReport } from "../io/load_weights.ts";
import { readSafetensors, type SafetensorsFile } from "../io/safetensors.ts";
import {
  Conv3d,
  ConvBlock,
  ConvTranspose3d,
  type NormKind,
  type Triple,
  triple,
} from "./layers.ts";
import { Module, ModuleList, normalSamples, type RandomSource } from "./module.ts";
import type { UNetPlan } from "./plan.ts";
import type { DecoderOutput, Encoder, EncoderOutput } from "./unet.ts";
import { UNetDecoder } from "./unet.ts";

/** ViT hyper-parameters (what the config's network.vit holds, less the weights file). */
export interface VitSettings {
  /** Patch (token) size p per axis; must divide the patch size. SAM-Med3D: 16. */
  patch: number | Triple;
  /** Token width C (SAM-Med3D ViT-B: 768). */
  dim: number;
  depth: number;
  heads: number;
  mlpRatio: number;
  /** Channels of the neck's output (SAM-Med3D: 384); default: the plan's deepest width. */
  neckChannels?: number;
  /** Adapter bottleneck width (0 = no adapters). */
  adapterDim?: number;
  /** Freeze the patch and position embeddings and the first k blocks (adapters stay trainable). */
  frozenBlocks?: number;
  /** Layer-norm epsilon (SAM-Med3D: 1e-6). */
  eps?: number;
  qkvBias?: boolean;
}

export interface VitOptions extends VitSettings {
  inChannels: number;
  /** The decoder's plan: widths, strides and kernels of the levels the encoder must produce. */
  plan: UNetPlan;
  /** Norm of the conv blocks of the skip heads. */
  norm?: NormKind;
  rng: RandomSource;
}

/** A fully connected layer on the last axis: y = x W^T + b, W [out, in] (PyTorch's Linear). */
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: { bias?: boolean; rng: RandomSource; std?: number; zero?: boolean },
  ) {
    super();
    const n = inFeatures * outFeatures;
    this.weight = this.param(
      "weight",
      opts.zero ? new Float32Array(n) : normalSamples(n, opts.rng, opts.std ?? 0.02),
      [outFeatures, inFeatures],
    );
    this.bias = opts.bias === false
      ? null
      : this.param("bias", new Float32Array(outFeatures), [outFeatures]);
  }
  /** x [..., in] (rank 2 or 3) -> [..., out]. */
  forward(x: Tensor): Tensor {
    const y = matmul(x, this.weight, { transB: true });
    return this.bias ? add(y, this.bias) : y;
  }
}

/**
 * Layer norm over the last axis of tokens [B, N, C]. Equal to groupNorm on [B*N, C] with one group
 * (the tests check both against a direct computation), but computed as instance norm of [1, B*N, C]
 * (each token a "channel" normalised over its C values) followed by the per-feature affine: the
 * native group norm is 10-20x slower on many rows without spatial extent.
 */
export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(readonly channels: number, readonly eps = 1e-6) {
    super();
    this.weight = this.param("weight", new Float32Array(channels).fill(1), [channels]);
    this.bias = this.param("bias", new Float32Array(channels), [channels]);
  }
  forward(x: Tensor): Tensor {
    const c = x.shape[x.shape.length - 1];
    const y = instanceNorm(reshape(x, [1, -1, c]), null, null, { eps: this.eps });
    return reshape(add(mul(y, this.weight), this.bias), x.shape);
  }

  /** The same with groupNorm(groups = 1) on [B*N, C] (reference formulation). */
  forwardGroupNorm(x: Tensor): Tensor {
    const c = x.shape[x.shape.length - 1];
    const flat = reshape(x, [-1, c]);
    return reshape(groupNorm(flat, this.weight, this.bias, { groups: 1, eps: this.eps }), x.shape);
  }
}

/**
 * SAM's LayerNorm3d: normalises the channels of every voxel of x [B, C, ...] (channel-major), with
 * per-channel weight and bias.
 */
export class ChannelLayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(readonly channels: number, readonly eps = 1e-6) {
    super();
    this.weight = this.param("weight", new Float32Array(channels).fill(1), [channels]);
    this.bias = this.param("bias", new Float32Array(channels), [channels]);
  }
  forward(x: Tensor): Tensor {
    const bshape = [1, this.channels, ...x.shape.slice(2).map(() => 1)];
    const mu = mean(x, [1], { keepDims: true });
    const d = sub(x, mu);
    const v = mean(mul(d, d), [1], { keepDims: true });
    const y = div(d, sqrt(addScalar(v, this.eps)));
    return add(mul(y, reshape(this.weight, bshape)), reshape(this.bias, bshape));
  }
}

/** x [B, C, N] -> [B, N, C], as x^T I (exact: one nonzero term per output). */
export function channelsToTokens(x: Tensor): Tensor {
  const c = x.shape[1];
  const eye = new Float32Array(c * c);
  for (let i = 0; i < c; i++) eye[i * c + i] = 1;
  return matmul(x, tensor(eye, [c, c]), { transA: true });
}

class PatchEmbed extends Module {
  readonly proj: Conv3d;
  constructor(inC: number, dim: number, p: Triple, rng: RandomSource) {
    super();
    this.proj = this.child(
      "proj",
      new Conv3d(inC, dim, { kernel: p, stride: p, padding: 0, rng, slope: 1 }),
    );
  }
}

export class Attention extends Module {
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly headDim: number;
  constructor(
    readonly dim: number,
    readonly heads: number,
    opts: { qkvBias?: boolean; rng: RandomSource },
  ) {
    super();
    if (dim % heads !== 0) {
      throw new Error(`ViT attention: width ${dim} is not divisible by ${heads} heads`);
    }
    this.headDim = dim / heads;
    this.qkv = this.child(
      "qkv",
      new Linear(dim, 3 * dim, { bias: opts.qkvBias ?? true, rng: opts.rng }),
    );
    this.proj = this.child("proj", new Linear(dim, dim, { rng: opts.rng }));
  }
  /** x [B, N, C] -> [B, N, C]; softmax(q k^T / sqrt(d)) v per head (q, k, v in SAM's qkv order). */
  forward(x: Tensor): Tensor {
    const qkv = this.qkv.forward(x);
    const hd = this.headDim;
    const scale = 1 / Math.sqrt(hd);
    const outs: Tensor[] = [];
    for (let h = 0; h < this.heads; h++) {
      const q = mulScalar(slice(qkv, 2, h * hd, hd), scale);
      const k = slice(qkv, 2, this.dim + h * hd, hd);
      const v = slice(qkv, 2, 2 * this.dim + h * hd, hd);
      const a = softmax(matmul(q, k, { transB: true }), 2); // [B, N, N]
      outs.push(matmul(a, v)); // [B, N, hd]
    }
    return this.proj.forward(outs.length === 1 ? outs[0] : concat(outs, 2));
  }
}

export class Mlp extends Module {
  readonly lin1: Linear;
  readonly lin2: Linear;
  constructor(dim: number, hidden: number, rng: RandomSource) {
    super();
    this.lin1 = this.child("lin1", new Linear(dim, hidden, { rng }));
    this.lin2 = this.child("lin2", new Linear(hidden, dim, { rng }));
  }
  forward(x: Tensor): Tensor {
    return this.lin2.forward(gelu(this.lin1.forward(x)));
  }
}

/** Bottleneck adapter with a residual: x + fc2(gelu(fc1(x))), fc2 zero at start (identity). */
export class Adapter extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(dim: number, bottleneck: number, rng: RandomSource) {
    super();
    this.fc1 = this.child("fc1", new Linear(dim, bottleneck, { rng }));
    this.fc2 = this.child("fc2", new Linear(bottleneck, dim, { rng, zero: true }));
  }
  forward(x: Tensor): Tensor {
    return add(x, this.fc2.forward(gelu(this.fc1.forward(x))));
  }
}

export class VitBlock extends Module {
  readonly norm1: LayerNorm;
  readonly attn: Attention;
  readonly adapter: Adapter | null;
  readonly norm2: LayerNorm;
  readonly mlp: Mlp;
  constructor(
    dim: number,
    heads: number,
    opts: {
      mlpRatio: number;
      adapterDim: number;
      eps: number;
      qkvBias: boolean;
      rng: RandomSource;
    },
  ) {
    super();
    this.norm1 = this.child("norm1", new LayerNorm(dim, opts.eps));
    this.attn = this.child("attn", new Attention(dim, heads, opts));
    this.adapter = opts.adapterDim > 0
      ? this.child("adapter", new Adapter(dim, opts.adapterDim, opts.rng))
      : null;
    this.norm2 = this.child("norm2", new LayerNorm(dim, opts.eps));
    this.mlp = this.child("mlp", new Mlp(dim, Math.round(dim * opts.mlpRatio), opts.rng));
  }
  /** x [B, N, C] -> [B, N, C]. */
  forward(x: Tensor): Tensor {
    let a = this.attn.forward(this.norm1.forward(x));
    if (this.adapter) a = this.adapter.forward(a);
    const h = add(x, a);
    return add(h, this.mlp.forward(this.norm2.forward(h)));
  }
}

/** SAM's neck: conv1x1 (no bias) -> LayerNorm3d -> conv3x3 (no bias) -> LayerNorm3d, named 0..3. */
class Neck extends Module {
  readonly conv1Weight: Tensor;
  readonly norm1: ChannelLayerNorm;
  readonly conv2: Conv3d;
  readonly norm2: ChannelLayerNorm;
  constructor(dim: number, out: number, eps: number, rng: RandomSource) {
    super();
    const c1 = this.child("0", new Conv3d(dim, out, { kernel: 1, bias: false, rng, slope: 1 }));
    this.conv1Weight = c1.weight;
    this.norm1 = this.child("1", new ChannelLayerNorm(out, eps));
    this.conv2 = this.child("2", new Conv3d(out, out, { kernel: 3, bias: false, rng, slope: 1 }));
    this.norm2 = this.child("3", new ChannelLayerNorm(out, eps));
  }
  /** tokens [B, N, C] -> [B, out, ...grid]. */
  forward(tokens: Tensor, grid: Triple): Tensor {
    const [b] = tokens.shape;
    const w = reshape(this.conv1Weight, [this.conv1Weight.shape[0], -1]);
    const y = reshape(matmul(w, tokens, { transB: true }), [b, w.shape[0], ...grid]); // 1x1 conv, channel-major out
    return this.norm2.forward(this.conv2.forward(this.norm1.forward(y)));
  }
}

/** Steps (per-step strides) that upsample by `factor` per axis with stride-2 transposed convs. */
function upSteps(factor: Triple): Triple[] {
  const steps: Triple[] = [];
  const left = [...factor];
  while (left.some((f) => f > 1)) {
    const s = left.map((f) => (f > 1 ? 2 : 1)) as Triple;
    for (let a = 0; a < 3; a++) left[a] /= s[a];
    steps.push(s);
  }
  return steps;
}

/**
 * Turns features at the token grid (stride p) into a decoder level's features (width w, stride s):
 * a 1x1 projection (from tokens or from a feature map), a strided conv block where the level is
 * coarser than the grid, transposed conv + conv block per factor 2 where it is finer, and one conv
 * block when the resolution already matches.
 */
class LevelHead extends Module {
  readonly projWeight: Tensor | null;
  readonly down: ConvBlock | null;
  readonly ups: ModuleList<ConvTranspose3d>;
  readonly blocks: ModuleList<ConvBlock>;
  constructor(
    inC: number,
    readonly width: number,
    readonly fromTokens: boolean,
    resize: { up: Triple; down: Triple; kernel: Triple },
    norm: NormKind,
    rng: RandomSource,
  ) {
    super();
    this.projWeight = fromTokens || inC !== width
      ? this.child("proj", new Conv3d(inC, width, { kernel: 1, bias: false, rng, slope: 1 })).weight
      : null;
    const needsDown = resize.down.some((d) => d > 1);
    this.down = needsDown
      ? this.child(
        "down",
        new ConvBlock(width, width, {
          kernel: resize.down.map((d, a) => (d > 1 ? 3 : resize.kernel[a])) as Triple,
          stride: resize.down,
          norm,
          rng,
        }),
      )
      : null;
    const steps = upSteps(resize.up);
    this.ups = this.child(
      "ups",
      new ModuleList(
        steps.map((s) => new ConvTranspose3d(width, width, { stride: s, bias: false, rng })),
      ),
    );
    const nBlocks = steps.length > 0 ? steps.length : needsDown ? 0 : 1;
    const blocks: ConvBlock[] = [];
    for (let i = 0; i < nBlocks; i++) {
      blocks.push(new ConvBlock(width, width, { kernel: resize.kernel, norm, rng }));
    }
    this.blocks = this.child("blocks", new ModuleList(blocks));
  }
  /** From tokens [B, N, C] (fromTokens) or a map [B, C, ...grid]. */
  forward(x: Tensor, grid: Triple): Tensor {
    let h: Tensor;
    if (this.fromTokens) {
      const w = reshape(this.projWeight!, [this.width, -1]);
      h = reshape(matmul(w, x, { transB: true }), [x.shape[0], this.width, ...grid]);
    } else {
      h = this.projWeight ? conv3d(x, this.projWeight, null) : x;
    }
    if (this.down) h = this.down.forward(h);
    for (let i = 0; i < this.ups.length; i++) {
      h = this.ups.items[i].forward(h);
      h = this.blocks.items[i].forward(h);
    }
    if (this.ups.length === 0 && this.blocks.length === 1) h = this.blocks.items[0].forward(h);
    return h;
  }
}

/** Full-resolution skip from the input: two conv blocks (UNETR's encoder1). */
class InputStem extends Module {
  readonly conv1: ConvBlock;
  readonly conv2: ConvBlock;
  constructor(inC: number, width: number, kernel: Triple, norm: NormKind, rng: RandomSource) {
    super();
    this.conv1 = this.child("conv1", new ConvBlock(inC, width, { kernel, norm, rng }));
    this.conv2 = this.child("conv2", new ConvBlock(width, width, { kernel, norm, rng }));
  }
  forward(x: Tensor): Tensor {
    return this.conv2.forward(this.conv1.forward(x));
  }
}

/** Cumulative stride of every plan level, per axis. */
function levelStrides(plan: UNetPlan): Triple[] {
  const out: Triple[] = [];
  const s: Triple = [1, 1, 1];
  for (const l of plan.levels) {
    for (let a = 0; a < 3; a++) s[a] *= l.stride[a];
    out.push([...s] as Triple);
  }
  return out;
}

const AXES = ["D", "H", "W"];

export class VitEncoder extends Module implements Encoder {
  readonly widths: number[];
  readonly patch: Triple;
  /** Token grid (patch size / p). */
  readonly grid: Triple;
  readonly patch_embed: PatchEmbed;
  readonly pos_embed: Tensor;
  readonly blocks: ModuleList<VitBlock>;
  readonly neck: Neck;
  readonly skips: ModuleList<Module>;
  readonly deepHead: LevelHead | null;
  /** Block index whose output feeds skip level l (index l; -1 for level 0, which reads the input). */
  readonly skipBlocks: number[];
  readonly settings: Required<VitSettings>;

  constructor(readonly opts: VitOptions) {
    super();
    const plan = opts.plan;
    const L = plan.levels.length;
    if (L < 2) throw new Error(`ViT encoder: the plan needs at least 2 levels, got ${L}`);
    this.settings = {
      patch: opts.patch,
      dim: opts.dim,
      depth: opts.depth,
      heads: opts.heads,
      mlpRatio: opts.mlpRatio,
      neckChannels: opts.neckChannels ?? plan.levels[L - 1].width,
      adapterDim: opts.adapterDim ?? 0,
      frozenBlocks: opts.frozenBlocks ?? 0,
      eps: opts.eps ?? 1e-6,
      qkvBias: opts.qkvBias ?? true,
    };
    const s = this.settings;
    this.patch = triple(s.patch);
    for (const [k, v] of Object.entries({ dim: s.dim, depth: s.depth, heads: s.heads })) {
      if (!Number.isInteger(v) || v < 1) {
        throw new Error(`ViT encoder: ${k} must be a positive integer, got ${v}`);
      }
    }
    if (s.dim % s.heads !== 0) {
      throw new Error(`ViT encoder: dim ${s.dim} is not divisible by heads ${s.heads}`);
    }
    if (!(s.frozenBlocks >= 0 && s.frozenBlocks <= s.depth)) {
      throw new Error(
        `ViT encoder: frozenBlocks ${s.frozenBlocks} must be in [0, depth = ${s.depth}]`,
      );
    }
    this.grid = [0, 1, 2].map((a) => {
      const p = this.patch[a];
      if (!Number.isInteger(p) || p < 1 || plan.patchSize[a] % p !== 0) {
        throw new Error(
          `ViT encoder: patch size ${p} along ${AXES[a]} does not divide the input patch size ` +
            `[${plan.patchSize.join(", ")}] (network.vit.patchSize must divide patchSize)`,
        );
      }
      return plan.patchSize[a] / p;
    }) as Triple;
    this.widths = plan.levels.map((l) => l.width);
    const rng = opts.rng;
    const norm = opts.norm ?? "instance";

    this.patch_embed = this.child(
      "patch_embed",
      new PatchEmbed(opts.inChannels, s.dim, this.patch, rng),
    );
    this.pos_embed = this.param(
      "pos_embed",
      normalSamples(this.grid[0] * this.grid[1] * this.grid[2] * s.dim, rng, 0.02),
      [
        1,
        ...this.grid,
        s.dim,
      ],
    );
    const blocks: VitBlock[] = [];
    for (let i = 0; i < s.depth; i++) {
      blocks.push(
        new VitBlock(s.dim, s.heads, {
          mlpRatio: s.mlpRatio,
          adapterDim: s.adapterDim,
          eps: s.eps,
          qkvBias: s.qkvBias,
          rng,
        }),
      );
    }
    this.blocks = this.child("blocks", new ModuleList(blocks));
    this.neck = this.child("neck", new Neck(s.dim, s.neckChannels, s.eps, rng));

    const strides = levelStrides(plan);
    const resizeTo = (l: number) => {
      const up = [0, 1, 2].map((a) => Math.max(1, this.patch[a] / strides[l][a])) as Triple;
      const down = [0, 1, 2].map((a) => Math.max(1, strides[l][a] / this.patch[a])) as Triple;
      for (let a = 0; a < 3; a++) {
        const f = Math.max(up[a], down[a]);
        if (!Number.isInteger(f) || (f & (f - 1)) !== 0) {
          throw new Error(
            `ViT encoder: decoder level ${l} has stride ${strides[l][a]} along ${
              AXES[a]
            }, which is not a power-of-2 ` +
              `multiple or fraction of the ViT patch size ${this.patch[a]}`,
          );
        }
      }
      return { up, down, kernel: plan.levels[l].kernel };
    };
    const heads: Module[] = [
      new InputStem(opts.inChannels, plan.levels[0].width, plan.levels[0].kernel, norm, rng),
    ];
    this.skipBlocks = [-1];
    for (let l = 1; l < L - 1; l++) {
      this.skipBlocks.push(
        Math.min(s.depth - 1, Math.max(0, Math.round((s.depth * l) / (L - 1)) - 1)),
      );
      heads.push(new LevelHead(s.dim, plan.levels[l].width, true, resizeTo(l), norm, rng));
    }
    this.skips = this.child("skips", new ModuleList(heads));
    const deep = resizeTo(L - 1);
    const same = s.neckChannels === plan.levels[L - 1].width && deep.up.every((f) => f === 1) &&
      deep.down.every((f) => f === 1);
    this.deepHead = same ? null : this.child(
      "deep_head",
      new LevelHead(s.neckChannels, plan.levels[L - 1].width, false, deep, norm, rng),
    );
    this.freeze(s.frozenBlocks);
  }

  /** Freezes (requiresGrad off) the embeddings and the first k blocks except their adapters; k = 0 unfreezes all. */
  freeze(k: number): void {
    for (const [name, p] of this.namedParameters()) {
      const m = /^blocks\.(\d+)\.(.*)$/.exec(name);
      const frozen = k > 0 && (
        name.startsWith("patch_embed.") || name === "pos_embed" ||
        (m !== null && Number(m[1]) < k && !m[2].startsWith("adapter."))
      );
      p.requiresGrad = !frozen;
    }
  }

  /** Names of the parameters a SAM-Med3D image encoder does not have (skip heads, deep head, adapters). */
  static isExtraParameter(name: string): boolean {
    return name.startsWith("skips.") || name.startsWith("deep_head.") ||
      /^blocks\.\d+\.adapter\./.test(name);
  }

  /** Tokens [B, N, C] after the patch and position embeddings. */
  embed(x: Tensor): Tensor {
    const want = this.opts.plan.patchSize;
    if (
      x.shape.length !== 5 || x.shape[1] !== this.opts.inChannels ||
      want.some((d, a) => x.shape[2 + a] !== d)
    ) {
      throw new Error(
        `ViT encoder: input ${x.describe()} must be [B, ${this.opts.inChannels}, ${
          want.join(", ")
        }]: the learned ` +
          `position embedding covers a ${this.grid.join("x")} grid of ${
            this.patch.join("x")
          } patches and is not interpolated ` +
          `(network.vit.patchSize and patchSize fix it)`,
      );
    }
    const p = this.patch_embed.proj;
    const f = conv3d(x, p.weight, p.bias, { stride: this.patch, padding: [0, 0, 0] });
    const tokens = channelsToTokens(reshape(f, [f.shape[0], this.settings.dim, -1]));
    return add(tokens, reshape(this.pos_embed, [1, -1, this.settings.dim]));
  }

  forward(x: Tensor): EncoderOutput {
    let t = this.embed(x);
    const saved = new Map<number, Tensor>();
    const want = new Set(this.skipBlocks);
    for (let i = 0; i < this.blocks.length; i++) {
      t = this.blocks.items[i].forward(t);
      if (want.has(i)) saved.set(i, t);
    }
    let deep = this.neck.forward(t, this.grid);
    if (this.deepHead) deep = this.deepHead.forward(deep, this.grid);
    const skips = this.skipBlocks.map((b, l) =>
      l === 0
        ? (this.skips.items[0] as InputStem).forward(x)
        : (this.skips.items[l] as LevelHead).forward(saved.get(b)!, this.grid)
    );
    return { skips, deep };
  }
}

/** A ViT encoder and a U-Net decoder: the single-network methods' model with a foundation backbone. */
export class VitUNet extends Module {
  readonly encoder: VitEncoder;
  readonly decoder: UNetDecoder;
  constructor(
    inChannels: number,
    numClasses: number,
    plan: UNetPlan,
    vit: VitSettings,
    opts: { norm?: NormKind; rng: RandomSource; deepSupervision?: number },
  ) {
    super();
    this.encoder = this.child(
      "encoder",
      new VitEncoder({ ...vit, inChannels, plan, norm: opts.norm, rng: opts.rng }),
    );
    this.decoder = this.child("decoder", new UNetDecoder(plan, numClasses, opts));
  }
  forward(x: Tensor): DecoderOutput & { deep: Tensor } {
    const e = this.encoder.forward(x);
    return { ...this.decoder.forward(e.deep, e.skips), deep: e.deep };
  }
}

/**
 * Loads pretrained backbone weights (SAM-Med3D image-encoder names, optionally under `prefix`) into
 * a ViT encoder. A one-channel patch embedding loads into a multi-channel one with each channel's
 * kernel divided by the channel count (early fusion). Shape mismatches are errors (a position
 * embedding for another token grid says how to fix it), except in the new layers: the skip heads,
 * the deep head and the adapters may be absent or of another shape (left as initialised, and
 * reported). With `strict`, backbone parameters absent from the file and file keys the model does
 * not use are errors too.
 */
export function loadVitWeights(
  enc: VitEncoder,
  file: string | SafetensorsFile,
  opts: { prefix?: string; strict?: boolean } = {},
): LoadWeightsReport {
  const st = typeof file === "string" ? readSafetensors(file) : file;
  const prefix = opts.prefix ?? "";
  const r = loadSafetensorsInto(enc, st, { prefix });
  const pe = "patch_embed.proj.weight";
  const mi = r.mismatched.findIndex((m) => m.name === pe);
  if (mi >= 0) {
    const m = r.mismatched[mi];
    const [o, c, ...k] = m.module;
    if (
      m.file.length === 5 && m.file[0] === o && m.file[1] === 1 &&
      m.file.slice(2).join() === k.join()
    ) {
      const src = st.readF32(prefix + pe);
      const per = src.length / o;
      const out = new Float32Array(o * c * per);
      for (let i = 0; i < o; i++) {
        for (let j = 0; j < c; j++) {
          for (let e = 0; e < per; e++) out[(i * c + j) * per + e] = src[i * per + e] / c;
        }
      }
      assign(enc.patch_embed.proj.weight, out);
      r.mismatched.splice(mi, 1);
      r.loaded.push(pe);
    }
  }
  const where = `${st.source}${prefix ? ` (prefix '${prefix}')` : ""}`;
  const problems: string[] = [];
  if (r.loaded.length === 0) {
    const some = st.names.slice(0, 5).join(", ");
    problems.push(
      `no tensor matched a ViT parameter name (the file's keys begin: ${
        some || "none"
      }; is network.vit.prefix right?)`,
    );
  }
  for (const m of r.mismatched) {
    if (VitEncoder.isExtraParameter(m.name)) continue; // a new layer of another shape: trains from its init
    if (m.name === "pos_embed") {
      problems.push(
        `pos_embed: the file's token grid [${m.file.slice(1, 4).join(", ")}] x ${
          m.file[4]
        } differs from this model's ` +
          `[${m.module.slice(1, 4).join(", ")}] x ${
            m.module[4]
          }; positions are not interpolated: choose patchSize = ` +
          `grid x network.vit.patchSize (here [${
            m.file.slice(1, 4).map((g, a) => g * enc.patch[a]).join(", ")
          }]) and a matching network.vit.dim`,
      );
    } else {
      problems.push(
        `${m.name}: file [${m.file.join(", ")}] vs model [${
          m.module.join(", ")
        }] (check network.vit dim/depth/heads/mlpRatio/neckChannels)`,
      );
    }
  }
  if (opts.strict) {
    const missing = r.missing.filter((n) => !VitEncoder.isExtraParameter(n));
    if (missing.length) {
      problems.push(`missing in the file (${missing.length}): ${missing.join(", ")}`);
    }
    if (r.unexpected.length) {
      problems.push(`unexpected in the file (${r.unexpected.length}): ${r.unexpected.join(", ")}`);
    }
  }
  if (problems.length) {
    throw new Error(
      `Cannot load ViT weights from ${where}${opts.strict ? " (strict)" : ""}:\n  ${
        problems.join("\n  ")
      }`,
    );
  }
  return r;
}
