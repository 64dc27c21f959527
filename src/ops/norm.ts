/**
 * Group normalisation (instance norm = one group per channel): GROUP_NORM_FORWARD / _BACKWARD.
 * dgamma and dbeta accumulate into existing gradients (native += slot convention).
 * @module
 */
import { getBackend } from "../backend/backend.ts";
import { allocTensor, recordNode, type Tensor, wrapNative } from "../tensor/tensor.ts";
import { checkF32, needsGrad } from "./check.ts";
import { execOp } from "./exec.ts";

/**
 * An activation fused after the norm's affine step: one pass over memory, and the pre-activation
 * tensor is never stored (backward recomputes it from x and the statistics).
 */
export type NormActivation = "none" | "relu" | "leaky_relu";

/** Options shared by groupNorm and instanceNorm. */
export interface NormOptions {
  eps?: number;
  /** Fused activation (default "none"). */
  activation?: NormActivation;
  /** Negative slope of "leaky_relu" (default 0.01, as PyTorch). */
  slope?: number;
}

/** Options of groupNorm. */
export interface GroupNormOptions extends NormOptions {
  groups: number;
}

const ACTIVATION_CODE: Record<NormActivation, number> = { none: 0, relu: 1, leaky_relu: 2 };

// Per-backend cache of the constant gamma = 1 / beta = 0 vectors used when none is given.
const constants = new WeakMap<object, Map<string, Tensor>>();

function constant(c: number, value: number): Tensor {
  const be = getBackend();
  let m = constants.get(be);
  if (!m) constants.set(be, m = new Map());
  const key = `${c}:${value}`;
  let t = m.get(key);
  if (!t || t.disposed) {
    t = allocTensor([c], "f32", "groupNorm").keep();
    execOp("FILL", "groupNorm", [], [t], { value });
    m.set(key, t);
  }
  return t;
}

/**
 * Group norm over x [N,C,...] with per-channel gamma, beta [C] (null: 1 and 0, not learned).
 * Biased variance, as PyTorch.
 */
export function groupNorm(
  x: Tensor,
  gamma: Tensor | null,
  beta: Tensor | null,
  opts: GroupNormOptions,
): Tensor {
  return groupNormImpl("groupNorm", x, gamma, beta, opts.groups, opts);
}

/** Instance norm: group norm with one group per channel. */
export function instanceNorm(
  x: Tensor,
  gamma: Tensor | null,
  beta: Tensor | null,
  opts: NormOptions = {},
): Tensor {
  checkF32("instanceNorm", "x", x);
  return groupNormImpl("instanceNorm", x, gamma, beta, x.shape[1] ?? 0, opts);
}

function groupNormImpl(
  fn: string,
  x: Tensor,
  gammaIn: Tensor | null,
  betaIn: Tensor | null,
  groups: number,
  opts: NormOptions,
): Tensor {
  const eps = opts.eps ?? 1e-5;
  const activation = opts.activation ?? "none";
  const slope = opts.slope ?? 0.01;
  if (!(activation in ACTIVATION_CODE)) {
    throw new Error(
      `${fn}: activation must be "none", "relu" or "leaky_relu", got ${JSON.stringify(activation)}`,
    );
  }
  if (!Number.isFinite(slope)) throw new Error(`${fn}: slope must be finite, got ${slope}`);
  checkF32(fn, "x", x);
  if (x.shape.length < 2) throw new Error(`${fn}: x ${x.describe()} must have shape [N,C,...]`);
  const [n, c] = x.shape;
  if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) {
    throw new Error(
      `${fn}: groups ${groups} must be a positive divisor of the ${c} channels of x ${x.describe()}`,
    );
  }
  if (!(eps > 0)) throw new Error(`${fn}: eps must be > 0, got ${eps}`);
  for (const [name, t] of [["gamma", gammaIn], ["beta", betaIn]] as const) {
    if (t === null) continue;
    checkF32(fn, name, t);
    if (t.shape.length !== 1 || t.shape[0] !== c) {
      throw new Error(
        `${fn}: ${name} ${t.describe()} must have shape [${c}] (channels of x ${x.describe()})`,
      );
    }
  }
  const gamma = gammaIn ?? constant(c, 1);
  const beta = betaIn ?? constant(c, 0);
  const fused = activation !== "none";
  const params = { groups, eps, activation: ACTIVATION_CODE[activation], alpha: fused ? slope : 0 };
  const [py, pm, pr] = execOp("GROUP_NORM_FORWARD", fn, [x, gamma, beta], [], params, [
    "x",
    "gamma",
    "beta",
  ]);
  const be = getBackend();
  const y = wrapNative(py, x.shape, "f32", be);
  const mean = wrapNative(pm, [n, groups], "f32", be);
  const rstd = wrapNative(pr, [n, groups], "f32", be);
  if (needsGrad(x, gammaIn, betaIn)) {
    const xShape = x.shape;
    const saved = fused ? [x, gamma, mean, rstd, beta] : [x, gamma, mean, rstd];
    recordNode(fn, [x, gammaIn, betaIn], [y], saved, (g, ctx) => {
      const slots = [null, ctx.needs[1] ? ctx.slot(1) : null, ctx.needs[2] ? ctx.slot(2) : null];
      const [pdx, pdg, pdb] = execOp(
        "GROUP_NORM_BACKWARD",
        fn,
        [x, g[0]!, gamma, mean, rstd, fused ? beta : null],
        slots,
        params,
        ["x", "dy", "gamma", "mean", "rstd", "beta"],
      );
      const b2 = getBackend();
      const dx = wrapNative(pdx, xShape, "f32", b2);
      const dg = slots[1] ?? wrapNative(pdg, [c], "f32", b2);
      const db = slots[2] ?? wrapNative(pdb, [c], "f32", b2);
      return [ctx.needs[0] ? dx : null, ctx.needs[1] ? dg : null, ctx.needs[2] ? db : null];
    });
  }
  // Internal tensors: released now, or once backward has used them.
  mean.dispose();
  rstd.dispose();
  return y;
}
