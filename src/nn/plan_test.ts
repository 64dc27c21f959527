import assert from "node:assert/strict";
import { planDivisor, planUNet } from "./plan.ts";

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
