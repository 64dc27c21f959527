import assert from "node:assert/strict";
import { autoPatchSize, planDivisor, planUNet } from "./plan.ts";

Deno.test("isotropic plan halves every axis per level with widths 16..256", () => {
  const p = planUNet({ patchSize: [64, 64, 64], spacing: [1, 1, 1] });
  assert.equal(p.levels.length, 5);
  assert.deepEqual(p.levels.map((l) => l.width), [16, 32, 64, 128, 256]);
  assert.deepEqual(p.levels[1].stride, [2, 2, 2]);
  assert.deepEqual(planDivisor(p), [16, 16, 16]);
  assert.ok(p.levels.every((l) => l.kernel.every((k) => k === 3)));
});

Deno.test("anisotropic cardiac plan keeps thick slices until in-plane spacing catches up", () => {
  // 8 mm slices, 1.25 mm in-plane: no pooling and kernel 1 along D at first.
  const p = planUNet({ patchSize: [8, 96, 96], spacing: [8, 1.25, 1.25] });
  assert.deepEqual(p.levels[0].kernel, [1, 3, 3]);
  assert.deepEqual(p.levels[1].stride, [1, 2, 2]);
  const f = planDivisor(p);
  assert.equal(96 % f[1], 0);
  assert.equal(8 % f[0], 0);
  // D is pooled only once in-plane spacing reaches half the slice spacing (1.25 * 2^2 = 5 >= 4).
  const firstDPool = p.levels.findIndex((l) => l.stride[0] === 2);
  assert.ok(firstDPool === -1 || firstDPool >= 3, `D pooled at level ${firstDPool}`);
});

Deno.test("plan rejects bad input", () => {
  assert.throws(() => planUNet({ patchSize: [0, 8, 8], spacing: [1, 1, 1] }), /patch size/);
  assert.throws(() => planUNet({ patchSize: [8, 8, 8], spacing: [1, -1, 1] }), /spacing/);
});

Deno.test("autoPatchSize fits the median image within the voxel budget, shrinking the longest physical axis", () => {
  const vox = (p: number[]) => p[0] * p[1] * p[2];
  // Isotropic brain MRI (BraTS-like after crop): a near-cubic patch that uses the budget, all axes poolable.
  const brain = autoPatchSize([140, 170, 140], [1, 1, 1], 51200);
  assert.ok(vox(brain) <= 51200 && vox(brain) > 0.8 * 51200, `${brain}`);
  assert.ok(brain.every((v) => v % 8 === 0 && v >= 32), `${brain}`);
  // Thick-slice prostate (20 slices of 3.6 mm, 0.625 mm in-plane): balanced physical extent, so fewer
  // slices and a wider in-plane field than the voxel counts alone would give.
  const sp: [number, number, number] = [3.6, 0.625, 0.625];
  const prostate = autoPatchSize([20, 256, 256], sp, 51200);
  const mm = prostate.map((v, a) => v * sp[a]);
  assert.ok(vox(prostate) <= 51200, `${prostate}`);
  assert.ok(Math.max(...mm) / Math.min(...mm) < 1.5, `physical extent ${mm}`);
  assert.equal(prostate[1], prostate[2]);
  // A small image: the patch is about the image (rounded to poolable sizes).
  assert.deepEqual(autoPatchSize([12, 40, 36], [1, 1, 1], 51200), [12, 40, 40]);
  // A GPU budget gives a bigger patch from the same data.
  assert.deepEqual(autoPatchSize([140, 170, 140], [1, 1, 1], 128 ** 3), [128, 128, 128]);
  assert.throws(() => autoPatchSize([0, 10, 10], [1, 1, 1], 100), /must be positive/);
});
