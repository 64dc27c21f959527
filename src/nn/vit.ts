/**
 * A ViT-style 3D encoder (the "foundation backbone" of METHOD.md section 2, SAM-Med3D family) that
 * implements `Encoder`, so CMC's MIA, fusion and U-Net decoders run on it unchanged.
 *
 * - patch embedding: a conv3d with kernel = stride = p (patch_embed.proj)
 * - learned absolute position embedding for the fixed token grid patch/p (pos_embed [1,d,h,w,C]);
 *   inputs of another size are rejected (no interpolation)
 * - pre-norm transformer blocks: x += attn(norm1(x)) [+ adapter], x += mlp(norm2(x)); multi-head
 *   self-attention with one qkv projection, MLP lin1 -> GELU -> lin2
 * - optional SAM-Med3D attention details: the decomposed relative position bias (per block tables
 *   attn.rel_pos_d/h/w of [2s-1, head_dim] for an attention grid of s tokens per axis, added to the
 *   logits from the unscaled queries) and windowed attention (blocks outside globalAttnIndexes attend
 *   inside windows of the token grid zero-padded to a multiple of the window, as SAM's
 *   window_partition3D / window_unpartition3D)
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
 * src/io/load_weights.ts), including blocks.{i}.attn.rel_pos_d/h/w with relPos on.
 *
 * Layout: tokens are token-major [B, N, C] so that layer norm over channels is one normalisation
 * op over rows (see LayerNorm). The conv output becomes tokens by one permute (channels last);
 * projections from tokens back to feature maps are products that produce the channel-major layout
 * directly. Everything here is built from engine ops on the module's own tensors: no constant
 * matrices, no caches.
 */
import {
  add,
  addScalar,
  assign,
  concat,
  conv3d,
  div,
  expand,
  gelu,
  groupNorm,
  instanceNorm,
  matmul,
  mean,
  mul,
  mulScalar,
  permute,
  reshape,
  slice,
  softmax,
  sqrt,
  sub,
  type Tensor,
  zeros,
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
  /** SAM's decomposed relative position bias in every block (SAM-Med3D: true). */
  relPos?: boolean;
  /**
   * Windowed attention: blocks not in globalAttnIndexes attend within windows of this many tokens
   * per axis (the token grid zero-padded to a multiple); 0 = global attention everywhere. SAM-Med3D: 14.
   */
  windowSize?: number | Triple;
  /** Blocks with global attention when windowSize > 0 (SAM-Med3D ViT-B: [2, 5, 8, 11]). */
  globalAttnIndexes?: number[];
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

/** A normalisation's per-channel affine: weight (ones) and bias (zeros), [channels] each. */
abstract class AffineNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(readonly channels: number, readonly eps = 1e-6) {
    super();
    this.weight = this.param("weight", new Float32Array(channels).fill(1), [channels]);
    this.bias = this.param("bias", new Float32Array(channels), [channels]);
  }
  abstract forward(x: Tensor): Tensor;
}

/**
 * Layer norm over the last axis of tokens [B, N, C]. Equal to groupNorm on [B*N, C] with one group
 * (the tests check both against a direct computation), computed as instance norm of [1, B*N, C]
 * (each token a "channel" normalised over its C values) followed by the per-feature affine.
 */
export class LayerNorm extends AffineNorm {
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
export class ChannelLayerNorm extends AffineNorm {
  forward(x: Tensor): Tensor {
    const bshape = [1, this.channels, ...x.shape.slice(2).map(() => 1)];
    const mu = mean(x, [1], { keepDims: true });
    const d = sub(x, mu);
    const v = mean(mul(d, d), [1], { keepDims: true });
    const y = div(d, sqrt(addScalar(v, this.eps)));
    return add(mul(y, reshape(this.weight, bshape)), reshape(this.bias, bshape));
  }
}

/** x [B, C, N] -> [B, N, C] (a permute: exact). */
export function channelsToTokens(x: Tensor): Tensor {
  return permute(x, [0, 2, 1]);
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

/**
 * R[i, j] = table[i - j + g - 1], [g, g, c] for a table [2g - 1, c]: SAM's get_rel_pos for query
 * and key grids of g tokens (relative position i - j, offset to be non-negative). Copies only, by
 * the relative shift of Transformer-XL: g copies of the table end to end, read from row g - 1 on
 * in rows of 2g - 2, hold V[r, s] = table[g - 1 - r + s] in their first g columns, and R is V with
 * its two axes swapped. (Exact, and its gradient is the matching sums of the table rows.)
 */
export function relPosRows(table: Tensor, g: number): Tensor {
  const [rows, c] = table.shape;
  if (rows !== 2 * g - 1) {
    throw new Error(`relPosRows: table ${table.describe()} needs ${2 * g - 1} rows (2 x ${g} - 1)`);
  }
  if (g === 1) return reshape(table, [1, 1, c]);
  const tiled = reshape(expand(reshape(table, [1, rows, c]), [g, rows, c]), [g * rows, c]);
  const v = reshape(slice(tiled, 0, g - 1, g * (2 * g - 2)), [g, 2 * g - 2, c]);
  return permute(slice(v, 1, 0, g), [1, 0, 2]);
}

/**
 * Resamples a relative position table [L, c] to n rows by linear interpolation along the rows, as
 * SAM's get_rel_pos does (PyTorch's F.interpolate, mode "linear", align_corners false).
 */
export function resampleRelPos(table: Float32Array, rows: number, n: number): Float32Array {
  const c = table.length / rows;
  const out = new Float32Array(n * c);
  const scale = rows / n;
  for (let i = 0; i < n; i++) {
    const src = Math.max(0, (i + 0.5) * scale - 0.5);
    const i0 = Math.min(Math.floor(src), rows - 1);
    const i1 = Math.min(i0 + 1, rows - 1);
    const l1 = src - i0, l0 = 1 - l1;
    for (let k = 0; k < c; k++) out[i * c + k] = l0 * table[i0 * c + k] + l1 * table[i1 * c + k];
  }
  return out;
}

/** relPosTables' output: every query's gathered table rows, and the attention grid. */
export interface RelPosTables {
  /** [B * T, s_0 + s_1 + s_2, c]: for query t, the rows R_d[t_d, :], R_h[t_h, :], R_w[t_w, :]. */
  rows: Tensor;
  /** The attention grid (s_0, s_1, s_2), T = s_0 s_1 s_2 tokens d-major. */
  size: Triple;
}

/**
 * The gathered tables of SAM's decomposed relative position bias for a batch of `b` query sets on
 * the grid `size`, as the ONNX export stores them (the engine's attention uses relPosRows and
 * relPosBias directly): per axis a,
 * R_a[i, j] = table_a[i - j + s_a - 1] ([s_a, s_a, c], relPosRows), then each query's rows
 * R_a[t_a] side by side.
 */
export function relPosTables(size: Triple, tables: Tensor[], b: number): RelPosTables {
  const [d, h, w] = size;
  const t = d * h * w;
  const per: Tensor[] = [];
  for (let a = 0; a < 3; a++) {
    const g = size[a];
    const [rows, c] = tables[a].shape;
    if (rows !== 2 * g - 1) {
      throw new Error(
        `ViT relative positions: table ${"dhw"[a]} has ${rows} rows, the attention grid needs ` +
          `${2 * g - 1} (2 x ${g} - 1)`,
      );
    }
    const r = relPosRows(tables[a], g); // [g, g, c]
    const at = [1, 1, 1, g, c];
    at[a] = g;
    per.push(reshape(expand(reshape(r, at), [d, h, w, g, c]), [t, g, c]));
  }
  const c = tables[0].shape[1];
  let rows = concat(per, 1); // [T, sum g, c]
  if (b > 1) {
    rows = reshape(expand(reshape(rows, [1, t, -1, c]), [b, t, d + h + w, c]), [b * t, -1, c]);
  }
  return { rows, size: [d, h, w] };
}

/**
 * SAM's decomposed relative position bias (add_decomposed_rel_pos) for query sets q [M, T, c] on the
 * attention grid `size` (T = s_0 s_1 s_2 tokens d-major; keys on the same grid), with the per-axis
 * lookups rows[a] = R_a [s_a, s_a, c] of relPosRows:
 * bias[m, t, (kd, kh, kw)] = q[m, t] . Rd[t_d, kd] + q[m, t] . Rh[t_h, kh] + q[m, t] . Rw[t_w, kw].
 * Per axis, as SAM's einsum: that axis of the queries moved to the front (a permute), one product
 * batched over its coordinate, moved back; the three terms are broadcast over the key grid and
 * added. Returns [M, T, T].
 */
export function relPosBias(q: Tensor, size: Triple, rows: Tensor[]): Tensor {
  const [m, t, c] = q.shape;
  const q5 = reshape(q, [m, ...size, c]);
  const term = (a: number): Tensor => {
    const g = size[a];
    const order = [1 + a, ...[0, 1, 2, 3].filter((k) => k !== 1 + a), 4]; // axis a first
    const qa = reshape(permute(q5, order), [g, -1, c]);
    const r = matmul(qa, rows[a], { transB: true }); // [g, M * (other axes), g keys]
    const moved = reshape(r, [...order.slice(0, 4).map((k) => q5.shape[k]), g]);
    const back = permute(moved, order.map((_, i) => order.indexOf(i))); // [M, d, h, w, g keys]
    const shape = [m * t, 1, 1, 1];
    shape[1 + a] = g;
    return reshape(back, shape);
  };
  return reshape(add(add(term(0), term(1)), term(2)), [m, t, t]);
}

export class Attention extends Module {
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly headDim: number;
  /** The attention grid (tokens per axis) the relative position tables cover; null without them. */
  readonly relSize: Triple | null;
  readonly rel_pos_d: Tensor | null;
  readonly rel_pos_h: Tensor | null;
  readonly rel_pos_w: Tensor | null;
  constructor(
    readonly dim: number,
    readonly heads: number,
    opts: { qkvBias?: boolean; rng: RandomSource; relPos?: Triple | null },
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
    this.relSize = opts.relPos ?? null;
    // Tables [2s - 1, head_dim], zero at start (SAM's rel_pos_zero_init).
    const table = (a: number) => {
      if (!this.relSize) return null;
      const n = 2 * this.relSize[a] - 1;
      return this.param(`rel_pos_${"dhw"[a]}`, new Float32Array(n * this.headDim), [
        n,
        this.headDim,
      ]);
    };
    this.rel_pos_d = table(0);
    this.rel_pos_h = table(1);
    this.rel_pos_w = table(2);
  }
  /**
   * x [B, N, C] -> [B, N, C]; softmax(q k^T / sqrt(d) [+ rel-pos bias]) v per head (q, k, v in
   * SAM's qkv order), all heads in one batch of B * heads. With relative positions N must be the
   * token count of relSize (d-major).
   */
  forward(x: Tensor): Tensor {
    const [b, n] = x.shape;
    const heads = this.heads;
    const hd = this.headDim;
    const scale = 1 / Math.sqrt(hd);
    const rel = this.relSize;
    if (rel && x.shape[1] !== rel[0] * rel[1] * rel[2]) {
      throw new Error(
        `ViT attention: ${x.shape[1]} tokens, but the relative position tables cover a ` +
          `${rel.join("x")} grid`,
      );
    }
    // [B, N, 3, heads, hd] -> [3, B * heads, N, hd] (SAM's reshape + permute)
    const qkv = reshape(
      permute(reshape(this.qkv.forward(x), [b, n, 3, heads, hd]), [2, 0, 3, 1, 4]),
      [3, b * heads, n, hd],
    );
    const [q, k, v] = [0, 1, 2].map((i) => reshape(slice(qkv, 0, i, 1), [b * heads, n, hd]));
    let logits = matmul(mulScalar(q, scale), k, { transB: true }); // [B * heads, N, N]
    if (rel) {
      const tables = [this.rel_pos_d!, this.rel_pos_h!, this.rel_pos_w!];
      const rows = tables.map((t, a) => relPosRows(t, rel[a]));
      logits = add(logits, relPosBias(q, rel, rows)); // SAM: from the unscaled q
    }
    const o = matmul(softmax(logits, 2), v); // [B * heads, N, hd]
    // [B, heads, N, hd] -> [B, N, heads, hd] = [B, N, C]
    const merged = reshape(permute(reshape(o, [b, heads, n, hd]), [0, 2, 1, 3]), [b, n, this.dim]);
    return this.proj.forward(merged);
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

/** Windows per axis and the zero-padded grid for a window (SAM's window_partition3D padding). */
function windowLayout(grid: Triple, win: Triple): { n: Triple; padded: Triple } {
  const n = grid.map((g, a) => Math.ceil(g / win[a])) as Triple;
  return { n, padded: n.map((k, a) => k * win[a]) as Triple };
}

/**
 * SAM's window_partition3D: tokens x [B, N, C] on `grid` (d-major) -> windows [B * nW, w0*w1*w2, C]
 * (batch-major, windows in (d, h, w) order, tokens d-major inside a window), the grid zero-padded at
 * the end of each axis to a multiple of the window: padding is a concat with zeros, the windows one
 * permute of [B n0, w0, n1, w1, n2, w2 C] to [B n0, n1, n2, w0, w1, w2 C] (as SAM's view + permute,
 * with the axes that stay together merged to fit 6 dimensions).
 */
export function windowPartition(x: Tensor, grid: Triple, win: Triple): Tensor {
  const [b, , c] = x.shape;
  const { n, padded } = windowLayout(grid, win);
  let t = reshape(x, [b, ...grid, c]);
  for (let a = 0; a < 3; a++) {
    const pad = padded[a] - grid[a];
    if (pad === 0) continue;
    const zshape = [...t.shape];
    zshape[1 + a] = pad;
    t = concat([t, zeros(zshape)], 1 + a);
  }
  const size = win[0] * win[1] * win[2];
  if (n.every((k) => k === 1)) return reshape(t, [b, size, c]);
  const axes = [b * n[0], win[0], n[1], win[1], n[2], win[2] * c];
  return reshape(permute(reshape(t, axes), [0, 2, 4, 1, 3, 5]), [-1, size, c]);
}

/**
 * SAM's window_unpartition3D: windows [B * nW, w0*w1*w2, C] -> tokens [B, N, C] on `grid`, the
 * padding cropped. (SAM-Med3D's code views the padded grid as (Hp, Wp, Dp), which equals this
 * when the padded grid is a cube, as in its 8^3 grid with window 14; this is the permutation's
 * exact inverse for any grid.)
 */
export function windowUnpartition(y: Tensor, grid: Triple, win: Triple, b: number): Tensor {
  const c = y.shape[2];
  const { n, padded } = windowLayout(grid, win);
  // [B n0, n1, n2, w0, w1, w2 C] -> [B n0, w0, n1, w1, n2, w2 C] = [B, Dp, Hp, Wp, C]
  let t = n.every((k) => k === 1) ? reshape(y, [b, ...padded, c]) : reshape(
    permute(reshape(y, [b * n[0], n[1], n[2], win[0], win[1], win[2] * c]), [0, 3, 1, 4, 2, 5]),
    [b, ...padded, c],
  );
  for (let a = 0; a < 3; a++) if (padded[a] > grid[a]) t = slice(t, 1 + a, 0, grid[a]);
  return reshape(t, [b, -1, c]);
}

export class VitBlock extends Module {
  readonly norm1: LayerNorm;
  readonly attn: Attention;
  readonly adapter: Adapter | null;
  readonly norm2: LayerNorm;
  readonly mlp: Mlp;
  /** Token grid of the input (needed with windows or relative positions). */
  readonly grid: Triple | null;
  /** Attention window (tokens per axis) or null for global attention. */
  readonly window: Triple | null;
  constructor(
    dim: number,
    heads: number,
    opts: {
      mlpRatio: number;
      adapterDim: number;
      eps: number;
      qkvBias: boolean;
      rng: RandomSource;
      grid?: Triple;
      window?: Triple | null;
      relPos?: boolean;
    },
  ) {
    super();
    this.grid = opts.grid ?? null;
    this.window = opts.window ?? null;
    if ((this.window || opts.relPos) && !this.grid) {
      throw new Error("ViT block: windows and relative positions need the token grid");
    }
    this.norm1 = this.child("norm1", new LayerNorm(dim, opts.eps));
    this.attn = this.child(
      "attn",
      new Attention(dim, heads, {
        ...opts,
        relPos: opts.relPos ? (this.window ?? this.grid) : null,
      }),
    );
    this.adapter = opts.adapterDim > 0
      ? this.child("adapter", new Adapter(dim, opts.adapterDim, opts.rng))
      : null;
    this.norm2 = this.child("norm2", new LayerNorm(dim, opts.eps));
    this.mlp = this.child("mlp", new Mlp(dim, Math.round(dim * opts.mlpRatio), opts.rng));
  }
  /** x [B, N, C] -> [B, N, C] (N = the grid's token count, d-major, when a grid is set). */
  forward(x: Tensor): Tensor {
    const g = this.grid;
    if (g && x.shape[1] !== g[0] * g[1] * g[2]) {
      throw new Error(
        `ViT block: input ${x.describe()} does not have the ${g.join("x")} grid's tokens`,
      );
    }
    let h = this.norm1.forward(x);
    if (this.window) h = windowPartition(h, g!, this.window);
    let a = this.attn.forward(h);
    if (this.window) a = windowUnpartition(a, g!, this.window, x.shape[0]);
    if (this.adapter) a = this.adapter.forward(a);
    h = add(x, a);
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
  /** Attention window of the blocks not in globalAttnIndexes (null: global attention everywhere). */
  readonly window: Triple | null;
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
      relPos: opts.relPos ?? false,
      windowSize: opts.windowSize ?? 0,
      globalAttnIndexes: opts.globalAttnIndexes ?? [],
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
    const ws = s.windowSize;
    if (
      !(ws === 0 || triple(ws).every((w) => Number.isInteger(w) && w >= 1))
    ) {
      throw new Error(
        `ViT encoder: windowSize must be 0 (global attention) or positive integers, got ${
          JSON.stringify(ws)
        }`,
      );
    }
    this.window = ws === 0 ? null : triple(ws);
    for (const i of s.globalAttnIndexes) {
      if (!Number.isInteger(i) || i < 0 || i >= s.depth) {
        throw new Error(
          `ViT encoder: globalAttnIndexes entry ${i} is not a block index in [0, ${s.depth - 1}]`,
        );
      }
    }
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
          grid: this.grid,
          window: this.window && !s.globalAttnIndexes.includes(i) ? this.window : null,
          relPos: s.relPos,
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
    // [B, C, d, h, w] -> [B, d, h, w, C]: one permute, reading a blocked conv output in place
    const tokens = reshape(permute(f, [0, 2, 3, 4, 1]), [f.shape[0], -1, this.settings.dim]);
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
 * reported). Relative position tables (attn.rel_pos_d/h/w) of another length but the same head
 * width are resampled by linear interpolation, as SAM's get_rel_pos does for another attention
 * size (listed in `resampled`). With `strict`, backbone parameters absent from the file and file
 * keys the model does not use are errors too.
 */
export function loadVitWeights(
  enc: VitEncoder,
  file: string | SafetensorsFile,
  opts: { prefix?: string; strict?: boolean } = {},
): LoadWeightsReport & { resampled: string[] } {
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
  const resampled: string[] = [];
  const params = new Map(enc.namedParameters());
  for (let i = r.mismatched.length - 1; i >= 0; i--) {
    const m = r.mismatched[i];
    if (!/^blocks\.\d+\.attn\.rel_pos_[dhw]$/.test(m.name)) continue;
    if (m.file.length !== 2 || m.file[1] !== m.module[1]) continue;
    const table = resampleRelPos(st.readF32(prefix + m.name), m.file[0], m.module[0]);
    assign(params.get(m.name)!, table);
    r.mismatched.splice(i, 1);
    r.loaded.push(m.name);
    resampled.push(m.name);
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
    const isRel = (n: string) => /\.attn\.rel_pos_[dhw]$/.test(n);
    if (missing.length) {
      problems.push(
        `missing in the file (${missing.length}): ${missing.join(", ")}` +
          (missing.some(isRel)
            ? " (a file without relative position tables needs network.vit.relPos: false)"
            : ""),
      );
    }
    if (r.unexpected.length) {
      problems.push(
        `unexpected in the file (${r.unexpected.length}): ${r.unexpected.join(", ")}` +
          (r.unexpected.some(isRel) && !enc.settings.relPos
            ? " (the file has SAM's relative position tables: set network.vit.relPos: true, and " +
              "windowSize / globalAttnIndexes as its model's: 14 and [2, 5, 8, 11] for SAM-Med3D ViT-B)"
            : ""),
      );
    }
  }
  if (problems.length) {
    throw new Error(
      `Cannot load ViT weights from ${where}${opts.strict ? " (strict)" : ""}:\n  ${
        problems.join("\n  ")
      }`,
    );
  }
  return { ...r, resampled };
}
