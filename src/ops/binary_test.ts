import { deepStrictEqual, throws } from "node:assert/strict";
import { tensor } from "../tensor/factories.ts";
import { tidy } from "../tensor/scope.ts";
import { broadcastShapes, sizeOf } from "../tensor/shape.ts";
import { add, div, equal, maximum, mul, sub } from "./binary.ts";
import { assertClose, gradCheck, randData, seededRng, strides } from "./test_util.ts";

function refBinary(
  a: Float32Array,
  as: number[],
  b: Float32Array,
  bs: number[],
  f: (x: number, y: number) => number,
) {
  const os = broadcastShapes(as, bs)!;
  const out = new Float32Array(sizeOf(os));
  const ost = strides(os);
  const idx = (shape: number[], o: number) => {
    const st = strides(shape);
    const off = os.length - shape.length;
    let k = 0;
    for (let d = 0; d < shape.length; d++) {
      const c = Math.floor(o / ost[d + off]) % os[d + off];
      k += (shape[d] === 1 ? 0 : c) * st[d];
    }
    return k;
  };
  for (let o = 0; o < out.length; o++) out[o] = f(a[idx(as, o)], b[idx(bs, o)]);
  return { out, os };
}

const CASES: [number[], number[]][] = [
  [[2, 3], [2, 3]],
  [[2, 3, 4], [4]],
  [[2, 1, 4], [3, 1]],
  [[1, 3, 2, 2, 2], [2, 3, 2, 2, 2]],
  [[2, 3], []],
];

const OPS = {
  add: [add, (x: number, y: number) => x + y],
  sub: [sub, (x: number, y: number) => x - y],
  mul: [mul, (x: number, y: number) => x * y],
  div: [div, (x: number, y: number) => x / y],
  maximum: [maximum, (x: number, y: number) => Math.max(x, y)],
} as const;

Deno.test("binary ops broadcast like NumPy and match JS references", () => {
  const rng = seededRng(3);
  tidy(() => {
    for (const [as, bs] of CASES) {
      const a = randData(as, rng, 0.5, 2), b = randData(bs, rng, 0.5, 2);
      for (const [name, [op, f]] of Object.entries(OPS)) {
        const { out, os } = refBinary(a, as, b, bs, f);
        const y = op(tensor(a, as), tensor(b, bs));
        deepStrictEqual(y.shape, os, `${name} shape`);
        assertClose(y.toArray(), out, { msg: `${name} ${as} ${bs}` });
      }
    }
  });
});

Deno.test("binary ops: gradients with broadcasting match finite differences", () => {
  const rng = seededRng(4);
  for (const [as, bs] of CASES.slice(0, 4)) {
    for (const [name, [op]] of Object.entries(OPS)) {
      const a = randData(as, rng, 0.5, 2), b = randData(bs, rng, 0.5, 2);
      if (name === "maximum") { for (let i = 0; i < a.length; i += 2) a[i] += 2; // no near-ties
       }
      gradCheck((xs) => op(xs[0], xs[1]), [{ data: a, shape: as }, { data: b, shape: bs }], {
        msg: `${name} ${as} ${bs}`,
        samples: 12,
        h: 1e-3,
      });
    }
  }
});

Deno.test("maximum splits the gradient in half at ties", () => {
  gradCheck((xs) => maximum(xs[0], xs[1]), [
    { data: new Float32Array([1, 2, 3]), shape: [3] },
    { data: new Float32Array([5, 2, 0]), shape: [3] },
  ], { h: 1e-3 });
});

Deno.test("equal gives 1/0 f32 and numbers work as the second operand", () => {
  tidy(() => {
    const a = tensor([1, 2, 3], [3]);
    const y = equal(a, tensor([1, 0, 3], [3]));
    deepStrictEqual(y.dtype, "f32");
    assertClose(y.toArray(), [1, 0, 1]);
    assertClose(add(a, 1).toArray(), [2, 3, 4]);
    assertClose(sub(a, 1).toArray(), [0, 1, 2]);
    assertClose(mul(a, 2).toArray(), [2, 4, 6]);
    assertClose(div(a, 2).toArray(), [0.5, 1, 1.5]);
  });
});

Deno.test("binary ops reject shapes that do not broadcast and mixed dtypes", () => {
  tidy(() => {
    throws(() => add(tensor(new Float32Array(6), [2, 3]), tensor(new Float32Array(4), [4])), {
      message: "add: shapes [2,3] and [4] do not broadcast (NumPy rules, right-aligned)",
    });
    throws(() => mul(tensor([1, 2], [2]), tensor(new Int32Array([1, 2]), [2])), {
      message: "mul: b [2] i32 has dtype i32, expected f32",
    });
  });
});
