/**
 * Adaptive average pooling (3D) and L2 normalisation along an axis.
 * @module
 */
import { normAxis } from "../tensor/shape.ts";
import { recordNode, type Tensor } from "../tensor/tensor.ts";
import { checkF32, checkRank, needsGrad } from "./check.ts";
import { exec1 } from "./exec.ts";

/** Adaptive average pooling of x [N,C,D,H,W] to [N,C,...outDims] (PyTorch bin rule). */
export function adaptiveAvgPool3d(
  x: Tensor,
  outDims: readonly [number, number, number] | readonly number[],
): Tensor {
  const fn = "adaptiveAvgPool3d";
  checkF32(fn, "x", x);
  checkRank(fn, "x", x, 5);
  if (outDims.length !== 3 || !outDims.every((d) => Number.isInteger(d) && d >= 1)) {
    throw new Error(
      `${fn}: outDims must be three positive integers, got ${JSON.stringify(outDims)}`,
    );
  }
  const inDims = x.shape.slice(2);
  const params = { out_dims: outDims, in_dims: inDims };
  const y = exec1(
    "ADAPTIVE_AVG_POOL3D_FORWARD",
    fn,
    [x],
    params,
    [x.shape[0], x.shape[1], ...outDims],
    "f32",
    ["x"],
  );
  if (needsGrad(x)) {
    const xs = x.shape;
    recordNode(
      fn,
      [x],
      [y],
      [],
      (g) => [exec1("ADAPTIVE_AVG_POOL3D_BACKWARD", fn, [g[0]!], params, xs, "f32", ["dy"])],
    );
  }
  return y;
}

/** x / max(||x||_axis, eps). */
export function l2Normalize(x: Tensor, axis: number, eps = 1e-12): Tensor {
  const fn = "l2Normalize";
  checkF32(fn, "x", x);
  const ax = normAxis(axis, x.shape.length, fn);
  if (!(eps > 0)) throw new Error(`${fn}: eps must be > 0, got ${eps}`);
  const params = { axis: ax, eps };
  const y = exec1("L2_NORMALIZE_FORWARD", fn, [x], params, x.shape, "f32", ["x"]);
  if (needsGrad(x)) {
    recordNode(
      fn,
      [x],
      [y],
      [x],
      (g) => [exec1("L2_NORMALIZE_BACKWARD", fn, [x, g[0]!], params, x.shape, "f32", ["x", "dy"])],
    );
  }
  return y;
}
