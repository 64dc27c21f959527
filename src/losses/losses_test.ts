import assert from "node:assert/strict";
import {
  backward,
  diceStats,
  getBackend,
  IGNORE_INDEX,
  noGrad,
  parameter,
  softmax,
  tensor,
  tidy,
  zeroGrad,
} from "../engine.ts";
import { Rng } from "../data/rng.ts";
import { annotatedMask, rampUp } from "./cac.ts";
import { cacPairLoss } from "./cac.ts";
import { cscPairLoss } from "./csc.ts";
import { ntXentCross, ntXentJoint } from "./ntxent.ts";
import { DICE_SMOOTH, supervisedLoss } from "./supervised.ts";

function randArray(n: number, rng: Rng, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.next() * 2 - 1) * scale;
  return a;
}

function normRows(a: Float32Array, rows: number, d: number): Float32Array {
  const out = new Float32Array(a);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += out[r * d + j] ** 2;
    const n = Math.max(Math.sqrt(s), 1e-12);
    for (let j = 0; j < d; j++) out[r * d + j] /= n;
  }
  return out;
}

/** Reference NT-Xent over 2n descriptors (rows of u then v), in float64. */
function refJoint(u: Float32Array, v: Float32Array, n: number, d: number, tau: number): number {
  const z = [...Array(2 * n)].map((
    _,
    i,
  ) => (i < n ? u.subarray(i * d, i * d + d) : v.subarray((i - n) * d, (i - n) * d + d)));
  let total = 0;
  for (let i = 0; i < 2 * n; i++) {
    const pos = i < n ? i + n : i - n;
    let denom = 0;
    let num = 0;
    for (let j = 0; j < 2 * n; j++) {
      if (j === i) continue;
      let dot = 0;
      for (let k = 0; k < d; k++) dot += z[i][k] * z[j][k];
      const e = Math.exp(dot / tau);
      denom += e;
      if (j === pos) num = dot / tau;
    }
    total += -(num - Math.log(denom));
  }
  return total / (2 * n);
}

Deno.test("ntXentJoint matches a direct float64 computation", () => {
  const rng = new Rng(1);
  const n = 6, d = 5;
  const u = normRows(randArray(n * d, rng), n, d);
  const v = normRows(randArray(n * d, rng), n, d);
  const got = tidy(() => ntXentJoint(tensor(u, [1, n, d]), tensor(v, [1, n, d]), 0.5).item());
  assert.ok(Math.abs(got - refJoint(u, v, n, d, 0.5)) < 1e-4, `got ${got}`);
});

Deno.test("ntXentCross leaves out invalid descriptors and is symmetric", () => {
  const rng = new Rng(2);
  const n = 4, d = 3;
  const u = normRows(randArray(n * d, rng), n, d);
  const v = normRows(randArray(n * d, rng), n, d);
  const full = tidy(() => ntXentCross(tensor(u, [1, n, d]), tensor(v, [1, n, d]), 0.1).item());
  const swapped = tidy(() => ntXentCross(tensor(v, [1, n, d]), tensor(u, [1, n, d]), 0.1).item());
  assert.ok(Math.abs(full - swapped) < 1e-4);
  // Leaving class 3 out equals the loss computed on the first three descriptors alone.
  const masked = tidy(() =>
    ntXentCross(tensor(u, [1, n, d]), tensor(v, [1, n, d]), 0.1, [[true, true, true, false]]).item()
  );
  const sub = tidy(() =>
    ntXentCross(tensor(u.slice(0, 3 * d), [1, 3, d]), tensor(v.slice(0, 3 * d), [1, 3, d]), 0.1)
      .item()
  );
  assert.ok(Math.abs(masked - sub) < 1e-4, `${masked} vs ${sub}`);
});

Deno.test("supervised loss is near zero for confident correct logits and large for wrong ones", () => {
  const k = 3, n = 64;
  const labels = new Int32Array(n).map((_, i) => i % k);
  const good = new Float32Array(k * n);
  const bad = new Float32Array(k * n);
  for (let i = 0; i < n; i++) {
    good[labels[i] * n + i] = 20;
    bad[((labels[i] + 1) % k) * n + i] = 20;
  }
  const lab = () => tensor(labels, [1, 1, 4, 4, 4], { dtype: "i32" });
  const lg = tidy(() => supervisedLoss(tensor(good, [1, k, 4, 4, 4]), lab()).loss.item());
  const lb = tidy(() => supervisedLoss(tensor(bad, [1, k, 4, 4, 4]), lab()).loss.item());
  assert.ok(lg < 1e-3, `good ${lg}`);
  assert.ok(lb > 10, `bad ${lb}`);
});

/** Labels [B, S] with every 3rd-ish voxel (seeded) set to IGNORE_INDEX, the others in 0..K-1. */
function labelsWithIgnore(n: number, k: number, rng: Rng): Int32Array {
  return Int32Array.from(
    { length: n },
    () => (rng.next() < 0.3 ? IGNORE_INDEX : Math.floor(rng.next() * k)),
  );
}

Deno.test("ignored voxels: CE + soft Dice unchanged by their logits, gradient exactly 0 there, Dice sums leave them out", () => {
  const rng = new Rng(11);
  const b = 2, k = 3, sp = [4, 4, 4], s = 64;
  const shape = [b, k, ...sp];
  const lab = labelsWithIgnore(b * s, k, rng);
  const ignored = (n: number, v: number) => lab[n * s + v] === IGNORE_INDEX;
  const base = randArray(b * k * s, rng, 3);
  // The same logits except at ignored voxels, where they are replaced by large random values.
  const moved = base.slice();
  for (let n = 0; n < b; n++) {
    for (let c = 0; c < k; c++) {
      for (let v = 0; v < s; v++) {
        if (ignored(n, v)) moved[(n * k + c) * s + v] = (rng.next() * 2 - 1) * 50;
      }
    }
  }
  const run = (logits: Float32Array) => {
    const x = parameter(logits, shape);
    const out = tidy(() => {
      const t = supervisedLoss(x, tensor(lab, [b, 1, ...sp], { dtype: "i32" }));
      backward(t.loss);
      return { loss: t.loss.item(), ce: t.ce.item(), dice: t.dice.item() };
    });
    const grad = x.grad!.toArray() as Float32Array;
    x.grad!.dispose();
    x.dispose();
    return { ...out, grad };
  };
  const a = run(base), m = run(moved);
  assert.ok(Number.isFinite(a.loss) && a.loss > 0, `loss ${a.loss}`);
  assert.equal(m.loss, a.loss, "loss depends on logits at ignored voxels");
  assert.equal(m.ce, a.ce);
  assert.equal(m.dice, a.dice);
  for (const g of [a.grad, m.grad]) {
    let annotated = 0;
    for (let n = 0; n < b; n++) {
      for (let c = 0; c < k; c++) {
        for (let v = 0; v < s; v++) {
          const i = (n * k + c) * s + v;
          if (ignored(n, v)) {
            assert.ok(g[i] === 0, `gradient ${g[i]} at ignored voxel ${n},${v} class ${c}`);
          } else if (g[i] !== 0) annotated++;
        }
      }
    }
    assert.ok(annotated > 0, "no gradient at annotated voxels");
  }
  for (let i = 0; i < a.grad.length; i++) {
    assert.equal(m.grad[i], a.grad[i], `gradient ${i} differs`);
  }

  // Dice sums: sum p*g, sum p and sum g over the annotated voxels only (float64 reference).
  const probs = tidy(() => noGrad(() => softmax(tensor(base, shape), 1).toArray())) as Float32Array;
  const ref = new Float64Array(3 * k);
  for (let n = 0; n < b; n++) {
    for (let c = 0; c < k; c++) {
      for (let v = 0; v < s; v++) {
        if (ignored(n, v)) continue;
        const p = probs[(n * k + c) * s + v], g = lab[n * s + v] === c ? 1 : 0;
        ref[c] += p * g;
        ref[k + c] += p;
        ref[2 * k + c] += g;
      }
    }
  }
  const stats = tidy(() =>
    diceStats(tensor(probs, shape), tensor(lab, [b, ...sp], { dtype: "i32" })).toArray()
  );
  for (let i = 0; i < 3 * k; i++) {
    assert.ok(
      Math.abs(stats[i] - ref[i]) < 1e-5 * (1 + ref[i]),
      `stat ${i}: ${stats[i]} vs ${ref[i]}`,
    );
  }
  // ... which is what the soft Dice term is made of.
  const fg = [1, 2].map((c) =>
    (2 * ref[c] + DICE_SMOOTH) / (ref[k + c] + ref[2 * k + c] + DICE_SMOOTH)
  );
  assert.ok(Math.abs(a.dice - (fg[0] + fg[1]) / 2) < 1e-5, `dice ${a.dice}`);

  // Every voxel ignored: loss 0, gradient 0.
  const x = parameter(base, shape);
  const none = tidy(() => {
    const t = supervisedLoss(
      x,
      tensor(new Int32Array(b * s).fill(IGNORE_INDEX), [b, 1, ...sp], { dtype: "i32" }),
    );
    backward(t.loss);
    return t.loss.item();
  });
  assert.equal(none, 0);
  assert.ok((x.grad!.toArray() as Float32Array).every((v) => v === 0));
  x.grad!.dispose();
  x.dispose();
});

Deno.test("L_cac with a valid mask: voxels left out take no part in prototypes or voxel-wise Dice", () => {
  const rng = new Rng(12);
  const b = 1, k = 3, c = 8, sp = [4, 4, 4], s = 64;
  const lab = labelsWithIgnore(b * s, k, rng);
  const out = (v: number) => lab[v] === IGNORE_INDEX;
  const la = randArray(b * k * s, rng, 3), lb = randArray(b * k * s, rng, 3);
  const ha = randArray(b * c * s, rng), hb = randArray(b * c * s, rng);
  const disturb = (a: Float32Array, ch: number) => {
    const o = a.slice();
    for (let q = 0; q < ch; q++) {
      for (let v = 0; v < s; v++) if (out(v)) o[q * s + v] = (rng.next() * 2 - 1) * 20;
    }
    return o;
  };
  const run = (xa: Float32Array, xb: Float32Array, fa: Float32Array, fb: Float32Array) => {
    const ps = [
      parameter(xa, [b, k, ...sp]),
      parameter(xb, [b, k, ...sp]),
      parameter(fa, [b, c, ...sp]),
      parameter(fb, [b, c, ...sp]),
    ];
    const loss = tidy(() => {
      const valid = annotatedMask(tensor(lab, [b, 1, ...sp], { dtype: "i32" }));
      const l = cacPairLoss(
        { probs: softmax(ps[0], 1), features: ps[2], valid },
        { probs: softmax(ps[1], 1), features: ps[3], valid },
        { minMass: 0, voxelwise: true },
      );
      backward(l);
      return l.item();
    });
    const grads = ps.map((p) => p.grad!.toArray() as Float32Array);
    for (const p of ps) {
      p.grad!.dispose();
      p.dispose();
    }
    return { loss, grads };
  };
  const a = run(la, lb, ha, hb);
  const m = run(disturb(la, k), disturb(lb, k), disturb(ha, c), disturb(hb, c));
  assert.ok(Number.isFinite(a.loss) && a.loss > 0);
  assert.ok(Math.abs(m.loss - a.loss) <= 1e-6 * Math.abs(a.loss), `${m.loss} vs ${a.loss}`);
  for (const [g, ch] of a.grads.map((g, i) => [g, i < 2 ? k : c] as const)) {
    for (let q = 0; q < ch; q++) {
      for (let v = 0; v < s; v++) {
        if (out(v)) assert.ok(g[q * s + v] === 0, `gradient ${g[q * s + v]} at a left-out voxel`);
      }
    }
  }
});

Deno.test("L_csc and L_cac carry gradients into both modalities' features", () => {
  const rng = new Rng(3);
  const fa = parameter(randArray(2 * 32 * 64, rng), [2, 32, 4, 4, 4]);
  const fb = parameter(randArray(2 * 32 * 64, rng), [2, 32, 4, 4, 4]);
  tidy(() => backward(cscPairLoss(fa, fb)));
  for (const p of [fa, fb]) {
    const g = p.grad!.toArray() as Float32Array;
    assert.ok(g.some((x) => Math.abs(x) > 1e-8), "csc gradient is zero");
  }
  zeroGrad([fa, fb]);
  const la = parameter(randArray(2 * 3 * 64, rng, 3), [2, 3, 4, 4, 4]);
  const lb = parameter(randArray(2 * 3 * 64, rng, 3), [2, 3, 4, 4, 4]);
  const ha = parameter(randArray(2 * 8 * 64, rng), [2, 8, 4, 4, 4]);
  const hb = parameter(randArray(2 * 8 * 64, rng), [2, 8, 4, 4, 4]);
  tidy(() => {
    backward(cacPairLoss(
      { probs: softmax(la, 1), features: ha },
      { probs: softmax(lb, 1), features: hb },
    ));
  });
  for (const p of [la, lb, ha, hb]) {
    const g = p.grad!.toArray() as Float32Array;
    assert.ok(g.some((x) => Math.abs(x) > 1e-8), "cac gradient is zero");
  }
  for (const p of [fa, fb, la, lb, ha, hb]) {
    p.grad?.dispose();
    p.dispose();
  }
});

Deno.test("L_csc on 256 channels at 16^3 needs only a few MB beyond its inputs", () => {
  const rng = new Rng(4);
  const n = 256 * 16 * 16 * 16;
  const fa = parameter(randArray(n, rng), [1, 256, 16, 16, 16]);
  const fb = parameter(randArray(n, rng), [1, 256, 16, 16, 16]);
  const be = getBackend();
  be.resetPeak();
  const before = be.memoryStats().liveBytes;
  tidy(() => backward(cscPairLoss(fa, fb)));
  const extra = be.memoryStats().peakBytes - before;
  // Gradients of the two inputs (2 x 4 MiB) are unavoidable; the loss itself must stay small.
  const inputGrads = 2 * n * 4;
  assert.ok(
    extra - inputGrads < 8 * 2 ** 20,
    `L_csc used ${(extra / 2 ** 20).toFixed(1)} MiB beyond input grads`,
  );
  for (const p of [fa, fb]) {
    p.grad?.dispose();
    p.dispose();
  }
});

Deno.test("ramp-up weight goes from exp(-5) to 1", () => {
  assert.ok(Math.abs(rampUp(0, 100) - Math.exp(-5)) < 1e-12);
  assert.equal(rampUp(100, 100), 1);
  assert.equal(rampUp(500, 100), 1);
  assert.ok(rampUp(50, 100) > rampUp(25, 100));
});
