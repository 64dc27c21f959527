import { assert, assertAlmostEquals, assertEquals } from "./testing.ts";
import {
  augmentIntensity,
  DEFAULT_AUGMENT,
  drawMisalignment,
  drawSpatial,
  NO_AUGMENT,
  thickAxis,
} from "./augment.ts";
import { det3 } from "./affine.ts";
import { Rng } from "./rng.ts";

Deno.test("augment: anisotropic spacing rotates only about the thick axis", () => {
  const rng = new Rng(1);
  const opts = { ...DEFAULT_AUGMENT, rotateProb: 1, scaleProb: 0, flipProb: 0 };
  assertEquals(thickAxis([1.25, 1.25, 8]), 2);
  assertEquals(thickAxis([1, 1.2, 1.5]), -1);
  let inPlaneTurns = 0;
  for (let t = 0; t < 50; t++) {
    const s = drawSpatial(rng, [1.25, 1.25, 8], opts);
    // z stays z.
    assertAlmostEquals(s[8], 1, 1e-9);
    assertAlmostEquals(s[2], 0, 1e-9);
    assertAlmostEquals(s[5], 0, 1e-9);
    assertAlmostEquals(Math.abs(det3(s)), 1, 1e-9);
    if (Math.abs(s[0]) < 0.5) inPlaneTurns++; // a 90/270 degree turn happened
  }
  assert(inPlaneTurns > 5, `90-degree turns ${inPlaneTurns}`);
  // Different in-plane spacings: no 90-degree turns, only small rotations.
  for (let t = 0; t < 50; t++) {
    const s = drawSpatial(rng, [1, 1.5, 8], { ...opts, rot90Prob: 1 });
    assert(s[0] > Math.cos((16 * Math.PI) / 180), `no quarter turns, got ${s}`);
  }
  // Isotropic: rotations about all axes.
  const s = drawSpatial(new Rng(5), [1, 1, 1], { ...opts, rot90Prob: 0 });
  assert(Math.abs(s[2]) > 1e-6 || Math.abs(s[5]) > 1e-6, "z axis moves under isotropic rotation");
  // Scale within range.
  const z = drawSpatial(new Rng(6), [1, 1, 1], { ...NO_AUGMENT, scaleProb: 1 });
  assert(z[0] >= 0.85 && z[0] <= 1.15 && z[0] === z[4] && z[4] === z[8]);
});

Deno.test("augment: intensity transforms (gamma keeps mean and std, noise adds variance, off means off)", () => {
  const base = new Float32Array(1000).map((_, i) => Math.sin(i / 10) + (i % 7) / 7);
  const mean = (a: Float32Array) => a.reduce((s, v) => s + v, 0) / a.length;
  const std = (a: Float32Array) =>
    Math.sqrt(a.reduce((s, v) => s + (v - mean(a)) ** 2, 0) / a.length);
  const g = base.slice();
  augmentIntensity(g, new Rng(1), { ...NO_AUGMENT, gammaProb: 1 });
  assert(g.some((v, i) => Math.abs(v - base[i]) > 1e-3), "gamma changed values");
  assertAlmostEquals(mean(g), mean(base), 1e-4);
  assertAlmostEquals(std(g), std(base), 1e-4);
  const n = base.slice();
  augmentIntensity(n, new Rng(2), { ...NO_AUGMENT, noiseProb: 1, noiseStd: 0.5 });
  assert(std(n) > std(base));
  const off = base.slice();
  augmentIntensity(off, new Rng(3), NO_AUGMENT);
  assertEquals(off, base);
});

Deno.test("augment: misalignment stays within its limits", () => {
  const rng = new Rng(4);
  for (let t = 0; t < 100; t++) {
    const m = drawMisalignment(rng, { translationMm: 5, rotationDeg: 10 });
    assert(Math.hypot(...m.translation) <= 5 + 1e-9);
    assertAlmostEquals(det3(m.rotation), 1, 1e-9);
    // Rotation angle bounded by the combination of three 10-degree rotations.
    const angle = Math.acos(Math.min(1, (m.rotation[0] + m.rotation[4] + m.rotation[8] - 1) / 2));
    assert(angle <= (3 * 10 * Math.PI) / 180 + 1e-9);
  }
});
