/**
 * Group normalisation (instance norm = one group per channel): GROUP_NORM_FORWARD / _BACKWARD.
 * dgamma and dbeta accumulate into existing gradients (native += slot convention).
 * @module
 */
import { getBackend } from "../backend/backend.ts";
import { allocTensor, recordNode, type Tensor, wrapNative } from "../tensor/tensor.ts";
import { checkF32, needsGrad } from "./check.ts";
import { execOp } from "./exec.ts";

/** Options of groupNorm. */
export interface GroupNormOptions {
  groups: number;
  eps?: number;
}

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
  return groupNormImpl("groupNorm", x, gamma, beta, opts.groups, opts.eps ?? 1e-5);
}

/** Instance norm: group norm with one group per channel. */
export function instanceNorm(
  x: Tensor,
  gamma: Tensor | null,
  beta: Tensor | null,
  opts: { eps?: number } = {},
): Tensor {
  checkF32("instanceNorm", "x", x);
  return groupNormImpl("instanceNorm", x, gamma, beta, x.shape[1] ?? 0, opts.eps ?? 1e-5);
}

function groupNormImpl(
  fn: string,
  x: Tensor,
  gammaIn: Tensor | null,
  betaIn: Tensor | null,
  groups: number,
  eps: number,
): Tensor {
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
  const params = { groups, eps };
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
    recordNode(fn, [x, gammaIn, betaIn], [y], [x, gamma, mean, rstd], (g, ctx) => {
      const slots = [null, ctx.needs[1] ? ctx.slot(1) : null, ctx.needs[2] ? ctx.slot(2) : null];
      const [pdx, pdg, pdb] = execOp(
        "GROUP_NORM_BACKWARD",
        fn,
        [x, g[0]!, gamma, mean, rstd],
        slots,
        params,
        ["x", "dy", "gamma", "mean", "rstd"],
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
