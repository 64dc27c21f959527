/**
 * Basic 3D layers: convolution, transposed convolution, normalisation, and the
 * conv -> norm -> LeakyReLU block the U-Net is made of.
 */
import {
  conv3d,
  convTranspose3d,
  groupNorm,
  instanceNorm,
  type NormActivation,
  type Tensor,
} from "../engine.ts";
import { kaimingNormal, Module, type RandomSource } from "./module.ts";

export type Triple = [number, number, number];

export function triple(v: number | Triple): Triple {
  return typeof v === "number" ? [v, v, v] : [v[0], v[1], v[2]];
}

/**
 * How convolution weights start: "kaiming" (normal, std gain/sqrt(fan_in) for the LeakyReLU that
 * follows, biases 0; nnU-Net's choice) or "pytorch" (PyTorch's default: weights and biases uniform
 * in +-1/sqrt(fan_in), with the fan of a transposed convolution taken from its output channels).
 */
export type InitScheme = "kaiming" | "pytorch";

let initScheme: InitScheme = "kaiming";

/** Builds layers inside `build` with the given initialisation (the setting ends with the call). */
export function withInitScheme<T>(scheme: InitScheme, build: () => T): T {
  const prev = initScheme;
  initScheme = scheme;
  try {
    return build();
  } finally {
    initScheme = prev;
  }
}

function uniformSamples(n: number, rng: RandomSource, bound: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (2 * rng() - 1) * bound;
  return out;
}

function initWeights(n: number, fanIn: number, rng: RandomSource, slope: number, torchFan: number) {
  return initScheme === "pytorch"
    ? uniformSamples(n, rng, 1 / Math.sqrt(torchFan))
    : kaimingNormal(n, fanIn, rng, slope);
}

function initBias(n: number, rng: RandomSource, fanIn: number): Float32Array {
  return initScheme === "pytorch"
    ? uniformSamples(n, rng, 1 / Math.sqrt(fanIn))
    : new Float32Array(n);
}

export interface Conv3dOptions {
  kernel?: number | Triple;
  stride?: number | Triple;
  /** Default: "same" padding for odd kernels (kernel // 2 per axis). */
  padding?: number | Triple;
  bias?: boolean;
  rng: RandomSource;
  /** Negative slope of the activation that follows (for the initialisation gain). */
  slope?: number;
}

export class Conv3d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly kernel: Triple;
  readonly stride: Triple;
  readonly padding: Triple;

  constructor(readonly inChannels: number, readonly outChannels: number, opts: Conv3dOptions) {
    super();
    this.kernel = triple(opts.kernel ?? 3);
    this.stride = triple(opts.stride ?? 1);
    this.padding = opts.padding === undefined
      ? this.kernel.map((k) => Math.floor(k / 2)) as Triple
      : triple(opts.padding);
    const fanIn = inChannels * this.kernel[0] * this.kernel[1] * this.kernel[2];
    this.weight = this.param(
      "weight",
      initWeights(outChannels * fanIn, fanIn, opts.rng, opts.slope ?? 0.01, fanIn),
      [outChannels, inChannels, ...this.kernel],
    );
    this.bias = opts.bias === false
      ? null
      : this.param("bias", initBias(outChannels, opts.rng, fanIn), [outChannels]);
  }

  forward(x: Tensor): Tensor {
    return conv3d(x, this.weight, this.bias, { stride: this.stride, padding: this.padding });
  }
}

export class ConvTranspose3d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly stride: Triple;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    opts: { stride?: number | Triple; bias?: boolean; rng: RandomSource },
  ) {
    super();
    this.stride = triple(opts.stride ?? 2);
    const k = this.stride; // kernel equals stride: non-overlapping upsampling
    const fanIn = inChannels * k[0] * k[1] * k[2];
    this.weight = this.param(
      "weight",
      initWeights(
        inChannels * outChannels * k[0] * k[1] * k[2],
        fanIn,
        opts.rng,
        1,
        outChannels * k[0] * k[1] * k[2],
      ),
      [inChannels, outChannels, ...k],
    );
    this.bias = opts.bias === false
      ? null
      : this.param("bias", initBias(outChannels, opts.rng, outChannels * k[0] * k[1] * k[2]), [
        outChannels,
      ]);
  }

  forward(x: Tensor): Tensor {
    return convTranspose3d(x, this.weight, this.bias, { stride: this.stride });
  }
}

export type NormKind = "instance" | "group";

export class Norm3d extends Module {
  readonly gamma: Tensor;
  readonly beta: Tensor;
  readonly groups: number;

  constructor(readonly channels: number, readonly kind: NormKind = "instance", groups = 8) {
    super();
    this.groups = kind === "instance" ? channels : Math.min(groups, channels);
    if (channels % this.groups !== 0) {
      throw new Error(
        `Group norm: ${channels} channels are not divisible into ${this.groups} groups`,
      );
    }
    this.gamma = this.param("weight", new Float32Array(channels).fill(1), [channels]);
    this.beta = this.param("bias", new Float32Array(channels), [channels]);
  }

  /** Normalises x; `activation` fuses a ReLU or leaky ReLU (slope 0.01) into the same op. */
  forward(x: Tensor, activation: NormActivation = "none"): Tensor {
    const opts = { eps: 1e-5, activation, slope: 0.01 };
    return this.kind === "instance"
      ? instanceNorm(x, this.gamma, this.beta, opts)
      : groupNorm(x, this.gamma, this.beta, { ...opts, groups: this.groups });
  }
}

export type Activation = "leaky_relu" | "relu";

export interface BlockOptions {
  kernel?: number | Triple;
  stride?: number | Triple;
  norm?: NormKind;
  activation?: Activation;
  rng: RandomSource;
}

/** conv -> norm -> activation. The conv has no bias: the norm's shift makes it redundant. */
export class ConvBlock extends Module {
  readonly conv: Conv3d;
  readonly norm: Norm3d;
  readonly activation: Activation;

  constructor(inChannels: number, outChannels: number, opts: BlockOptions) {
    super();
    this.activation = opts.activation ?? "leaky_relu";
    this.conv = this.child(
      "conv",
      new Conv3d(inChannels, outChannels, {
        kernel: opts.kernel ?? 3,
        stride: opts.stride ?? 1,
        bias: false,
        rng: opts.rng,
        slope: this.activation === "relu" ? 0 : 0.01,
      }),
    );
    this.norm = this.child("norm", new Norm3d(outChannels, opts.norm ?? "instance"));
  }

  forward(x: Tensor): Tensor {
    // The activation is fused into the norm: the normalised, not yet activated tensor is never kept.
    return this.norm.forward(this.conv.forward(x), this.activation);
  }
}
