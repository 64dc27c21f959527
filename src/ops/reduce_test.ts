import { deepStrictEqual, throws } from "node:assert/strict";
import { tensor } from "../tensor/factories.ts";
import { tidy } from "../tensor/scope.ts";
import { argmax, max, mean, reduceTo, sum } from "./reduce.ts";
import { assertClose, gradCheck, randData, seededRng } from "./test_util.ts";

Deno.test("sum, mean, max over axes with and without keepDims", () => {
  tidy(() => {
    const x = tensor([1, 5, 3, 4, 2, 6], [2, 3]);
    const s = sum(x, [1]);
    deepStrictEqual(s.shape, [2]);
    assertClose(s.toArray(), [9, 12]);
    const sk = sum(x, [0], { keepDims: true });
    deepStrictEqual(sk.shape, [1, 3]);
    assertClose(sk.toArray(), [5, 7, 9]);
    const m = mean(x, "all");
    deepStrictEqual(m.shape, []);
    assertClose([m.item()], [3.5]);
    assertClose(max(x, [-1]).toArray(), [5, 6]);
    assertClose(max(x, "all", { keepDims: true }).toArray(), [6]);
    throws(() => sum(x, [2]), { message: "sum: axis 2 is out of range for a tensor of rank 2" });
    throws(() => sum(x, [1, -1]), /listed twice/);
  });
});

Deno.test("argmax returns i32 indices, dropping or keeping the axis", () => {
  tidy(() => {
    const x = tensor([1, 5, 3, 7, 2, 6], [2, 3]);
    const a = argmax(x, 1);
    deepStrictEqual([a.dtype, a.shape], ["i32", [2]]);
    deepStrictEqual(Array.from(a.toArray()), [1, 0]);
    deepStrictEqual(argmax(x, 0, { keepDims: true }).shape, [1, 3]);
  });
});

Deno.test("reductions: gradients match finite differences (max splits ties)", () => {
  const rng = seededRng(8);
  const x = { data: randData([2, 3, 4], rng), shape: [2, 3, 4] };
  gradCheck((xs) => sum(xs[0], [0, 2]), [x]);
  gradCheck((xs) => mean(xs[0], [1], { keepDims: true }), [x]);
  gradCheck((xs) => mean(xs[0], "all"), [x]);
  gradCheck((xs) => max(xs[0], [2]), [x]);
  gradCheck((xs) => max(xs[0], "all"), [{ data: new Float32Array([1, 3, 3, 0]), shape: [4] }], {
    h: 1e-3,
  });
});

Deno.test("reduceTo sums a broadcast gradient back to the input shape", () => {
  tidy(() => {
    const g = tensor(Float32Array.from({ length: 12 }, (_, i) => i), [2, 3, 2]);
    const r = reduceTo(g, [3, 1]);
    deepStrictEqual(r.shape, [3, 1]);
    assertClose(r.toArray(), [0 + 1 + 6 + 7, 2 + 3 + 8 + 9, 4 + 5 + 10 + 11]);
    deepStrictEqual(reduceTo(g, [2, 3, 2]) === g, true);
  });
});
