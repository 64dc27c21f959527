/**
 * The cross-modality collaboration network (METHOD.md section 2): modality-specific encoders, a
 * modality-independent aware (MIA) channel-attention block per modality, one fusion layer over all
 * modalities, and modality-specific (or one shared) decoders.
 */
import {
  add,
  concat,
  matmul,
  mul,
  neg,
  reshape,
  sigmoid,
  softmax,
  type Tensor,
} from "../engine.ts";
import { Conv3d, ConvBlock, Norm3d, type NormKind } from "./layers.ts";
import { Module, ModuleList, type RandomSource } from "./module.ts";
import type { UNetPlan } from "./plan.ts";
import { type DecoderOutput, type Encoder, UNetDecoder, UNetEncoder } from "./unet.ts";
import { VitEncoder, type VitSettings } from "./vit.ts";

/**
 * MIA block: channel self-attention on F flattened to X (C x N):
 * E = X X^T, A = softmax_row(max_row(E) - E), Y = gamma * (A X) + X, gamma initialised to 0.
 * softmax is invariant to a per-row constant, so softmax(max_row(E) - E) = softmax(-E) exactly (the
 * kernel subtracts the row maximum internally for stability); the gradient is identical too.
 */
export class MiaBlock extends Module {
  readonly gamma: Tensor;
  constructor() {
    super();
    this.gamma = this.param("gamma", new Float32Array(1), [1]);
  }
  forward(f: Tensor): Tensor {
    const [b, c, ...spatial] = f.shape;
    const n = spatial.reduce((p, s) => p * s, 1);
    const x = reshape(f, [b, c, n]);
    const energy = matmul(x, x, { transB: true }); // [B, C, C]
    const attention = softmax(neg(energy), 2);
    const out = matmul(attention, x); // [B, C, N]
    const y = add(mul(out, this.gamma), x);
    return reshape(y, [b, c, ...spatial]);
  }
}

export type FusionMode = "add" | "concat" | "none";

/**
 * G = sigmoid(B2(B1(concat_m Y^m))); Z^m = Y^m + G ("add") or conv1x1(act(norm(concat(G, Y^m))))
 * ("concat"). With `zeroGate` (ours, the default), "add" is Z^m = Y^m + alpha * G with a learnable
 * scalar alpha initialised to 0, so the layer starts as the identity like MIA: at step 0 it does
 * not add 0.5-0.98 to every decoder input.
 */
export class FusionLayer extends Module {
  readonly b1: ConvBlock;
  readonly b2: ConvBlock;
  readonly mixNorms: ModuleList<Norm3d>;
  readonly mixConvs: ModuleList<Conv3d>;
  readonly alpha: Tensor | null;

  constructor(
    readonly modalities: number,
    readonly channels: number,
    readonly mode: "add" | "concat",
    opts: {
      kernel?: [number, number, number];
      norm?: NormKind;
      rng: RandomSource;
      zeroGate?: boolean;
    },
  ) {
    super();
    this.alpha = mode === "add" && opts.zeroGate
      ? this.param("alpha", new Float32Array(1), [1])
      : null;
    const kernel = opts.kernel ?? [3, 3, 3];
    this.b1 = this.child(
      "b1",
      new ConvBlock(modalities * channels, channels, { kernel, norm: opts.norm, rng: opts.rng }),
    );
    this.b2 = this.child(
      "b2",
      new ConvBlock(channels, channels, { kernel, norm: opts.norm, rng: opts.rng }),
    );
    const norms: Norm3d[] = [];
    const convs: Conv3d[] = [];
    if (mode === "concat") {
      for (let m = 0; m < modalities; m++) {
        norms.push(new Norm3d(2 * channels, opts.norm ?? "instance"));
        convs.push(new Conv3d(2 * channels, channels, { kernel: 1, rng: opts.rng }));
      }
    }
    this.mixNorms = this.child("mix_norms", new ModuleList(norms));
    this.mixConvs = this.child("mix_convs", new ModuleList(convs));
  }

  forward(ys: Tensor[]): Tensor[] {
    if (ys.length !== this.modalities) {
      throw new Error(`Fusion layer: got ${ys.length} modalities, built for ${this.modalities}`);
    }
    const g = sigmoid(this.b2.forward(this.b1.forward(concat(ys, 1))));
    if (this.mode === "add") {
      const gated = this.alpha ? mul(g, this.alpha) : g;
      return ys.map((y) => add(y, gated));
    }
    return ys.map((y, m) =>
      this.mixConvs.items[m].forward(
        this.mixNorms.items[m].forward(concat([g, y], 1), "leaky_relu"),
      )
    );
  }
}

export interface CmcOptions {
  modalities: number;
  numClasses: number;
  plan: UNetPlan;
  /** MIA attention on each branch (ablation: off). */
  mia?: boolean;
  /** Fusion of the branches: "add" (paper), "concat" (authors' code), "none" (ablation). */
  fusion?: FusionMode;
  /** "add" fusion starts as the identity (a learnable gate scale initialised to 0). */
  fusionZeroGate?: boolean;
  /** One decoder for all modalities instead of one per modality. */
  sharedDecoder?: boolean;
  /** Number of extra lower-resolution heads for deep supervision (0 = off). */
  deepSupervision?: number;
  norm?: NormKind;
  /** ViT encoders (the foundation backbone) instead of U-Net encoders; the decoders follow `plan`. */
  vit?: VitSettings;
  rng: RandomSource;
}

export interface BranchOutput extends DecoderOutput {
  /** Encoder deep features F^m (before MIA), used by L_csc. */
  deep: Tensor;
}

export class CmcNet extends Module {
  readonly encoders: ModuleList<Encoder & Module>;
  readonly mias: ModuleList<MiaBlock>;
  readonly fusion: FusionLayer | null;
  readonly decoders: ModuleList<UNetDecoder>;
  readonly options: Required<Omit<CmcOptions, "rng" | "vit">>;
  readonly vit: VitSettings | null;

  constructor(opts: CmcOptions) {
    super();
    if (opts.modalities < 2) {
      throw new Error(`CMC needs at least 2 modalities, got ${opts.modalities}`);
    }
    this.options = {
      modalities: opts.modalities,
      numClasses: opts.numClasses,
      plan: opts.plan,
      mia: opts.mia ?? true,
      fusion: opts.fusion ?? "add",
      fusionZeroGate: opts.fusionZeroGate ?? false,
      sharedDecoder: opts.sharedDecoder ?? false,
      deepSupervision: opts.deepSupervision ?? 0,
      norm: opts.norm ?? "instance",
    };
    const { modalities, plan, norm } = this.options;
    const rng = opts.rng;
    this.vit = opts.vit ?? null;
    const encs: (Encoder & Module)[] = [];
    for (let m = 0; m < modalities; m++) {
      encs.push(
        this.vit
          ? new VitEncoder({ ...this.vit, inChannels: 1, plan, norm, rng })
          : new UNetEncoder(1, plan, { norm, rng }),
      );
    }
    this.encoders = this.child("encoders", new ModuleList(encs));
    const mias: MiaBlock[] = [];
    if (this.options.mia) { for (let m = 0; m < modalities; m++) mias.push(new MiaBlock()); }
    this.mias = this.child("mias", new ModuleList(mias));
    const deepC = plan.levels[plan.levels.length - 1].width;
    const deepKernel = plan.levels[plan.levels.length - 1].kernel;
    this.fusion = this.options.fusion === "none" ? null : this.child(
      "fusion",
      new FusionLayer(modalities, deepC, this.options.fusion, {
        kernel: deepKernel,
        norm,
        rng,
        zeroGate: this.options.fusionZeroGate,
      }),
    );
    const decs: UNetDecoder[] = [];
    const nDec = this.options.sharedDecoder ? 1 : modalities;
    for (let m = 0; m < nDec; m++) {
      decs.push(
        new UNetDecoder(plan, opts.numClasses, {
          norm,
          rng,
          deepSupervision: this.options.deepSupervision,
        }),
      );
    }
    this.decoders = this.child("decoders", new ModuleList(decs));
  }

  /** xs: one patch per modality, each [B, 1, D, H, W]. */
  forward(xs: Tensor[]): BranchOutput[] {
    const M = this.options.modalities;
    if (xs.length !== M) {
      throw new Error(`CMC network: got ${xs.length} modality inputs, expected ${M}`);
    }
    const encoded = xs.map((x, m) => this.encoders.items[m].forward(x));
    const ys = encoded.map((
      e,
      m,
    ) => (this.options.mia ? this.mias.items[m].forward(e.deep) : e.deep));
    const zs = this.fusion ? this.fusion.forward(ys) : ys;
    return zs.map((z, m) => {
      const dec = this.decoders.items[this.options.sharedDecoder ? 0 : m];
      return { ...dec.forward(z, encoded[m].skips), deep: encoded[m].deep };
    });
  }
}
