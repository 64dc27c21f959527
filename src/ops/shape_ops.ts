/**
 * Shape ops: reshape, permute, slice, split, concat, clone, and the zeros used by slice's gradient.
 * (expand, whose gradient is a sum, lives with the reductions in reduce.ts.)
 * @module
 */
import { checkShape, formatShape, normAxis, sizeOf } from "../tensor/shape.ts";
import { allocTensor, recordNode, SliceGrad, type Tensor } from "../tensor/tensor.ts";
import { checkTensor, needsGrad } from "./check.ts";
import { exec1, execOp } from "./exec.ts";

function shapeParams(shape: readonly number[]) {
  return { ndim: shape.length, dims: shape };
}

/** Resolves one -1 in a target shape against an element count. */
export function resolveShape(
  fn: string,
  from: readonly number[],
  shape: readonly number[],
): number[] {
  const out = [...shape];
  let neg = -1;
  let known = 1;
  for (let i = 0; i < out.length; i++) {
    if (out[i] === -1) {
      if (neg >= 0) {
        throw new Error(`${fn}: target shape ${formatShape(shape)} has more than one -1`);
      }
      neg = i;
    } else {
      if (!Number.isInteger(out[i]) || out[i] < 0) {
        throw new Error(`${fn}: target shape ${formatShape(shape)} has an invalid dim ${out[i]}`);
      }
      known *= out[i];
    }
  }
  const n = sizeOf(from);
  if (neg >= 0) {
    if (known === 0 || n % known !== 0) {
      throw new Error(
        `${fn}: cannot reshape ${formatShape(from)} (${n} elements) to ${formatShape(shape)}`,
      );
    }
    out[neg] = n / known;
  }
  checkShape(out, fn);
  if (sizeOf(out) !== n) {
    throw new Error(
      `${fn}: cannot reshape ${formatShape(from)} (${n} elements) to ${formatShape(out)} (${
        sizeOf(out)
      } elements)`,
    );
  }
  return out;
}

/** A tensor with the same elements in row-major order and a new shape (-1 allowed once). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const fn = "reshape";
  checkTensor(fn, "x", x);
  const target = resolveShape(fn, x.shape, shape);
  const y = exec1("RESHAPE", fn, [x], shapeParams(target), target, x.dtype, ["x"]);
  if (needsGrad(x)) {
    const from = x.shape;
    recordNode(fn, [x], [y], [], (g) => [reshape(g[0]!, from)]);
  }
  return y;
}

/** The order that undoes `order` (inverse[order[i]] = i). */
export function inverseOrder(order: readonly number[]): number[] {
  const inv = new Array<number>(order.length);
  order.forEach((o, i) => inv[o] = i);
  return inv;
}

/**
 * x with its axes reordered: y.shape[i] = x.shape[order[i]] (PyTorch's x.permute(order)); negative
 * entries count from the end. The gradient is the permute by the inverse order.
 */
export function permute(x: Tensor, order: readonly number[]): Tensor {
  const fn = "permute";
  checkTensor(fn, "x", x);
  const r = x.shape.length;
  if (!Array.isArray(order) || order.length !== r) {
    throw new Error(
      `${fn}: order [${order}] must list each of the ${r} axes of x ${x.describe()} once`,
    );
  }
  const ord = order.map((a) => normAxis(a, r, fn));
  if (new Set(ord).size !== r) {
    throw new Error(`${fn}: order [${order}] lists an axis twice for x ${x.describe()}`);
  }
  const shape = ord.map((a) => x.shape[a]);
  const y = exec1("PERMUTE", fn, [x], { ndim: r, order: ord }, shape, x.dtype, ["x"]);
  if (needsGrad(x)) {
    const inv = inverseOrder(ord);
    recordNode(fn, [x], [y], [], (g) => [permute(g[0]!, inv)]);
  }
  return y;
}

/** x[..., start:start+length, ...] along axis. */
export function slice(x: Tensor, axis: number, start: number, length: number): Tensor {
  const fn = "slice";
  checkTensor(fn, "x", x);
  const ax = normAxis(axis, x.shape.length, fn);
  const dim = x.shape[ax];
  if (
    !Number.isInteger(start) || !Number.isInteger(length) || start < 0 || length < 0 ||
    start + length > dim
  ) {
    throw new Error(
      `${fn}: range start ${start} length ${length} does not fit axis ${ax} of x ${x.describe()} (size ${dim})`,
    );
  }
  const shape = [...x.shape];
  shape[ax] = length;
  const y = exec1("SLICE", fn, [x], { axis: ax, start, length }, shape, x.dtype, ["x"]);
  if (needsGrad(x)) {
    const from = x.shape;
    recordNode(fn, [x], [y], [], (g) => [new SliceGrad(g[0]!, ax, start, from)]);
  }
  return y;
}

/** dy placed at [start, start+len) of a zero tensor of shape `full` along axis (slice's gradient). */
export function padAxis(dy: Tensor, full: readonly number[], axis: number, start: number): Tensor {
  const after = full[axis] - start - dy.shape[axis];
  const parts: Tensor[] = [];
  const zs: Tensor[] = [];
  if (start > 0) {
    const s = [...full];
    s[axis] = start;
    zs.push(zerosLike(s, dy.dtype));
    parts.push(zs[zs.length - 1]);
  }
  parts.push(dy);
  if (after > 0) {
    const s = [...full];
    s[axis] = after;
    zs.push(zerosLike(s, dy.dtype));
    parts.push(zs[zs.length - 1]);
  }
  if (parts.length === 1) return dy;
  const out = concat(parts, axis);
  for (const z of zs) z.dispose();
  return out;
}

/** @internal a zero-filled tensor (no autograd) */
export function zerosLike(shape: readonly number[], dtype: "f32" | "i32"): Tensor {
  const t = allocTensor(shape, dtype, "zeros");
  execOp("FILL", "zeros", [], [t], { value: 0 });
  return t;
}

/** Splits x along axis into pieces of the given sizes (they must add up to the dim). */
export function split(x: Tensor, axis: number, sizes: readonly number[]): Tensor[] {
  const fn = "split";
  checkTensor(fn, "x", x);
  const ax = normAxis(axis, x.shape.length, fn);
  const total = sizes.reduce((a, b) => a + b, 0);
  if (total !== x.shape[ax]) {
    throw new Error(
      `${fn}: sizes [${sizes.join(",")}] add up to ${total}, axis ${ax} of x ${x.describe()} has ${
        x.shape[ax]
      }`,
    );
  }
  const out: Tensor[] = [];
  let start = 0;
  for (const s of sizes) {
    out.push(slice(x, ax, start, s));
    start += s;
  }
  return out;
}

/** Joins tensors along axis (same dims except axis, same dtype). */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  const fn = "concat";
  if (!Array.isArray(xs) || xs.length === 0) {
    throw new Error(`${fn}: expected a non-empty array of tensors`);
  }
  xs.forEach((x, i) => checkTensor(fn, `xs[${i}]`, x));
  const first = xs[0];
  const ax = normAxis(axis, first.shape.length, fn);
  const shape = [...first.shape];
  shape[ax] = 0;
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i];
    if (x.dtype !== first.dtype) {
      throw new Error(
        `${fn}: xs[${i}] ${x.describe()} has dtype ${x.dtype}, xs[0] has ${first.dtype}`,
      );
    }
    let ok = x.shape.length === first.shape.length;
    for (let d = 0; ok && d < x.shape.length; d++) {
      if (d !== ax && x.shape[d] !== first.shape[d]) ok = false;
    }
    if (!ok) {
      throw new Error(
        `${fn}: xs[${i}] ${x.describe()} does not match xs[0] ${first.describe()} outside axis ${ax}`,
      );
    }
    shape[ax] += x.shape[ax];
  }
  const names = xs.map((_, i) => `xs[${i}]`);
  const y = exec1("CONCAT", fn, xs, { axis: ax }, shape, first.dtype, names);
  if (needsGrad(...xs)) {
    const sizes = xs.map((x) => x.shape[ax]);
    recordNode(fn, [...xs], [y], [], (g, ctx) => {
      const out: (Tensor | null)[] = [];
      let start = 0;
      for (let i = 0; i < sizes.length; i++) {
        out.push(ctx.needs[i] ? slice(g[0]!, ax, start, sizes[i]) : null);
        start += sizes[i];
      }
      return out;
    });
  }
  return y;
}

/** A copy of x (same shape and dtype), differentiable. */
export function clone(x: Tensor): Tensor {
  const fn = "clone";
  checkTensor(fn, "x", x);
  const y = exec1("COPY", fn, [x], { layout: 2 }, x.shape, x.dtype, ["x"]);
  if (needsGrad(x)) recordNode(fn, [x], [y], [], (g) => [g[0]!]);
  return y;
}
