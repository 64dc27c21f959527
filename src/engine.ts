/**
 * The public surface of the TypeScript engine: backend, tensors, scopes, autograd and ops.
 * Everything outside src/backend, src/tensor and src/ops imports from here.
 *
 * ```ts
 * import { backward, conv3d, instanceNorm, leakyRelu, mean, parameter, tensor, tidy } from "./engine.ts";
 *
 * const w = parameter(new Float32Array(16 * 1 * 27).fill(0.01), [16, 1, 3, 3, 3]); // kept, requiresGrad
 * const loss = tidy(() => {
 *   const x = tensor(new Float32Array(2 * 32 ** 3), [2, 1, 32, 32, 32]);
 *   const h = leakyRelu(instanceNorm(conv3d(x, w, null, { padding: 1 }), null, null));
 *   const l = mean(h, "all");
 *   backward(l); // w.grad += dL/dw
 *   return l.item(); // every tensor made inside is released here
 * });
 * ```
 *
 * Lifetime rules: tensors made inside tidy() are disposed when it returns, except returned and
 * kept ones; a disposed tensor that a recorded graph still needs keeps its buffer until backward
 * has used it (or the graph's outputs are disposed). Parameter gradients are kept tensors that
 * accumulate across backward calls until zeroGrad.
 * @module
 */
export {
  Backend,
  type BackendOptions,
  getBackend,
  initBackend,
  type MemoryStats,
  NativeError,
} from "./backend/backend.ts";
export { OP_DECLS, type OpDecl, type OpName, type ParamField } from "./ops/op_decls.ts";
export { type OpProfiler, setOpProfiler } from "./ops/exec.ts";
export { detach, type DType, Tensor } from "./tensor/tensor.ts";
export {
  assign,
  full,
  ones,
  parameter,
  randn,
  type RandnOptions,
  tensor,
  type TensorOptions,
  zeros,
} from "./tensor/factories.ts";
export { isGradEnabled, noGrad, tidy } from "./tensor/scope.ts";
export { backward, type BackwardOptions, zeroGrad } from "./tensor/autograd.ts";
export { dispose } from "./tensor/dispose.ts";
export { broadcastShapes, formatShape, sizeOf } from "./tensor/shape.ts";

export { conv3d, type Conv3dOptions, convTranspose3d } from "./ops/conv.ts";
export {
  groupNorm,
  type GroupNormOptions,
  instanceNorm,
  type NormActivation,
  type NormOptions,
} from "./ops/norm.ts";
export {
  abs,
  addScalar,
  affine,
  exp,
  gelu,
  leakyRelu,
  log,
  mulScalar,
  neg,
  relu,
  sigmoid,
  sqrt,
  tanh,
} from "./ops/unary.ts";
export { add, div, equal, maximum, mul, sub } from "./ops/binary.ts";
export { clone, concat, permute, reshape, slice, split } from "./ops/shape_ops.ts";
export { matmul, type MatmulOptions } from "./ops/matmul.ts";
export { softmax } from "./ops/softmax.ts";
export {
  argmax,
  type ArgmaxOptions,
  expand,
  max,
  mean,
  type ReduceOptions,
  reduceTo,
  sum,
} from "./ops/reduce.ts";
export { adaptiveAvgPool3d, l2Normalize } from "./ops/pool.ts";
export {
  type CrossEntropyOptions,
  diceStats,
  type DiceStatsOptions,
  softmaxCrossEntropy,
} from "./ops/losses.ts";
export { IGNORE_INDEX } from "./util/ignore.ts";
export {
  type AdamwOptions,
  adamwUpdate,
  emaUpdate,
  type SgdOptions,
  sgdUpdate,
} from "./ops/optim.ts";
