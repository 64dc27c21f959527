import { deepStrictEqual, throws } from "node:assert/strict";
import { tensor } from "../tensor/factories.ts";
import { tidy } from "../tensor/scope.ts";
import { clone, concat, permute, reshape, slice, split } from "./shape_ops.ts";
import { assertClose, gradCheck, randData, seededRng } from "./test_util.ts";
import { backward } from "../tensor/autograd.ts";
import { add, mul } from "./binary.ts";
import { setOpProfiler } from "./exec.ts";
import { expand, sum } from "./reduce.ts";

const iota = (n: number) => Float32Array.from({ length: n }, (_, i) => i);

Deno.test("reshape keeps row-major order, resolves -1 and reaches rank 0", () => {
  tidy(() => {
    const x = tensor(iota(24), [2, 3, 4]);
    const y = reshape(x, [4, -1]);
    deepStrictEqual(y.shape, [4, 6]);
    assertClose(y.toArray(), iota(24));
    const s = reshape(tensor([5], [1, 1]), []);
    deepStrictEqual(s.shape, []);
    deepStrictEqual(s.item(), 5);
    throws(() => reshape(x, [5, -1]), {
      message: "reshape: cannot reshape [2,3,4] (24 elements) to [5,-1]",
    });
    throws(() => reshape(x, [-1, -1]), /more than one -1/);
  });
});

Deno.test("reshape of a blocked 5-D tensor (C = 16) keeps logical order", () => {
  tidy(() => {
    const x = tensor(iota(2 * 16 * 8), [2, 16, 2, 2, 2]);
    const y = expand(x, [2, 16, 2, 2, 2]); // an op output, may be blocked natively
    assertClose(reshape(y, [32, 8]).toArray(), iota(256));
  });
});

/** x.permute(order) of row-major data, computed directly. */
function permuteRef(data: Float32Array, shape: number[], order: number[]): Float32Array {
  const out = new Float32Array(data.length);
  const ys = order.map((a) => shape[a]);
  const xst = shape.map((_, i) => shape.slice(i + 1).reduce((p, d) => p * d, 1));
  for (let i = 0; i < out.length; i++) {
    let rem = i;
    let off = 0;
    for (let k = ys.length - 1; k >= 0; k--) {
      off += (rem % ys[k]) * xst[order[k]];
      rem = Math.floor(rem / ys[k]);
    }
    out[i] = data[off];
  }
  return out;
}

Deno.test("permute reorders axes as x.permute(order) (plain, blocked, size-1 axes, i32, 6-D)", () => {
  tidy(() => {
    const cases: [number[], number[]][] = [
      [[2, 3, 4], [0, 2, 1]],
      [[2, 3, 4], [2, 0, 1]],
      [[1, 5, 3], [0, 2, 1]],
      [[2, 1, 3, 1], [3, 2, 1, 0]],
      [[2, 3, 2, 2, 3, 2], [0, 2, 4, 1, 3, 5]],
      [[2, 3, 4], [0, 1, 2]],
      [[4, 1, 5], [1, 0, 2]],
    ];
    for (const [shape, order] of cases) {
      const n = shape.reduce((a, b) => a * b, 1);
      const y = permute(tensor(iota(n), shape), order);
      deepStrictEqual(y.shape, order.map((a) => shape[a]));
      assertClose(y.toArray(), permuteRef(iota(n), shape, order), { msg: `${shape} ${order}` });
    }
    // An op output that may be blocked natively (5-D, C = 16), to channels-last.
    const shape = [2, 16, 2, 3, 2];
    const b = expand(tensor(iota(384), shape), shape);
    assertClose(
      permute(b, [0, 2, 3, 4, 1]).toArray(),
      permuteRef(iota(384), shape, [0, 2, 3, 4, 1]),
    );
    assertClose(
      permute(b, [1, 0, 4, 3, 2]).toArray(),
      permuteRef(iota(384), shape, [1, 0, 4, 3, 2]),
    );
    const xi = tensor(Int32Array.from({ length: 6 }, (_, i) => i - 2), [2, 3], { dtype: "i32" });
    deepStrictEqual([...permute(xi, [-1, 0]).toArray()], [-2, 1, -1, 2, 0, 3]);
    const x = tensor(iota(24), [2, 3, 4]);
    throws(() => permute(x, [0, 1]), /must list each of the 3 axes/);
    throws(() => permute(x, [0, 1, 1]), /lists an axis twice/);
    throws(() => permute(x, [0, 1, 3]), /out of range|axis 3/);
  });
  const rng = seededRng(8);
  const a = { data: randData([2, 3, 4], rng), shape: [2, 3, 4] };
  gradCheck((xs) => permute(xs[0], [2, 0, 1]), [a]);
  gradCheck((xs) => mul(permute(xs[0], [1, 0, 2]), permute(xs[0], [1, 0, 2])), [a]);
});

Deno.test("slice, split and concat match JS references", () => {
  tidy(() => {
    const x = tensor(iota(24), [2, 3, 4]);
    const s = slice(x, 1, 1, 2);
    deepStrictEqual(s.shape, [2, 2, 4]);
    assertClose(s.toArray(), [4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23]);
    const parts = split(x, -1, [1, 3]);
    deepStrictEqual(parts.map((p) => p.shape), [[2, 3, 1], [2, 3, 3]]);
    assertClose(parts[0].toArray(), [0, 4, 8, 12, 16, 20]);
    const c = concat([parts[1], parts[0]], 2);
    assertClose(c.toArray().slice(0, 4), [1, 2, 3, 0]);
    throws(() => slice(x, 1, 2, 2), /does not fit axis 1/);
    throws(() => concat([x, tensor(iota(6), [2, 3, 1])], 1), /does not match xs\[0\]/);
  });
});

Deno.test("expand broadcasts and its gradient sums back", () => {
  tidy(() => {
    const y = expand(tensor([1, 2], [2, 1]), [3, 2, 2]);
    assertClose(y.toArray(), [1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 2, 2]);
    throws(() => expand(tensor([1, 2], [2]), [3]), /does not broadcast to \[3\]/);
  });
  const rng = seededRng(5);
  gradCheck((xs) => expand(xs[0], [2, 3, 4]), [{ data: randData([3, 1], rng), shape: [3, 1] }]);
});

Deno.test("shape ops: gradients match finite differences", () => {
  const rng = seededRng(6);
  const a = { data: randData([2, 3, 4], rng), shape: [2, 3, 4] };
  const b = { data: randData([2, 2, 4], rng), shape: [2, 2, 4] };
  gradCheck((xs) => reshape(xs[0], [6, 4]), [a]);
  gradCheck((xs) => slice(xs[0], 1, 1, 1), [a]);
  gradCheck((xs) => slice(xs[0], 2, 0, 3), [a]);
  gradCheck((xs) => concat([xs[0], xs[1]], 1), [a, b]);
  gradCheck((xs) => concat([xs[0], xs[0]], 0), [a]);
  gradCheck((xs) => clone(xs[0]), [a]);
  gradCheck((xs) => split(xs[0], 1, [2, 1])[0], [a]);
});

Deno.test("slice gradients of one tensor are joined by one concat (gaps, overlaps, mixed axes)", () => {
  const rng = seededRng(31);
  const a = { data: randData([4, 3, 2], rng), shape: [4, 3, 2] };
  // complementary, with a gap, overlapping, and on two axes
  gradCheck((xs) => concat([slice(xs[0], 0, 0, 1), slice(xs[0], 0, 1, 3)], 0), [a]);
  gradCheck((xs) => concat([slice(xs[0], 0, 0, 1), slice(xs[0], 0, 2, 1)], 0), [a]);
  gradCheck((xs) => concat([slice(xs[0], 0, 0, 3), slice(xs[0], 0, 1, 3)], 0), [a]);
  gradCheck(
    (xs) => {
      const s1 = slice(xs[0], 1, 2, 1);
      return add(sum(slice(xs[0], 0, 1, 2), "all"), sum(mul(s1, s1), "all"));
    },
    [a],
    { msg: "mixed axes" },
  );
  gradCheck((xs) => mul(clone(xs[0]), add(slice(xs[0], 2, 0, 1), slice(xs[0], 2, 1, 1))), [a], {
    msg: "slices and a full gradient",
  });

  // Two complementary slices: one CONCAT, no FILL and no BINARY add in backward.
  const counts = new Map<string, number>();
  const x = tensor(randData([4, 3], rng), [4, 3], { requiresGrad: true });
  tidy(() => {
    const l = add(sum(slice(x, 0, 0, 1), "all"), sum(slice(x, 0, 1, 3), "all"));
    setOpProfiler((op) => counts.set(op, (counts.get(op) ?? 0) + 1));
    try {
      backward(l);
    } finally {
      setOpProfiler(null);
    }
  });
  deepStrictEqual([counts.get("CONCAT"), counts.get("FILL") ?? 0], [1, 1]); // the FILL is backward's seed
  assertClose(x.grad!.toArray(), new Float32Array(12).fill(1));
  x.dispose();
});
