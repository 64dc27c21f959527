/**
 * Batched matrix product (MATMUL) with transpose flags; rank-2 inputs are one matrix, a batch of
 * 1 broadcasts.
 * @module
 */
import { recordNode, type Tensor } from "../tensor/tensor.ts";
import { checkF32, checkRank, needsGrad } from "./check.ts";
import { exec1 } from "./exec.ts";
import { sum } from "./reduce.ts";

/** Options of matmul. */
export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
}

function mm(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  const fn = "matmul";
  const ra = a.shape.length, rb = b.shape.length;
  const ba = ra === 3 ? a.shape[0] : 1;
  const bb = rb === 3 ? b.shape[0] : 1;
  const M = transA ? a.shape[ra - 1] : a.shape[ra - 2];
  const Ka = transA ? a.shape[ra - 2] : a.shape[ra - 1];
  const Kb = transB ? b.shape[rb - 1] : b.shape[rb - 2];
  const N = transB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (Ka !== Kb) {
    throw new Error(
      `${fn}: inner dims differ: a ${a.describe()}${
        transA ? " (transposed)" : ""
      } gives K = ${Ka}, ` +
        `b ${b.describe()}${transB ? " (transposed)" : ""} gives K = ${Kb}`,
    );
  }
  if (ba !== bb && ba !== 1 && bb !== 1) {
    throw new Error(
      `${fn}: batch dims ${ba} (a ${a.describe()}) and ${bb} (b ${b.describe()}) differ and neither is 1`,
    );
  }
  const shape = ra === 3 || rb === 3 ? [Math.max(ba, bb), M, N] : [M, N];
  return exec1(
    "MATMUL",
    fn,
    [a, b],
    { trans_a: transA ? 1 : 0, trans_b: transB ? 1 : 0 },
    shape,
    "f32",
    [
      "a",
      "b",
    ],
  );
}

/** Sums a batched gradient back to an input's shape (rank 2, or batch 1). */
function toInputShape(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape[0] === shape[0]) return g;
  if (shape.length === 2) return sum(g, [0]);
  return sum(g, [0], { keepDims: true });
}

/** op(a) @ op(b) with op = transpose where the flag is set. a: [B,M,K] or [M,K]; b: [B,K,N] or [K,N]. */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const fn = "matmul";
  checkF32(fn, "a", a);
  checkF32(fn, "b", b);
  checkRank(fn, "a", a, 2, 3);
  checkRank(fn, "b", b, 2, 3);
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const y = mm(a, b, transA, transB);
  if (needsGrad(a, b)) {
    const as = a.shape, bs = b.shape;
    const saved = [];
    if (a.requiresGrad) saved.push(b);
    if (b.requiresGrad) saved.push(a);
    recordNode(fn, [a, b], [y], saved, (g, ctx) => {
      const dy = g[0]!;
      let da: Tensor | null = null;
      let db: Tensor | null = null;
      if (ctx.needs[0]) {
        if (!transA && !transB) da = mm(dy, b, false, true);
        else if (!transA && transB) da = mm(dy, b, false, false);
        else if (transA && !transB) da = mm(b, dy, false, true);
        else da = mm(b, dy, true, true);
        da = toInputShape(da, as);
      }
      if (ctx.needs[1]) {
        if (!transA && !transB) db = mm(a, dy, true, false);
        else if (!transA && transB) db = mm(dy, a, true, false);
        else if (transA && !transB) db = mm(a, dy, false, false);
        else db = mm(dy, a, true, true);
        db = toInputShape(db, bs);
      }
      return [da, db];
    });
  }
  return y;
}
