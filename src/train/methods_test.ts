import assert from "node:assert/strict";
import { backward, IGNORE_INDEX, tidy, zeroGrad } from "../engine.ts";
import { Rng } from "../data/rng.ts";
import { planUNet } from "../nn/plan.ts";
import { parseTrainConfig } from "./config.ts";
import { buildMethod, type MethodModel } from "./methods.ts";
import { AdamW } from "./optim.ts";
import { type HostBatch, toEngineBatch } from "./trainer.ts";

const PATCH: [number, number, number] = [4, 16, 16];

function tinyModel(method: string, set: Record<string, unknown> = {}): MethodModel {
  const config = parseTrainConfig({
    task: "cardiac",
    method,
    network: { baseWidth: 4, maxLevels: 3 },
    ...set,
  });
  const plan = planUNet({ patchSize: PATCH, spacing: [1, 1, 1], maxLevels: 3, baseWidth: 4 });
  const root = new Rng(7);
  return buildMethod({
    config,
    plan,
    numClasses: 3,
    modalities: 2,
    primary: 0,
    rng: () => {
      const r = root.derive("m", root.nextU32());
      return () => r.next();
    },
  });
}

function batch(seed: number, labeled = 1, unlabeled = 1): HostBatch {
  const r = new Rng(seed);
  const n = PATCH[0] * PATCH[1] * PATCH[2];
  const img = (b: number) => Float32Array.from({ length: b * n }, () => r.normal());
  // A blob of class 1 and class 2 so both classes exist.
  const lab = new Int32Array(labeled * n).map((
    _,
    i,
  ) => ((i % n) % 16 < 5 ? 1 : (i % n) % 16 > 10 ? 2 : 0));
  return {
    patch: PATCH,
    labeled: { images: [img(labeled), img(labeled)], labels: [lab, lab.slice()], count: labeled },
    unlabeled: unlabeled ? { images: [img(unlabeled), img(unlabeled)], count: unlabeled } : null,
  };
}

Deno.test("CMC: L_csc and L_cac each change the weights of both encoders", () => {
  // Two models from the same seed take one step on the same batch, one with the term and one
  // without: if the term carried no gradient (as in the authors' code) the weights would be equal.
  const b = batch(1);
  const encoderWeights = (which: "csc" | "cac", on: boolean) => {
    const m = tinyModel("cmc", {
      loss: {
        lambdaCsc: which === "csc" && on ? 1 : 0,
        lambdaCac: which === "cac" && on ? 1 : 0,
        rampFraction: 0,
      },
    });
    const opt = new AdamW(m.student.namedParameters());
    const terms = tidy(() => {
      const r = m.loss(toEngineBatch(b), 10, 10);
      backward(r.loss);
      return r.terms;
    });
    opt.step(1e-3);
    const w = new Map(
      m.student.namedParameters().filter(([n]) => n.startsWith("encoders.")).map((
        [n, p],
      ) => [n, p.toArray()]),
    );
    opt.dispose();
    m.dispose();
    return { w, terms };
  };
  for (const which of ["csc", "cac"] as const) {
    const on = encoderWeights(which, true);
    const off = encoderWeights(which, false);
    assert.ok(on.terms[which] > 0, `${which} term missing: ${JSON.stringify(on.terms)}`);
    for (const enc of ["encoders.0.", "encoders.1."]) {
      const differs = [...on.w].some(([n, v]) =>
        n.startsWith(enc) && v.some((x, i) => x !== off.w.get(n)![i])
      );
      assert.ok(differs, `${which} did not change ${enc} weights`);
    }
  }
});

Deno.test("every method computes a finite loss and gradients on a tiny batch", () => {
  for (const method of ["cmc", "supervised", "early-fusion", "mean-teacher", "mutual"]) {
    const m = tinyModel(method, method === "mutual" ? { loss: { pseudoThreshold: 0 } } : {});
    const terms = tidy(() => {
      const r = m.loss(toEngineBatch(batch(2)), 5, 10);
      backward(r.loss);
      return r.terms;
    });
    assert.ok(Number.isFinite(terms.loss), `${method}: ${JSON.stringify(terms)}`);
    const withGrad = m.student.parameters().filter((p) => p.grad !== null).length;
    assert.ok(withGrad > 0, `${method}: no gradients`);
    if (method === "mean-teacher") assert.ok("consistency" in terms);
    if (method === "mutual") assert.ok("mutual" in terms);
    zeroGrad(m.student.parameters());
    m.dispose();
  }
});

Deno.test("a modality without label maps contributes no supervised term", () => {
  const m = tinyModel("cmc", { loss: { lambdaCsc: 0, lambdaCac: 0 } });
  const b = batch(3, 1, 0);
  b.labeled.labels[1].fill(IGNORE_INDEX);
  const terms = tidy(() => m.loss(toEngineBatch(b), 0, 10).terms);
  assert.ok("dice_0" in terms && !("dice_1" in terms), JSON.stringify(terms));
  m.dispose();
});

Deno.test("every method trains on labels with ignored voxels; a batch with every voxel ignored has sup 0", () => {
  for (const method of ["cmc", "supervised", "early-fusion", "mean-teacher", "mutual"]) {
    for (const everywhere of [false, true]) {
      const m = tinyModel(method, method === "mutual" ? { loss: { pseudoThreshold: 0 } } : {});
      const b = batch(4);
      // A slab of ignored voxels in both modalities' labels (or all of them).
      for (const lab of b.labeled.labels) {
        lab.forEach((_, i) => {
          if (everywhere || i % 256 < 64) lab[i] = IGNORE_INDEX;
        });
      }
      const terms = tidy(() => {
        const r = m.loss(toEngineBatch(b), 5, 10);
        backward(r.loss);
        return r.terms;
      });
      const what = `${method}${everywhere ? " (all ignored)" : ""}: ${JSON.stringify(terms)}`;
      assert.ok(Number.isFinite(terms.loss), what);
      if (everywhere) assert.equal(terms.sup, 0, what);
      else assert.ok(terms.sup > 0, what);
      zeroGrad(m.student.parameters());
      m.dispose();
    }
  }
});

Deno.test("deep supervision: nnU-Net weights, labels at the coarse grid, and every method's heads get gradients", async () => {
  const { deepSupervisionWeights, downsampleLabels } = await import("./methods.ts");
  const { tensor } = await import("../engine.ts");
  const w = deepSupervisionWeights(2);
  assert.deepEqual(w.map((x) => +x.toFixed(6)), [4 / 7, 2 / 7, 1 / 7].map((x) => +x.toFixed(6)));
  assert.deepEqual(deepSupervisionWeights(0), [1]);
  // Coarse voxel i takes fine voxel 2i (the centre of the stride-2 convolution's window).
  const lab = tensor(Int32Array.from({ length: 4 * 8 * 8 }, (_, i) => i), [1, 1, 4, 8, 8], {
    dtype: "i32",
  });
  const coarse = tidy(() => downsampleLabels(lab, [1, 3, 2, 4, 4]).toArray() as Int32Array);
  assert.deepEqual([...coarse.slice(0, 5)], [0, 2, 4, 6, 16]);
  assert.equal(coarse[16], 2 * 64);
  for (const method of ["supervised", "early-fusion", "cmc", "mutual", "mean-teacher"]) {
    const m = tinyModel(method, { network: { baseWidth: 4, maxLevels: 3, deepSupervision: 1 } });
    const heads = m.student.namedParameters().filter(([n]) => n.includes("deep_heads"));
    assert.ok(heads.length > 0, `${method}: has deep-supervision heads`);
    tidy(() => backward(m.loss(toEngineBatch(batch(2)), 5, 10).loss));
    for (const [n, p] of heads) {
      const g = p.grad?.toArray() as Float32Array | undefined;
      assert.ok(g && g.some((v) => v !== 0), `${method}: ${n} has a gradient`);
    }
    zeroGrad(m.student.parameters());
    m.dispose();
  }
});

Deno.test("mean teacher: student and teacher see independently perturbed inputs (consistency 0 only without noise)", async () => {
  const { updateEma } = await import("./trainer.ts");
  const cons = (mtNoise: number) => {
    const m = tinyModel("mean-teacher", { loss: { mtNoise, rampFraction: 0 } });
    updateEma(m.teacher!, m.student, 0); // teacher = student, as at the start of training
    const c = tidy(() => m.loss(toEngineBatch(batch(3)), 5, 10).terms.consistency);
    m.dispose();
    return c;
  };
  assert.equal(cons(0), 0);
  assert.ok(cons(0.1) > 0, "noise makes the target differ from the student's own output");
});

Deno.test("CMC: the fused supervised term applies to labeled pairs with one shared label map only", () => {
  const m = tinyModel("cmc", { loss: { lambdaCsc: 0, lambdaCac: 0, lambdaFused: 1 } });
  const shared = toEngineBatch(batch(4, 1, 0));
  assert.deepEqual(shared.labeled.sharedLabels?.(), [true]);
  const t1 = tidy(() => {
    const r = m.loss(shared, 0, 10);
    backward(r.loss);
    return r.terms;
  });
  assert.ok(t1.fused > 0, JSON.stringify(t1));
  // loss = mean of the decoders' supervised losses + the fused one.
  assert.ok(Math.abs(t1.loss - (t1.sup + t1.fused)) < 1e-5, JSON.stringify(t1));
  // The fused loss is not one decoder's loss: it is computed on the mean of both logits.
  const perDecoder = m.loss(shared, 0, 10).terms;
  assert.ok(Math.abs(perDecoder.fused - perDecoder.sup) > 1e-6, JSON.stringify(perDecoder));
  zeroGrad(m.student.parameters());
  // A case whose modalities have different label maps (misaligned) gets no fused term.
  const own = batch(4, 1, 0);
  own.labeled.labels[1][0] = own.labeled.labels[1][0] === 0 ? 1 : 0;
  const b2 = toEngineBatch(own);
  assert.deepEqual(b2.labeled.sharedLabels?.(), [false]);
  const t2 = tidy(() => m.loss(b2, 0, 10).terms);
  assert.ok(!("fused" in t2), JSON.stringify(t2));
  // Off by default.
  const d = tinyModel("cmc", { loss: { lambdaCsc: 0, lambdaCac: 0 } });
  assert.ok(!("fused" in tidy(() => d.loss(shared, 0, 10).terms)));
  d.dispose();
  m.dispose();
});
