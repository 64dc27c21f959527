import { deepStrictEqual, throws } from "node:assert/strict";
import { tensor } from "../tensor/factories.ts";
import { tidy } from "../tensor/scope.ts";
import { matmul } from "./matmul.ts";
import { softmax } from "./softmax.ts";
import { assertClose, gradCheck, randData, seededRng } from "./test_util.ts";

/** Reference: y[b] = op(a[b or 0]) @ op(b[b or 0]). */
function refMatmul(
  a: Float32Array,
  as: number[],
  b: Float32Array,
  bs: number[],
  ta: boolean,
  tb: boolean,
) {
  const A = as.length === 3 ? as : [1, ...as];
  const B = bs.length === 3 ? bs : [1, ...bs];
  const M = ta ? A[2] : A[1], K = ta ? A[1] : A[2], N = tb ? B[1] : B[2];
  const nb = Math.max(A[0], B[0]);
  const out = new Float32Array(nb * M * N);
  for (let p = 0; p < nb; p++) {
    const ao = (A[0] === 1 ? 0 : p) * A[1] * A[2], bo = (B[0] === 1 ? 0 : p) * B[1] * B[2];
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = ta ? a[ao + k * A[2] + i] : a[ao + i * A[2] + k];
          const bv = tb ? b[bo + j * B[2] + k] : b[bo + k * B[2] + j];
          s += av * bv;
        }
        out[p * M * N + i * N + j] = s;
      }
    }
  }
  return out;
}

const CASES: { as: number[]; bs: number[]; ta: boolean; tb: boolean; out: number[] }[] = [
  { as: [3, 4], bs: [4, 5], ta: false, tb: false, out: [3, 5] },
  { as: [4, 3], bs: [4, 5], ta: true, tb: false, out: [3, 5] },
  { as: [3, 4], bs: [5, 4], ta: false, tb: true, out: [3, 5] },
  { as: [4, 3], bs: [5, 4], ta: true, tb: true, out: [3, 5] },
  { as: [2, 3, 4], bs: [2, 4, 5], ta: false, tb: false, out: [2, 3, 5] },
  { as: [2, 3, 4], bs: [4, 5], ta: false, tb: false, out: [2, 3, 5] },
  { as: [1, 4, 3], bs: [2, 5, 4], ta: true, tb: true, out: [2, 3, 5] },
];

Deno.test("matmul matches a JS reference for every transpose and batch-broadcast case", () => {
  const rng = seededRng(9);
  tidy(() => {
    for (const c of CASES) {
      const a = randData(c.as, rng), b = randData(c.bs, rng);
      const y = matmul(tensor(a, c.as), tensor(b, c.bs), { transA: c.ta, transB: c.tb });
      deepStrictEqual(y.shape, c.out, JSON.stringify(c));
      assertClose(y.toArray(), refMatmul(a, c.as, b, c.bs, c.ta, c.tb), { msg: JSON.stringify(c) });
    }
  });
});

Deno.test("matmul: gradients match finite differences for every case", () => {
  const rng = seededRng(10);
  for (const c of CASES) {
    gradCheck((xs) => matmul(xs[0], xs[1], { transA: c.ta, transB: c.tb }), [
      { data: randData(c.as, rng), shape: c.as },
      { data: randData(c.bs, rng), shape: c.bs },
    ], { msg: JSON.stringify(c), samples: 16 });
  }
});

Deno.test("matmul rejects mismatched inner dims with both shapes in the message", () => {
  tidy(() => {
    throws(() => matmul(tensor(new Float32Array(6), [2, 3]), tensor(new Float32Array(8), [4, 2])), {
      message: "matmul: inner dims differ: a [2,3] f32 gives K = 3, b [4,2] f32 gives K = 4",
    });
  });
});

Deno.test("softmax along an axis and its gradient", () => {
  const rng = seededRng(11);
  tidy(() => {
    const x = tensor([1, 2, 3, 0, 0, 0], [2, 3]);
    const y = softmax(x, 1).toArray();
    const e = [Math.exp(1), Math.exp(2), Math.exp(3)];
    const z = e[0] + e[1] + e[2];
    assertClose(y, [e[0] / z, e[1] / z, e[2] / z, 1 / 3, 1 / 3, 1 / 3]);
  });
  gradCheck((xs) => softmax(xs[0], 1), [{ data: randData([2, 4, 3], rng), shape: [2, 4, 3] }]);
  gradCheck((xs) => softmax(xs[0], -1), [{ data: randData([2, 4, 3], rng), shape: [2, 4, 3] }]);
});
