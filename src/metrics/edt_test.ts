import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert";

function assertAlmostEquals(got: number, want: number, tol: number, msg = ""): void {
  if (!(Math.abs(got - want) <= tol)) {
    throw new Error(`${msg} expected ${want} +- ${tol}, got ${got}`);
  }
}
import { squaredDistanceTransform } from "./edt.ts";
import { seededRng as rng } from "../ops/test_util.ts";

function bruteForce(
  feat: Uint8Array,
  dims: [number, number, number],
  sp: [number, number, number],
): Float64Array {
  const [n0, n1, n2] = dims;
  const pts: [number, number, number][] = [];
  for (let a = 0; a < n0; a++) {
    for (let b = 0; b < n1; b++) {
      for (let c = 0; c < n2; c++) if (feat[(a * n1 + b) * n2 + c]) pts.push([a, b, c]);
    }
  }
  const out = new Float64Array(n0 * n1 * n2).fill(Infinity);
  for (let a = 0; a < n0; a++) {
    for (let b = 0; b < n1; b++) {
      for (let c = 0; c < n2; c++) {
        let best = Infinity;
        for (const p of pts) {
          const d = ((a - p[0]) * sp[0]) ** 2 + ((b - p[1]) * sp[1]) ** 2 +
            ((c - p[2]) * sp[2]) ** 2;
          if (d < best) best = d;
        }
        out[(a * n1 + b) * n2 + c] = best;
      }
    }
  }
  return out;
}

Deno.test("edt: single point gives squared anisotropic distances", () => {
  const dims: [number, number, number] = [3, 4, 5];
  const feat = new Uint8Array(60);
  feat[(1 * 4 + 2) * 5 + 3] = 1;
  const d = squaredDistanceTransform(feat, { dims, spacing: [3, 0.5, 1.25] });
  assertEquals(d[(1 * 4 + 2) * 5 + 3], 0);
  assertAlmostEquals(d[0], 9 + 1 + 9 * 1.5625, 1e-12);
  assertAlmostEquals(d[(2 * 4 + 3) * 5 + 4], 9 + 0.25 + 1.5625, 1e-12);
});

Deno.test("edt: no feature voxel gives Infinity everywhere", () => {
  const d = squaredDistanceTransform(new Uint8Array(24), { dims: [2, 3, 4], spacing: [1, 1, 1] });
  assertEquals(d.every((v) => v === Infinity), true);
});

Deno.test("edt: matches brute force on random masks with anisotropic spacing", () => {
  const r = rng(7);
  for (let trial = 0; trial < 30; trial++) {
    const dims: [number, number, number] = [
      1 + Math.floor(r() * 7),
      1 + Math.floor(r() * 7),
      1 + Math.floor(r() * 7),
    ];
    const sp: [number, number, number] = [0.3 + r() * 4, 0.3 + r() * 4, 0.3 + r() * 4];
    const density = r() * 0.3;
    const feat = new Uint8Array(dims[0] * dims[1] * dims[2]);
    for (let i = 0; i < feat.length; i++) feat[i] = r() < density ? 1 : 0;
    const got = squaredDistanceTransform(feat, { dims, spacing: sp });
    const want = bruteForce(feat, dims, sp);
    for (let i = 0; i < feat.length; i++) {
      if (want[i] === Infinity) assertEquals(got[i], Infinity);
      else assertAlmostEquals(got[i], want[i], 1e-9 * (1 + want[i]), `trial ${trial} voxel ${i}`);
    }
  }
});

Deno.test("edt: rejects size mismatch and bad spacing", () => {
  assertThrows(
    () => squaredDistanceTransform(new Uint8Array(5), { dims: [2, 2, 2], spacing: [1, 1, 1] }),
    /5 voxels/,
  );
  assertThrows(
    () => squaredDistanceTransform(new Uint8Array(8), { dims: [2, 2, 2], spacing: [1, 0, 1] }),
    /spacing/,
  );
});
