/**
 * In-place optimiser kernels (no autograd): SGD (momentum, Nesterov), AdamW, EMA.
 * @module
 */
import type { Tensor } from "../tensor/tensor.ts";
import { checkF32 } from "./check.ts";
import { execOp } from "./exec.ts";

function sameShapes(fn: string, ts: [string, Tensor][]): void {
  for (const [name, t] of ts) checkF32(fn, name, t);
  const [n0, t0] = ts[0];
  for (const [name, t] of ts.slice(1)) {
    if (t.shape.join() !== t0.shape.join()) {
      throw new Error(
        `${fn}: ${name} ${t.describe()} must have the shape of ${n0} ${t0.describe()}`,
      );
    }
  }
}

function finite(fn: string, o: Record<string, number>): void {
  for (const [k, v] of Object.entries(o)) {
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new Error(`${fn}: option ${k} must be a finite number, got ${v}`);
    }
  }
}

/** Options of sgdUpdate. */
export interface SgdOptions {
  lr: number;
  momentum?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/** SGD step in place on param and momentumBuf (PyTorch semantics; the buffer starts at zero). */
export function sgdUpdate(
  param: Tensor,
  grad: Tensor,
  momentumBuf: Tensor,
  opts: SgdOptions,
): void {
  const fn = "sgdUpdate";
  sameShapes(fn, [["param", param], ["grad", grad], ["momentumBuf", momentumBuf]]);
  const o = { lr: opts.lr, momentum: opts.momentum ?? 0, weight_decay: opts.weightDecay ?? 0 };
  finite(fn, o);
  execOp("SGD_UPDATE", fn, [param, grad, momentumBuf], [], {
    ...o,
    nesterov: opts.nesterov ? 1 : 0,
  }, [
    "param",
    "grad",
    "momentumBuf",
  ]);
}

/** Options of adamwUpdate; step is 1-based. */
export interface AdamwOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  step: number;
}

/** AdamW step in place on param, m and v (PyTorch AdamW with bias correction). */
export function adamwUpdate(
  param: Tensor,
  grad: Tensor,
  m: Tensor,
  v: Tensor,
  opts: AdamwOptions,
): void {
  const fn = "adamwUpdate";
  sameShapes(fn, [["param", param], ["grad", grad], ["m", m], ["v", v]]);
  if (!Number.isInteger(opts.step) || opts.step < 1) {
    throw new Error(`${fn}: step must be an integer >= 1, got ${opts.step}`);
  }
  const o = {
    lr: opts.lr,
    beta1: opts.beta1 ?? 0.9,
    beta2: opts.beta2 ?? 0.999,
    eps: opts.eps ?? 1e-8,
    weight_decay: opts.weightDecay ?? 0.01,
  };
  finite(fn, o);
  execOp("ADAMW_UPDATE", fn, [param, grad, m, v], [], { ...o, step: opts.step }, [
    "param",
    "grad",
    "m",
    "v",
  ]);
}

/** ema = decay * ema + (1 - decay) * param, in place. */
export function emaUpdate(ema: Tensor, param: Tensor, decay: number): void {
  const fn = "emaUpdate";
  sameShapes(fn, [["ema", ema], ["param", param]]);
  finite(fn, { decay });
  execOp("EMA_UPDATE", fn, [ema, param], [], { decay }, ["ema", "param"]);
}
