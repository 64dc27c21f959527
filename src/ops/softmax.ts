/**
 * Softmax along an axis (SOFTMAX_FORWARD / SOFTMAX_BACKWARD).
 * @module
 */
import { normAxis } from "../tensor/shape.ts";
import { recordNode, type Tensor } from "../tensor/tensor.ts";
import { checkF32, needsGrad } from "./check.ts";
import { exec1 } from "./exec.ts";

/** dx from the softmax output y and dy along axis. */
export function softmaxBackward(y: Tensor, dy: Tensor, axis: number): Tensor {
  return exec1("SOFTMAX_BACKWARD", "softmax", [y, dy], { axis }, y.shape, "f32", ["y", "dy"]);
}

/** Softmax of x along axis. */
export function softmax(x: Tensor, axis: number): Tensor {
  const fn = "softmax";
  checkF32(fn, "x", x);
  const ax = normAxis(axis, x.shape.length, fn);
  const y = exec1("SOFTMAX_FORWARD", fn, [x], { axis: ax }, x.shape, "f32", ["x"]);
  if (needsGrad(x)) recordNode(fn, [x], [y], [y], (g) => [softmaxBackward(y, g[0]!, ax)]);
  return y;
}
