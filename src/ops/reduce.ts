/**
 * Reductions: sum, mean, max (with their gradients), argmax, reduceTo (the sum that brings a
 * broadcast gradient back to an input's shape), and expand, broadcasting, whose gradient is that sum
 * (the two are each other's adjoint, so they live in one module; shape_ops.ts does not import this
 * one).
 * @module
 */
import { broadcastsTo, checkShape, formatShape, normAxis, sameShape } from "../tensor/shape.ts";
import { noGrad } from "../tensor/scope.ts";
import { recordNode, type Tensor } from "../tensor/tensor.ts";
import { checkF32, checkTensor, needsGrad } from "./check.ts";
import { exec1 } from "./exec.ts";
import { reshape } from "./shape_ops.ts";
import { affine } from "./unary.ts";

/** Options of sum, mean and max. */
export interface ReduceOptions {
  keepDims?: boolean;
}

const SUM = 0;
const MEAN = 1;
const MAX = 2;

function normAxes(fn: string, x: Tensor, axes: readonly number[] | "all"): number[] {
  const r = x.shape.length;
  if (axes === "all") return [...Array(r).keys()];
  if (!Array.isArray(axes)) throw new Error(`${fn}: axes must be an array of integers or "all"`);
  const set = new Set<number>();
  for (const a of axes) {
    const n = normAxis(a, r, fn);
    if (set.has(n)) throw new Error(`${fn}: axis ${a} is listed twice for x ${x.describe()}`);
    set.add(n);
  }
  return [...set].sort((a, b) => a - b);
}

interface Plan {
  axes: number[];
  mask: number;
  kept: number[];
  out: number[];
  count: number;
}

function plan(fn: string, x: Tensor, axes: readonly number[] | "all", keepDims: boolean): Plan {
  const ax = normAxes(fn, x, axes);
  let mask = 0;
  const kept = [...x.shape];
  let count = 1;
  for (const a of ax) {
    mask |= 1 << a;
    count *= x.shape[a];
    kept[a] = 1;
  }
  const out = keepDims ? kept : x.shape.filter((_, i) => !ax.includes(i));
  return { axes: ax, mask, kept, out, count };
}

function reduceRaw(fn: string, x: Tensor, kind: number, p: Plan): Tensor {
  return exec1("REDUCE", fn, [x], { kind, axes_mask: p.mask }, p.kept, "f32", ["x"]);
}

function reduceSumMean(
  fn: string,
  kind: number,
  x: Tensor,
  axes: readonly number[] | "all",
  opts: ReduceOptions,
): Tensor {
  checkF32(fn, "x", x);
  const p = plan(fn, x, axes, opts.keepDims ?? false);
  let y: Tensor;
  if (p.axes.length === 0) {
    y = exec1("COPY", fn, [x], { layout: 2 }, x.shape, "f32", ["x"]);
  } else {
    const yk = reduceRaw(fn, x, kind, p);
    if (sameShape(p.kept, p.out)) y = yk;
    else {
      y = noGrad(() => reshape(yk, p.out));
      yk.dispose();
    }
  }
  if (needsGrad(x)) {
    const xs = x.shape;
    const scale = kind === MEAN ? 1 / Math.max(p.count, 1) : 1;
    recordNode(fn, [x], [y], [], (g) => {
      // Temporaries are disposed by the tidy scope backward runs each rule in.
      let d = g[0]!;
      if (!sameShape(d.shape, p.kept)) d = reshape(d, p.kept);
      if (scale !== 1) d = affine(d, scale, 0);
      return [sameShape(d.shape, xs) ? d : expand(d, xs)];
    });
  }
  return y;
}

/** Sum over axes (or "all"). */
export function sum(x: Tensor, axes: readonly number[] | "all", opts: ReduceOptions = {}): Tensor {
  return reduceSumMean("sum", SUM, x, axes, opts);
}

/** Mean over axes (or "all"). */
export function mean(x: Tensor, axes: readonly number[] | "all", opts: ReduceOptions = {}): Tensor {
  return reduceSumMean("mean", MEAN, x, axes, opts);
}

/** Max over axes (or "all"); the gradient goes to the maxima, split evenly between ties. */
export function max(x: Tensor, axes: readonly number[] | "all", opts: ReduceOptions = {}): Tensor {
  const fn = "max";
  checkF32(fn, "x", x);
  const p = plan(fn, x, axes, opts.keepDims ?? false);
  if (p.axes.length === 0) throw new Error(`${fn}: no axes given for x ${x.describe()}`);
  const yk = reduceRaw(fn, x, MAX, p);
  let y = yk;
  if (!sameShape(p.kept, p.out)) y = noGrad(() => reshape(yk, p.out));
  if (needsGrad(x)) {
    recordNode(fn, [x], [y], [x, yk], (g) => {
      let d = g[0]!;
      if (!sameShape(d.shape, p.kept)) d = reshape(d, p.kept);
      const dx = exec1(
        "REDUCE_MAX_BACKWARD",
        fn,
        [x, yk, d],
        { kind: MAX, axes_mask: p.mask },
        x.shape,
        "f32",
        [
          "x",
          "y",
          "dy",
        ],
      );
      return [dx];
    });
  }
  // yk is internal when reshaped: the node (if any) keeps its data alive until backward.
  if (y !== yk) yk.dispose();
  return y;
}

/** Options of argmax. */
export interface ArgmaxOptions {
  /** Keep the reduced axis as size 1 (default false: the axis is removed). */
  keepDims?: boolean;
}

/** Index of the max along axis (i32, no gradient). */
export function argmax(x: Tensor, axis: number, opts: ArgmaxOptions = {}): Tensor {
  const fn = "argmax";
  checkF32(fn, "x", x);
  const ax = normAxis(axis, x.shape.length, fn);
  const kept = [...x.shape];
  kept[ax] = 1;
  const y = exec1("ARGMAX", fn, [x], { axis: ax }, kept, "i32", ["x"]);
  if (opts.keepDims) return y;
  const out = noGrad(() => reshape(y, x.shape.filter((_, i) => i !== ax)));
  y.dispose();
  return out;
}

/**
 * Sums a broadcast gradient g back to `shape` (the inverse of broadcasting `shape` to g.shape).
 * Returns g itself when the shapes already match.
 */
export function reduceTo(g: Tensor, shape: readonly number[]): Tensor {
  checkTensor("reduceTo", "g", g);
  if (sameShape(g.shape, shape)) return g;
  const r = g.shape.length;
  const lead = r - shape.length;
  if (lead < 0) {
    throw new Error(`reduceTo: gradient ${g.describe()} has lower rank than ${formatShape(shape)}`);
  }
  const axes: number[] = [];
  for (let i = 0; i < r; i++) {
    if (i < lead) axes.push(i);
    else if (shape[i - lead] === 1 && g.shape[i] !== 1) axes.push(i);
    else if (shape[i - lead] !== g.shape[i]) {
      throw new Error(
        `reduceTo: gradient ${g.describe()} does not come from broadcasting ${formatShape(shape)}`,
      );
    }
  }
  const s = sum(g, axes, { keepDims: true });
  if (sameShape(s.shape, shape)) return s;
  const out = reshape(s, shape);
  s.dispose();
  return out;
}

/** Broadcasts x to shape (NumPy rules); the gradient sums back over the broadcast axes. */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const fn = "expand";
  checkTensor(fn, "x", x);
  checkShape(shape, fn);
  if (!broadcastsTo(x.shape, shape)) {
    throw new Error(`${fn}: x ${x.describe()} does not broadcast to ${formatShape(shape)}`);
  }
  const y = exec1("EXPAND", fn, [x], { ndim: shape.length, dims: shape }, shape, x.dtype, ["x"]);
  if (needsGrad(x)) {
    const from = x.shape;
    recordNode(fn, [x], [y], [], (g) => [reduceTo(g[0]!, from)]);
  }
  return y;
}
