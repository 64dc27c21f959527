/**
 * 3D U-Net encoder and decoder (METHOD.md section 2: per level two conv3x3x3 -> instance norm ->
 * LeakyReLU(0.01) blocks; a strided conv downsamples; the decoder upsamples with a transposed conv,
 * concatenates the skip and applies two blocks; a 1x1x1 head gives logits).
 */
import { concat, type Tensor } from "../engine.ts";
import { Conv3d, ConvBlock, ConvTranspose3d, type NormKind } from "./layers.ts";
import { Module, ModuleList, type RandomSource } from "./module.ts";
import type { UNetPlan } from "./plan.ts";

/** What any encoder gives the rest of the network (a transformer backbone implements the same). */
export interface EncoderOutput {
  /** Skip features from the highest resolution down (one per level except the deepest). */
  skips: Tensor[];
  /** Deep features F (C x d x h x w) of the lowest resolution. */
  deep: Tensor;
}

export interface Encoder extends Module {
  /** Channel count of each output level, highest resolution first; the last is F's. */
  readonly widths: number[];
  forward(x: Tensor): EncoderOutput;
}

class EncoderLevel extends Module {
  readonly first: ConvBlock;
  readonly second: ConvBlock;
  constructor(
    inC: number,
    outC: number,
    level: UNetPlan["levels"][number],
    norm: NormKind,
    rng: RandomSource,
  ) {
    super();
    this.first = this.child(
      "conv1",
      new ConvBlock(inC, outC, { kernel: level.kernel, stride: level.stride, norm, rng }),
    );
    this.second = this.child(
      "conv2",
      new ConvBlock(outC, outC, { kernel: level.kernel, norm, rng }),
    );
  }
  forward(x: Tensor): Tensor {
    return this.second.forward(this.first.forward(x));
  }
}

export class UNetEncoder extends Module implements Encoder {
  readonly widths: number[];
  readonly levels: ModuleList<EncoderLevel>;

  constructor(
    inChannels: number,
    readonly plan: UNetPlan,
    opts: { norm?: NormKind; rng: RandomSource },
  ) {
    super();
    this.widths = plan.levels.map((l) => l.width);
    const levels: EncoderLevel[] = [];
    let c = inChannels;
    for (const level of plan.levels) {
      levels.push(new EncoderLevel(c, level.width, level, opts.norm ?? "instance", opts.rng));
      c = level.width;
    }
    this.levels = this.child("levels", new ModuleList(levels));
  }

  forward(x: Tensor): EncoderOutput {
    const skips: Tensor[] = [];
    let h = x;
    for (let i = 0; i < this.levels.length; i++) {
      h = this.levels.items[i].forward(h);
      if (i < this.levels.length - 1) skips.push(h);
    }
    return { skips, deep: h };
  }
}

class DecoderLevel extends Module {
  readonly up: ConvTranspose3d;
  readonly first: ConvBlock;
  readonly second: ConvBlock;
  constructor(
    deepC: number,
    outC: number,
    upStride: [number, number, number],
    kernel: [number, number, number],
    norm: NormKind,
    rng: RandomSource,
  ) {
    super();
    this.up = this.child(
      "up",
      new ConvTranspose3d(deepC, outC, { stride: upStride, bias: false, rng }),
    );
    this.first = this.child("conv1", new ConvBlock(2 * outC, outC, { kernel, norm, rng }));
    this.second = this.child("conv2", new ConvBlock(outC, outC, { kernel, norm, rng }));
  }
  forward(x: Tensor, skip: Tensor): Tensor {
    const u = this.up.forward(x);
    return this.second.forward(this.first.forward(concat([u, skip], 1)));
  }
}

export interface DecoderOutput {
  logits: Tensor;
  /** Last decoder features before the head (h in L_cac). */
  features: Tensor;
  /** Lower-resolution logits for deep supervision, highest resolution first (empty when off). */
  deepLogits: Tensor[];
}

export class UNetDecoder extends Module {
  readonly levels: ModuleList<DecoderLevel>;
  readonly head: Conv3d;
  readonly deepHeads: ModuleList<Conv3d>;

  constructor(
    readonly plan: UNetPlan,
    readonly numClasses: number,
    opts: { norm?: NormKind; rng: RandomSource; deepSupervision?: number },
  ) {
    super();
    const L = plan.levels.length;
    const levels: DecoderLevel[] = [];
    // levels[i] produces resolution i (i = L-2 .. 0); stored highest resolution first.
    for (let i = 0; i < L - 1; i++) {
      const here = plan.levels[i];
      const below = plan.levels[i + 1];
      levels.push(
        new DecoderLevel(
          below.width,
          here.width,
          below.stride,
          here.kernel,
          opts.norm ?? "instance",
          opts.rng,
        ),
      );
    }
    this.levels = this.child("levels", new ModuleList(levels));
    this.head = this.child(
      "head",
      new Conv3d(plan.levels[0].width, numClasses, { kernel: 1, rng: opts.rng, slope: 1 }),
    );
    const ds = Math.min(opts.deepSupervision ?? 0, Math.max(0, L - 2));
    const heads: Conv3d[] = [];
    for (let i = 1; i <= ds; i++) {
      heads.push(
        new Conv3d(plan.levels[i].width, numClasses, { kernel: 1, rng: opts.rng, slope: 1 }),
      );
    }
    this.deepHeads = this.child("deep_heads", new ModuleList(heads));
  }

  forward(deep: Tensor, skips: Tensor[]): DecoderOutput {
    let h = deep;
    const deepLogits: Tensor[] = [];
    for (let i = this.levels.length - 1; i >= 0; i--) {
      h = this.levels.items[i].forward(h, skips[i]);
      if (i >= 1 && i <= this.deepHeads.length) {
        deepLogits.unshift(this.deepHeads.items[i - 1].forward(h));
      }
    }
    return { logits: this.head.forward(h), features: h, deepLogits };
  }
}

/** A plain U-Net: one encoder and one decoder (the supervised and early-fusion baselines). */
export class UNet extends Module {
  readonly encoder: UNetEncoder;
  readonly decoder: UNetDecoder;
  constructor(
    inChannels: number,
    numClasses: number,
    plan: UNetPlan,
    opts: { norm?: NormKind; rng: RandomSource; deepSupervision?: number },
  ) {
    super();
    this.encoder = this.child("encoder", new UNetEncoder(inChannels, plan, opts));
    this.decoder = this.child("decoder", new UNetDecoder(plan, numClasses, opts));
  }
  forward(x: Tensor): DecoderOutput & { deep: Tensor } {
    const e = this.encoder.forward(x);
    return { ...this.decoder.forward(e.deep, e.skips), deep: e.deep };
  }
}
