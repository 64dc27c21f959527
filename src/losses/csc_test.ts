import assert from "node:assert/strict";
import { tensor, tidy } from "../engine.ts";
import { channelDescriptors, cscPairLoss } from "./csc.ts";

function features(seed: number, c: number, n: number, shift: number): Float32Array {
  // Non-negative features (as after LeakyReLU) with a channel-specific spatial pattern.
  let s = seed;
  const r = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  return Float32Array.from({ length: c * n }, (_, i) => {
    const ch = Math.floor(i / n), v = i % n;
    return shift + Math.max(0, Math.sin(0.7 * ch * (v + 1))) + 0.05 * r();
  });
}

Deno.test("L_csc: centred descriptors are zero-mean unit vectors; plain ones of non-negative maps are not", () => {
  tidy(() => {
    const f = tensor(features(1, 6, 8, 1), [1, 6, 2, 2, 2]);
    const plain = channelDescriptors(f, 4, false).toArray() as Float32Array;
    const cent = channelDescriptors(f, 4, true).toArray() as Float32Array;
    for (let c = 0; c < 6; c++) {
      const p = plain.subarray(c * 8, c * 8 + 8), q = cent.subarray(c * 8, c * 8 + 8);
      const norm = Math.hypot(...q);
      assert.ok(Math.abs(norm - 1) < 1e-4, `channel ${c}: |u| = ${norm}`);
      assert.ok(Math.abs(q.reduce((a, b) => a + b, 0)) < 1e-4);
      assert.ok(p.every((x) => x > 0), "plain descriptors of positive maps are positive");
    }
    // One cell: nothing to centre, the plain descriptor is kept.
    const one = channelDescriptors(tensor(features(2, 3, 1, 1), [1, 3, 1, 1, 1]), 4, true);
    assert.deepEqual([...(one.toArray() as Float32Array)].map((x) => +x.toFixed(4)), [1, 1, 1]);
  });
});

Deno.test("L_csc: with centring, matching channel patterns give a clearly lower loss than shuffled ones", () => {
  tidy(() => {
    const c = 8, n = 27;
    const a = features(3, c, n, 1);
    const b = a.map((x, i) => x + 0.5 + 0.01 * Math.cos(i)); // same patterns, shifted intensity
    const shuffled = new Float32Array(c * n);
    for (let ch = 0; ch < c; ch++) {
      shuffled.set(b.subarray(((ch + 3) % c) * n, ((ch + 3) % c + 1) * n), ch * n);
    }
    const shape = [1, c, 3, 3, 3];
    const loss = (x: Float32Array, y: Float32Array, center: boolean) =>
      cscPairLoss(tensor(x, shape), tensor(y, shape), { grid: 3, center }).item();
    const matched = loss(a, b, true), wrong = loss(a, shuffled, true);
    assert.ok(matched < wrong - 0.5, `matched ${matched} vs shuffled ${wrong}`);
    // Without centring the positive shift makes every pair alike: the gap is much smaller.
    const gapPlain = loss(a, shuffled, false) - loss(a, b, false);
    assert.ok(
      gapPlain < (wrong - matched) / 2,
      `plain gap ${gapPlain}, centred ${wrong - matched}`,
    );
  });
});
