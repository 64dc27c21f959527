/**
 * How the cross-module suites (parity, gradient checks) call each engine op of a golden case: the
 * engine function, its arguments built from the case's input tensors and attrs, and the native
 * kernels the op and its gradient rule need (checked with backend.supportsOp).
 *
 * @module
 */

import type { Backend, OpName, Tensor } from "../src/engine.ts";
import * as E from "../src/engine.ts";
import { type GoldenCase, goldenTensor } from "./golden_io.ts";

/** Attributes of a golden case, as stored in its header. */
export type Attrs = Readonly<Record<string, unknown>>;

/** One engine op as the suites call it. */
export interface OpSpec {
  /** Native kernels used by the forward op and its gradient rule. */
  readonly kernels: readonly OpName[];
  /** Runs the op on inputs in case order; returns outputs by golden output name. */
  run(xs: Tensor[], attrs: Attrs): Record<string, Tensor>;
}

/** eps and the optional fused activation of a norm case. */
function normOpts(a: Attrs): E.NormOptions {
  const act = a.activation;
  if (act === undefined) return { eps: num(a, "eps") };
  if (act !== "relu" && act !== "leaky_relu") {
    throw new Error(
      `Golden attr activation is ${JSON.stringify(act)}, expected "relu" or "leaky_relu"`,
    );
  }
  return {
    eps: num(a, "eps"),
    activation: act,
    slope: act === "leaky_relu" ? num(a, "slope") : undefined,
  };
}

function num(attrs: Attrs, key: string): number {
  const v = attrs[key];
  if (typeof v !== "number") {
    throw new Error(`Golden attr ${key} is ${JSON.stringify(v)}, expected a number`);
  }
  return v;
}

function triple(v: unknown): number | [number, number, number] {
  if (typeof v === "number") return v;
  if (Array.isArray(v) && v.length === 3) return [v[0], v[1], v[2]];
  throw new Error(`Golden conv attr ${JSON.stringify(v)}: expected a number or [d,h,w]`);
}

const CONV: OpName[] = ["CONV3D_FORWARD", "CONV3D_BACKWARD_DATA", "CONV3D_BACKWARD_WEIGHTS"];
const DECONV: OpName[] = [
  "CONV_TRANSPOSE3D_FORWARD",
  "CONV_TRANSPOSE3D_BACKWARD_DATA",
  "CONV_TRANSPOSE3D_BACKWARD_WEIGHTS",
];
const UNARY: OpName[] = ["UNARY_FORWARD", "UNARY_BACKWARD"];
const BINARY: OpName[] = ["BINARY", "REDUCE"];

function unary(f: (x: Tensor) => Tensor): OpSpec {
  return { kernels: UNARY, run: (xs) => ({ y: f(xs[0]) }) };
}

function binary(f: (a: Tensor, b: Tensor) => Tensor): OpSpec {
  return { kernels: BINARY, run: (xs) => ({ y: f(xs[0], xs[1]) }) };
}

/** Every op that golden cases use, by engine function name. */
export const OP_SPECS: Readonly<Record<string, OpSpec>> = {
  conv3d: {
    kernels: CONV,
    run: (xs, a) => ({
      y: E.conv3d(xs[0], xs[1], a.hasBias ? xs[2] : null, {
        stride: triple(a.stride),
        padding: triple(a.padding),
        dilation: triple(a.dilation),
      }),
    }),
  },
  convTranspose3d: {
    kernels: DECONV,
    run: (xs, a) => ({
      y: E.convTranspose3d(xs[0], xs[1], a.hasBias ? xs[2] : null, { stride: num(a, "stride") }),
    }),
  },
  groupNorm: {
    kernels: ["GROUP_NORM_FORWARD", "GROUP_NORM_BACKWARD"],
    run: (xs, a) => ({
      y: E.groupNorm(xs[0], xs[1], xs[2], { groups: num(a, "groups"), ...normOpts(a) }),
    }),
  },
  instanceNorm: {
    kernels: ["GROUP_NORM_FORWARD", "GROUP_NORM_BACKWARD"],
    run: (xs, a) => ({ y: E.instanceNorm(xs[0], xs[1], xs[2], normOpts(a)) }),
  },
  relu: unary(E.relu),
  leakyRelu: { kernels: UNARY, run: (xs, a) => ({ y: E.leakyRelu(xs[0], num(a, "slope")) }) },
  sigmoid: unary(E.sigmoid),
  gelu: unary(E.gelu),
  exp: unary(E.exp),
  log: unary(E.log),
  tanh: unary(E.tanh),
  sqrt: unary(E.sqrt),
  abs: unary(E.abs),
  neg: unary(E.neg),
  add: binary(E.add),
  sub: binary(E.sub),
  mul: binary(E.mul),
  div: binary(E.div),
  maximum: binary(E.maximum),
  affine: {
    kernels: ["AFFINE_SCALAR"],
    run: (xs, a) => ({ y: E.affine(xs[0], num(a, "alpha"), num(a, "beta")) }),
  },
  mulScalar: {
    kernels: ["AFFINE_SCALAR"],
    run: (xs, a) => ({ y: E.mulScalar(xs[0], num(a, "s")) }),
  },
  addScalar: {
    kernels: ["AFFINE_SCALAR"],
    run: (xs, a) => ({ y: E.addScalar(xs[0], num(a, "s")) }),
  },
  concat: { kernels: ["CONCAT", "SLICE"], run: (xs, a) => ({ y: E.concat(xs, num(a, "axis")) }) },
  slice: {
    kernels: ["SLICE", "CONCAT"],
    run: (xs, a) => ({ y: E.slice(xs[0], num(a, "axis"), num(a, "start"), num(a, "length")) }),
  },
  split: {
    kernels: ["SLICE", "CONCAT"],
    run: (xs, a) => {
      const parts = E.split(xs[0], num(a, "axis"), a.sizes as number[]);
      return Object.fromEntries(parts.map((p, i) => [`y${i}`, p]));
    },
  },
  expand: {
    kernels: ["EXPAND", "REDUCE"],
    run: (xs, a) => ({ y: E.expand(xs[0], a.shape as number[]) }),
  },
  reshape: { kernels: ["RESHAPE"], run: (xs, a) => ({ y: E.reshape(xs[0], a.shape as number[]) }) },
  permute: { kernels: ["PERMUTE"], run: (xs, a) => ({ y: E.permute(xs[0], a.order as number[]) }) },
  matmul: {
    kernels: ["MATMUL", "REDUCE"],
    run: (xs, a) => ({
      y: E.matmul(xs[0], xs[1], { transA: a.transA === true, transB: a.transB === true }),
    }),
  },
  softmax: {
    kernels: ["SOFTMAX_FORWARD", "SOFTMAX_BACKWARD"],
    run: (xs, a) => ({ y: E.softmax(xs[0], num(a, "axis")) }),
  },
  sum: {
    kernels: ["REDUCE", "EXPAND"],
    run: (xs, a) => ({
      y: E.sum(xs[0], a.axes as number[] | "all", { keepDims: a.keepDims === true }),
    }),
  },
  mean: {
    kernels: ["REDUCE", "EXPAND"],
    run: (xs, a) => ({
      y: E.mean(xs[0], a.axes as number[] | "all", { keepDims: a.keepDims === true }),
    }),
  },
  max: {
    kernels: ["REDUCE", "REDUCE_MAX_BACKWARD"],
    run: (xs, a) => ({
      y: E.max(xs[0], a.axes as number[] | "all", { keepDims: a.keepDims === true }),
    }),
  },
  adaptiveAvgPool3d: {
    kernels: ["ADAPTIVE_AVG_POOL3D_FORWARD", "ADAPTIVE_AVG_POOL3D_BACKWARD"],
    run: (xs, a) => ({ y: E.adaptiveAvgPool3d(xs[0], a.outDims as [number, number, number]) }),
  },
  l2Normalize: {
    kernels: ["L2_NORMALIZE_FORWARD", "L2_NORMALIZE_BACKWARD"],
    run: (xs, a) => ({ y: E.l2Normalize(xs[0], num(a, "axis"), num(a, "eps")) }),
  },
  softmaxCrossEntropy: {
    kernels: ["SOFTMAX_CROSS_ENTROPY_FORWARD", "SOFTMAX_CROSS_ENTROPY_BACKWARD"],
    run: (xs, a) => {
      const opts = typeof a.ignoreIndex === "number" ? { ignoreIndex: a.ignoreIndex } : {};
      const { loss, probs } = E.softmaxCrossEntropy(xs[0], xs[1], opts);
      return { loss, probs };
    },
  },
  argmax: {
    kernels: ["ARGMAX", "RESHAPE"],
    run: (xs, a) => ({ y: E.argmax(xs[0], num(a, "axis"), { keepDims: a.keepDims === true }) }),
  },
  equal: { kernels: ["BINARY"], run: (xs) => ({ y: E.equal(xs[0], xs[1]) }) },
  diceStats: {
    kernels: ["DICE_STATS_FORWARD", "DICE_STATS_BACKWARD"],
    run: (xs) => ({ stats: E.diceStats(xs[0], xs[1]) }),
  },
};

/** Native kernels of the optimizer cases (no autograd: in-place updates). */
export const OPTIMIZER_KERNELS: Readonly<Record<string, readonly OpName[]>> = {
  sgdUpdate: ["SGD_UPDATE"],
  adamwUpdate: ["ADAMW_UPDATE"],
  emaUpdate: ["EMA_UPDATE"],
};

/** The kernels a golden case needs, or throws when the op is unknown to the suites. */
export function caseKernels(c: GoldenCase): readonly OpName[] {
  const k = OP_SPECS[c.op]?.kernels ?? OPTIMIZER_KERNELS[c.op];
  if (!k) throw new Error(`Golden case ${c.name}: op "${c.op}" has no entry in tests/op_invoke.ts`);
  return k;
}

/** Kernels of `kernels` that the backend lacks. */
export function missingKernels(backend: Backend, kernels: readonly OpName[]): OpName[] {
  return kernels.filter((k) => !backend.supportsOp(k));
}

/** Builds engine input tensors of a case (requiresGrad as stored, or forced off). */
export function caseInputs(c: GoldenCase, opts: { grad?: boolean } = {}): Tensor[] {
  return c.inputs.map((i) => {
    const t = goldenTensor(c, `in.${i.name}`);
    return E.tensor(t.data.slice(), [...t.shape], {
      dtype: t.dtype,
      requiresGrad: (opts.grad ?? true) && i.requiresGrad,
    });
  });
}

/** True when a 5-D f32 tensor has a channel count that is a multiple of 16 (the CPU blocked layout). */
export function isBlockable(shape: readonly number[], dtype: string): boolean {
  return dtype === "f32" && shape.length === 5 && shape[1] % 16 === 0;
}

/**
 * Inputs of a case that can arrive in the backend's activation layout: blockable ones, except
 * convolution weights (w), which are parameters made by factories and stay plain.
 */
export function layoutVariantInputs(c: GoldenCase): boolean[] {
  return c.inputs.map((i) => {
    const t = goldenTensor(c, `in.${i.name}`);
    return i.name !== "w" && isBlockable(t.shape, t.dtype);
  });
}

/**
 * Routes a 5-D tensor whose channel count is a multiple of 16 through a 1x1x1 identity convolution,
 * so that it arrives in whatever layout the backend gives conv outputs (blocked on the CPU). The
 * result is exactly x (every output is 1*x + sums of 0*x) and its gradient passes back unchanged.
 */
export function throughConvLayout(x: Tensor): Tensor {
  const c = x.shape[1];
  const eye = new Float32Array(c * c);
  for (let i = 0; i < c; i++) eye[i * c + i] = 1;
  return E.conv3d(x, E.tensor(eye, [c, c, 1, 1, 1]), null);
}

/** Every backend the suites try, in the order their tests are registered. */
export const DEVICES = ["cpu", "cuda"] as const;
/** A device name of {@link DEVICES}. */
export type Device = (typeof DEVICES)[number];

/** Result of trying to start a backend: the backend, or why it could not start. */
export interface Probe {
  readonly backend: Backend | null;
  readonly error: string;
}

/**
 * Tries to start every backend once. CUDA is tried first so that the CPU backend ends up current.
 * The CPU backend must always start; the others are optional on a machine.
 */
export function probeBackends(): Record<Device, Probe> {
  const probe = (device: Device): Probe => {
    try {
      return { backend: E.initBackend({ device }), error: "" };
    } catch (e) {
      return { backend: null, error: (e as Error).message };
    }
  };
  const cuda = probe("cuda");
  const cpu = probe("cpu");
  return { cpu, cuda };
}

/** Makes the backend of `device` current (it must have been probed successfully). */
export function useBackend(device: Device): void {
  if (E.getBackend().device !== device) E.initBackend({ device });
}
