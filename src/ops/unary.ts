/**
 * Elementwise unary ops (UNARY_FORWARD / UNARY_BACKWARD) and the scalar affine map.
 * @module
 */
import { recordNode, type Tensor } from "../tensor/tensor.ts";
import { checkF32, needsGrad } from "./check.ts";
import { exec1 } from "./exec.ts";

/** cmo_unary_kind codes. */
export const UNARY_KINDS = {
  relu: 0,
  leakyRelu: 1,
  sigmoid: 2,
  gelu: 3,
  exp: 4,
  log: 5,
  tanh: 6,
  sqrt: 7,
  abs: 8,
  neg: 9,
} as const;

/** Names of the unary ops. */
export type UnaryName = keyof typeof UNARY_KINDS;

/** Runs the unary op `name` on x (alpha: leaky ReLU's negative slope). */
export function unary(name: UnaryName, x: Tensor, alpha = 0): Tensor {
  checkF32(name, "x", x);
  const kind = UNARY_KINDS[name];
  const y = exec1("UNARY_FORWARD", name, [x], { kind, alpha }, x.shape, "f32", ["x"]);
  if (needsGrad(x)) {
    recordNode(name, [x], [y], [x], (g) => [
      exec1("UNARY_BACKWARD", name, [x, g[0]!], { kind, alpha }, x.shape, "f32", ["x", "dy"]),
    ]);
  }
  return y;
}

export function relu(x: Tensor): Tensor {
  return unary("relu", x);
}
/** LeakyReLU with negative slope (default 0.01). */
export function leakyRelu(x: Tensor, slope = 0.01): Tensor {
  return unary("leakyRelu", x, slope);
}
export function sigmoid(x: Tensor): Tensor {
  return unary("sigmoid", x);
}
/** Exact (erf) GELU. */
export function gelu(x: Tensor): Tensor {
  return unary("gelu", x);
}
export function exp(x: Tensor): Tensor {
  return unary("exp", x);
}
export function log(x: Tensor): Tensor {
  return unary("log", x);
}
export function tanh(x: Tensor): Tensor {
  return unary("tanh", x);
}
export function sqrt(x: Tensor): Tensor {
  return unary("sqrt", x);
}
export function abs(x: Tensor): Tensor {
  return unary("abs", x);
}
export function neg(x: Tensor): Tensor {
  return unary("neg", x);
}

/** alpha * x + beta. */
export function affine(x: Tensor, alpha: number, beta: number): Tensor {
  const fn = "affine";
  checkF32(fn, "x", x);
  if (!Number.isFinite(alpha) || !Number.isFinite(beta)) {
    throw new Error(`${fn}: alpha ${alpha} and beta ${beta} must be finite numbers`);
  }
  const y = exec1("AFFINE_SCALAR", fn, [x], { alpha, beta }, x.shape, "f32", ["x"]);
  if (needsGrad(x)) {
    recordNode(fn, [x], [y], [], (g) => [
      exec1("AFFINE_SCALAR", fn, [g[0]!], { alpha, beta: 0 }, x.shape, "f32", ["dy"]),
    ]);
  }
  return y;
}

/** s * x. */
export function mulScalar(x: Tensor, s: number): Tensor {
  return affine(x, s, 0);
}

/** x + s. */
export function addScalar(x: Tensor, s: number): Tensor {
  return affine(x, 1, s);
}
