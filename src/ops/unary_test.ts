import { deepStrictEqual } from "node:assert/strict";
import { tensor } from "../tensor/factories.ts";
import { tidy } from "../tensor/scope.ts";
import { assertClose, gradCheck, randData, seededRng } from "./test_util.ts";
import {
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
  unary,
  type UnaryName,
} from "./unary.ts";
import type { Tensor } from "../tensor/tensor.ts";

function erf(x: number): number {
  // Abramowitz-Stegun 7.1.26 is too coarse for 1e-5; use a series / continued fraction split.
  const t = Math.abs(x);
  if (t < 3) {
    let sum = t, term = t;
    for (let n = 1; n < 80; n++) {
      term *= -t * t / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * sum * 2 / Math.sqrt(Math.PI);
  }
  return Math.sign(x);
}

const REF: Record<UnaryName, (x: number) => number> = {
  relu: (x) => Math.max(x, 0),
  leakyRelu: (x) => (x > 0 ? x : 0.1 * x),
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  exp: Math.exp,
  log: Math.log,
  tanh: Math.tanh,
  sqrt: Math.sqrt,
  abs: Math.abs,
  neg: (x) => -x,
};

const FNS: Record<UnaryName, (x: Tensor) => Tensor> = {
  relu,
  leakyRelu: (x) => leakyRelu(x, 0.1),
  sigmoid,
  gelu,
  exp,
  log,
  tanh,
  sqrt,
  abs,
  neg,
};

const POSITIVE = new Set<UnaryName>(["log", "sqrt"]);

Deno.test("unary ops match JS references forward", () => {
  const rng = seededRng(1);
  tidy(() => {
    for (const name of Object.keys(REF) as UnaryName[]) {
      const data = POSITIVE.has(name)
        ? randData([2, 3, 4], rng, 0.2, 3)
        : randData([2, 3, 4], rng, -3, 3);
      const y = FNS[name](tensor(data, [2, 3, 4]));
      deepStrictEqual(y.shape, [2, 3, 4]);
      assertClose(y.toArray(), Array.from(data, REF[name]), { atol: 1e-5, rtol: 1e-5, msg: name });
    }
  });
});

Deno.test("unary ops: gradients match finite differences", () => {
  const rng = seededRng(2);
  for (const name of Object.keys(REF) as UnaryName[]) {
    // keep away from kinks at 0 for relu/abs/leakyRelu
    const data = POSITIVE.has(name)
      ? randData([3, 4], rng, 0.5, 2)
      : randData([3, 4], rng, 0.1, 1.5);
    for (let i = 0; i < data.length; i += 2) if (!POSITIVE.has(name)) data[i] = -data[i];
    gradCheck((xs) => FNS[name](xs[0]), [{ data, shape: [3, 4] }], {
      msg: name,
      h: 1e-3,
      atol: 3e-3,
    });
  }
});

Deno.test("affine, mulScalar, addScalar and their gradient", () => {
  tidy(() => {
    const x = tensor([1, 2, -3], [3]);
    assertClose(affine(x, 2, 1).toArray(), [3, 5, -5]);
    assertClose(mulScalar(x, -0.5).toArray(), [-0.5, -1, 1.5]);
    assertClose(addScalar(x, 4).toArray(), [5, 6, 1]);
  });
  gradCheck((xs) => affine(xs[0], 3, -2), [{ data: new Float32Array([0.5, -1, 2]), shape: [3] }]);
});

Deno.test("unary rejects i32 input with a message naming op and shape", () => {
  tidy(() => {
    const x = tensor(new Int32Array([1, 2]), [2]);
    let msg = "";
    try {
      unary("exp", x);
    } catch (e) {
      msg = (e as Error).message;
    }
    deepStrictEqual(msg, "exp: x [2] i32 has dtype i32, expected f32");
  });
});
