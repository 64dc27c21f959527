/**
 * Broadcasting binary ops (BINARY): add, sub, mul, div, maximum, equal.
 * Gradients of broadcast inputs are summed back to the input shapes (reduceTo).
 * @module
 */
import { broadcastShapes, formatShape } from "../tensor/shape.ts";
import { recordNode, type Tensor } from "../tensor/tensor.ts";
import { checkF32, checkTensor, needsGrad } from "./check.ts";
import { exec1, execOp } from "./exec.ts";
import { reduceTo } from "./reduce.ts";
import { affine, neg } from "./unary.ts";

const ADD = 0;
const SUB = 1;
const MUL = 2;
const DIV = 3;
const MAXIMUM = 4;
const EQUAL = 5;

function outShape(fn: string, a: Tensor, b: Tensor): number[] {
  const s = broadcastShapes(a.shape, b.shape);
  if (s === null) {
    throw new Error(
      `${fn}: shapes ${formatShape(a.shape)} and ${
        formatShape(b.shape)
      } do not broadcast (NumPy rules, right-aligned)`,
    );
  }
  return s;
}

function binaryRaw(
  fn: string,
  kind: number,
  a: Tensor,
  b: Tensor,
  shape: readonly number[],
): Tensor {
  return exec1("BINARY", fn, [a, b], { kind }, shape, "f32", ["a", "b"]);
}

function checkPair(fn: string, a: Tensor, b: Tensor): void {
  checkF32(fn, "a", a);
  checkF32(fn, "b", b);
}

/** a + b (b may be a number). */
export function add(a: Tensor, b: Tensor | number): Tensor {
  if (typeof b === "number") return affine(a, 1, b);
  const fn = "add";
  checkPair(fn, a, b);
  const shape = outShape(fn, a, b);
  const y = binaryRaw(fn, ADD, a, b, shape);
  if (needsGrad(a, b)) {
    const as = a.shape, bs = b.shape;
    recordNode(fn, [a, b], [y], [], (g, ctx) => [
      ctx.needs[0] ? reduceTo(g[0]!, as) : null,
      ctx.needs[1] ? reduceTo(g[0]!, bs) : null,
    ]);
  }
  return y;
}

/** a - b (b may be a number). */
export function sub(a: Tensor, b: Tensor | number): Tensor {
  if (typeof b === "number") return affine(a, 1, -b);
  const fn = "sub";
  checkPair(fn, a, b);
  const shape = outShape(fn, a, b);
  const y = binaryRaw(fn, SUB, a, b, shape);
  if (needsGrad(a, b)) {
    const as = a.shape, bs = b.shape;
    recordNode(fn, [a, b], [y], [], (g, ctx) => [
      ctx.needs[0] ? reduceTo(g[0]!, as) : null,
      ctx.needs[1] ? neg(reduceTo(g[0]!, bs)) : null,
    ]);
  }
  return y;
}

/** a * b (b may be a number). */
export function mul(a: Tensor, b: Tensor | number): Tensor {
  if (typeof b === "number") return affine(a, b, 0);
  const fn = "mul";
  checkPair(fn, a, b);
  const shape = outShape(fn, a, b);
  const y = binaryRaw(fn, MUL, a, b, shape);
  if (needsGrad(a, b)) {
    const as = a.shape, bs = b.shape;
    const saved = [];
    if (b.requiresGrad) saved.push(a);
    if (a.requiresGrad) saved.push(b);
    recordNode(fn, [a, b], [y], saved, (g, ctx) => [
      ctx.needs[0] ? reduceTo(binaryRaw(fn, MUL, g[0]!, b, shape), as) : null,
      ctx.needs[1] ? reduceTo(binaryRaw(fn, MUL, g[0]!, a, shape), bs) : null,
    ]);
  }
  return y;
}

/** a / b (b may be a number). */
export function div(a: Tensor, b: Tensor | number): Tensor {
  if (typeof b === "number") return affine(a, 1 / b, 0);
  const fn = "div";
  checkPair(fn, a, b);
  const shape = outShape(fn, a, b);
  const y = binaryRaw(fn, DIV, a, b, shape);
  if (needsGrad(a, b)) {
    const as = a.shape, bs = b.shape;
    const saved = b.requiresGrad ? [a, b] : [b];
    recordNode(fn, [a, b], [y], saved, (g, ctx) => {
      const t = binaryRaw(fn, DIV, g[0]!, b, shape); // dy / b
      const da = ctx.needs[0] ? reduceTo(t, as) : null;
      let db: Tensor | null = null;
      if (ctx.needs[1]) {
        // d/db (a/b) = -a/b^2 = -(dy/b) * (a/b)
        const q = binaryRaw(fn, DIV, a, b, shape);
        db = reduceTo(neg(binaryRaw(fn, MUL, t, q, shape)), bs);
      }
      return [da, db];
    });
  }
  return y;
}

/** Elementwise max of a and b; at ties the gradient is split in half, as PyTorch does. */
export function maximum(a: Tensor, b: Tensor): Tensor {
  const fn = "maximum";
  checkPair(fn, a, b);
  const shape = outShape(fn, a, b);
  const y = binaryRaw(fn, MAXIMUM, a, b, shape);
  if (needsGrad(a, b)) {
    const as = a.shape, bs = b.shape;
    recordNode(fn, [a, b], [y], [a, b, y], (g, ctx) => {
      const ea = binaryRaw(fn, EQUAL, y, a, shape);
      const eb = binaryRaw(fn, EQUAL, y, b, shape);
      const tie = binaryRaw(fn, MUL, ea, eb, shape);
      const halfTie = affine(tie, 0.5, 0);
      const out: (Tensor | null)[] = [null, null];
      if (ctx.needs[0]) {
        const w = binaryRaw(fn, SUB, ea, halfTie, shape);
        out[0] = reduceTo(binaryRaw(fn, MUL, g[0]!, w, shape), as);
      }
      if (ctx.needs[1]) {
        const w = binaryRaw(fn, SUB, eb, halfTie, shape);
        out[1] = reduceTo(binaryRaw(fn, MUL, g[0]!, w, shape), bs);
      }
      return out;
    });
  }
  return y;
}

/** 1.0 where a == b else 0.0 (f32; no gradient). Inputs must share a dtype. */
export function equal(a: Tensor, b: Tensor): Tensor {
  const fn = "equal";
  checkTensor(fn, "a", a);
  checkTensor(fn, "b", b);
  if (a.dtype !== b.dtype) {
    throw new Error(`${fn}: a ${a.describe()} and b ${b.describe()} have different dtypes`);
  }
  const shape = outShape(fn, a, b);
  return exec1("BINARY", fn, [a, b], { kind: EQUAL }, shape, "f32", ["a", "b"]);
}

/** @internal used by autograd to add gradients */
export function addRaw(a: Tensor, b: Tensor): Tensor {
  return binaryRaw("add", ADD, a, b, outShape("add", a, b));
}

/**
 * @internal dst += src in place (same shapes), used by autograd on gradients it owns alone.
 * Relies on BINARY computing each output element from the same-index input elements only, so the
 * output slot may alias input a.
 */
export function addInto(dst: Tensor, src: Tensor): void {
  if (dst.shape.length !== src.shape.length || dst.shape.some((d, i) => d !== src.shape[i])) {
    throw new Error(`addInto: ${dst.describe()} and ${src.describe()} must have the same shape`);
  }
  execOp("BINARY", "add", [dst, src], [dst], { kind: ADD }, ["a", "b"]);
}
