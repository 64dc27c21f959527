import assert from "node:assert/strict";
import { learningRate, MAX_WARMUP_FRACTION } from "./optim.ts";

Deno.test("learning rate: linear warm-up, at most a tenth of the run, then cosine to 0", () => {
  // A long run keeps the configured 50 warm-up iterations.
  const long = { base: 1e-3, total: 2000, warmup: 50 };
  assert.equal(learningRate(0, long), 1e-3 / 50);
  assert.equal(learningRate(49, long), 1e-3);
  assert.ok(Math.abs(learningRate(50, long) - 1e-3) < 1e-12);
  assert.ok(learningRate(1999, long) < 1e-8);
  // A 66-iteration (time-budgeted) run warms up over 7 iterations, not 50.
  const short = { base: 1e-3, total: 66, warmup: 50 };
  const w = Math.ceil(MAX_WARMUP_FRACTION * 66);
  assert.equal(w, 7);
  assert.equal(learningRate(w - 1, short), 1e-3);
  assert.ok(learningRate(w, short) > 0.99e-3);
  assert.ok(learningRate(33, short) < 0.6e-3 && learningRate(33, short) > 0.4e-3);
  // Poly and constant follow the same warm-up.
  assert.equal(learningRate(0, { ...short, kind: "constant" }), 1e-3 / w);
  assert.equal(learningRate(40, { ...short, kind: "constant" }), 1e-3);
  assert.ok(learningRate(65, { ...short, kind: "poly" }) < 0.1e-3);
});
