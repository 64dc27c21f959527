/**
 * Tensor factories: from host data, constants, normal noise, and parameters.
 * @module
 */
import { execOp } from "../ops/exec.ts";
import { checkShape, formatShape, sizeOf } from "./shape.ts";
import { allocTensor, type DType, type Tensor } from "./tensor.ts";

/** Options of the factories. */
export interface TensorOptions {
  dtype?: DType;
  requiresGrad?: boolean;
}

function finish(t: Tensor, opts: TensorOptions): Tensor {
  if (opts.requiresGrad) {
    if (t.dtype !== "f32") {
      throw new Error(`Only f32 tensors can require grad, got ${t.describe()}`);
    }
    t.requiresGrad = true;
  }
  return t;
}

/** A tensor holding a copy of data (row-major) with the given shape. */
export function tensor(
  data: Float32Array | Int32Array | readonly number[],
  shape: readonly number[],
  opts: TensorOptions = {},
): Tensor {
  checkShape(shape, "tensor");
  const dtype: DType = opts.dtype ?? (data instanceof Int32Array ? "i32" : "f32");
  if (dtype !== "f32" && dtype !== "i32") {
    throw new Error(`tensor: dtype must be "f32" or "i32", got ${dtype}`);
  }
  const n = sizeOf(shape);
  if (data.length !== n) {
    throw new Error(
      `tensor: data has ${data.length} elements, shape ${formatShape(shape)} needs ${n}`,
    );
  }
  let host: Float32Array | Int32Array;
  if (dtype === "f32") {
    host = data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
  } else {
    if (!(data instanceof Int32Array)) {
      for (let i = 0; i < data.length; i++) {
        if (!Number.isInteger(data[i])) {
          throw new Error(`tensor: i32 data has a non-integer value ${data[i]} at ${i}`);
        }
      }
    }
    host = data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
  }
  const t = allocTensor(shape, dtype, "tensor");
  if (n > 0) {
    const be = t._backend("tensor");
    try {
      be.check(
        be.sym.cmo_buffer_write(t._ptr("tensor"), host, BigInt(host.byteLength)),
        `tensor ${t.describe()}`,
      );
    } catch (e) {
      t.dispose();
      throw e;
    }
  }
  return finish(t, opts);
}

/**
 * Overwrites the contents of an existing tensor in place with host data (row-major, same element
 * count and dtype), e.g. to restore parameters and optimiser state from a checkpoint. Not recorded
 * on the tape.
 */
export function assign(t: Tensor, data: Float32Array | Int32Array): void {
  const want = t.dtype === "f32" ? Float32Array : Int32Array;
  if (!(data instanceof want) || data.length !== t.size) {
    throw new Error(
      `assign: ${t.describe()} needs ${t.size} ${t.dtype} values, got ${data.length} ${data.constructor.name}`,
    );
  }
  if (t.size === 0) return;
  const be = t._backend("assign");
  be.check(
    be.sym.cmo_buffer_write(t._ptr("assign"), data, BigInt(data.byteLength)),
    `assign ${t.describe()}`,
  );
}

/** A tensor with every element equal to value. */
export function full(shape: readonly number[], value: number, opts: TensorOptions = {}): Tensor {
  checkShape(shape, "full");
  if (typeof value !== "number") {
    throw new Error(`full: value must be a number, got ${value}`);
  }
  const t = allocTensor(shape, opts.dtype ?? "f32", "full");
  if (t.size > 0) execOp("FILL", "full", [], [t], { value });
  return finish(t, opts);
}

export function zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 0, opts);
}

export function ones(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 1, opts);
}

/** Options of randn: rng returns uniform numbers in [0, 1). */
export interface RandnOptions extends TensorOptions {
  rng: () => number;
  std?: number;
  mean?: number;
}

/** Normal noise (Box-Muller over opts.rng), f32. */
export function randn(shape: readonly number[], opts: RandnOptions): Tensor {
  checkShape(shape, "randn");
  if (typeof opts?.rng !== "function") {
    throw new Error("randn: opts.rng (a function returning [0,1)) is required");
  }
  const std = opts.std ?? 1;
  const mean = opts.mean ?? 0;
  const n = sizeOf(shape);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    let u = opts.rng();
    while (u <= 0) u = opts.rng();
    const v = opts.rng();
    const r = Math.sqrt(-2 * Math.log(u));
    data[i] = mean + std * r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) data[i + 1] = mean + std * r * Math.sin(2 * Math.PI * v);
  }
  return tensor(data, shape, { requiresGrad: opts.requiresGrad });
}

/** A trainable leaf: requiresGrad = true and kept (never disposed by tidy scopes). */
export function parameter(
  data: Float32Array | readonly number[],
  shape: readonly number[],
): Tensor {
  return tensor(data, shape, { dtype: "f32", requiresGrad: true }).keep();
}
