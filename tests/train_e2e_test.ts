/**
 * End to end: `trainTask` on a small synthetic cardiac set writes a complete run folder, resumes
 * exactly where it stopped, and refuses bad input clearly.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { readNifti } from "../src/data/nifti.ts";
import { loadCheckpoint } from "../src/train/checkpoint.ts";
import { trainTask } from "../src/train/run.ts";
import { setCacheRoot } from "../src/train/data.ts";

const cache = Deno.makeTempDirSync({ prefix: "comodal-e2e-cache-" });
setCacheRoot(cache);

function tiny(out: string, extra: Record<string, unknown> = {}) {
  return {
    task: "cardiac",
    out,
    iterations: 4,
    syntheticCases: 6,
    labeled: 2,
    patchSize: [4, 32, 32],
    network: { baseWidth: 8, maxLevels: 3 },
    optimizer: { warmup: 1 },
    validation: { every: 2, maxCases: 1, overlap: 0 },
    checkpointEvery: 2,
    deterministic: true,
    threads: 1,
    ...extra,
  };
}

Deno.test({
  name: "train cardiac (tiny) writes config, log, checkpoints, predictions, metrics and images",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = Deno.makeTempDirSync({ prefix: "comodal-e2e-run-" });
    const r = await trainTask(tiny(out), { quiet: true });
    assert.equal(r.iterations, 4);
    for (
      const f of [
        "config.json",
        "log.jsonl",
        "last.ckpt",
        "best.ckpt",
        "metrics.json",
        "summary.txt",
      ]
    ) {
      assert.ok(existsSync(path.join(out, f)), `missing ${f}`);
    }
    const log = readFileSync(path.join(out, "log.jsonl"), "utf8").trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.equal(log.filter((e) => e.event === "iteration").length, 4);
    assert.ok(log.some((e) => e.event === "validation"));
    assert.ok(
      log.filter((e) => e.event === "iteration").every((e) =>
        Number.isFinite(e.loss) && "cac" in e && "csc" in e
      ),
    );
    const metrics = JSON.parse(readFileSync(path.join(out, "metrics.json"), "utf8"));
    assert.ok(metrics.summary.cases >= 1);
    // Predictions are on each modality's original grid.
    const preds = [...Deno.readDirSync(path.join(out, "predictions"))].map((e) => e.name);
    assert.ok(preds.length >= 2, preds.join());
    const p = await readNifti(path.join(out, "predictions", preds[0]));
    const caseId = preds[0].replace(/_(C0|LGE)\.nii\.gz$/, "");
    const mod = preds[0].includes("_LGE") ? "LGE" : "C0";
    const synthDir = [...Deno.readDirSync(path.join(cache, "synthetic"))].find((e) =>
      e.name.startsWith("cardiac-n6-s0")
    )!.name;
    const src = await readNifti(path.join(cache, "synthetic", synthDir, `${caseId}_${mod}.nii.gz`));
    assert.deepEqual([...p.dims], [...src.dims]);
    assert.ok(p.affine.every((v, i) =>
      Math.abs(v - src.affine[i]) < 1e-3
    ));
    assert.ok([...Deno.readDirSync(path.join(out, "images"))].some((e) => e.name.endsWith(".png")));
    r.model.dispose();
  },
});

Deno.test({
  name: "a stopped and resumed run matches an uninterrupted one bit for bit",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const a = Deno.makeTempDirSync({ prefix: "comodal-e2e-a-" });
    const b = Deno.makeTempDirSync({ prefix: "comodal-e2e-b-" });
    const ra = await trainTask(tiny(a, { validation: { every: 0 } }), {
      quiet: true,
      skipFinalEvaluation: true,
    });
    ra.model.dispose();
    const stopAt2 = {
      onIteration: (ctx: { iteration: number; stopRequested: boolean }) => {
        if (ctx.iteration === 2) ctx.stopRequested = true;
      },
    };
    const rb1 = await trainTask(tiny(b, { validation: { every: 0 } }), {
      quiet: true,
      skipFinalEvaluation: true,
      hooks: [stopAt2],
    });
    assert.equal(rb1.iterations, 2);
    rb1.model.dispose();
    await assert.rejects(
      () => trainTask(tiny(b, { validation: { every: 0 } }), { quiet: true }),
      /--resume/,
    );
    const rb2 = await trainTask(tiny(b, { validation: { every: 0 } }), {
      quiet: true,
      skipFinalEvaluation: true,
      resume: true,
    });
    assert.equal(rb2.iterations, 4);
    rb2.model.dispose();
    const ca = loadCheckpoint(path.join(a, "last.ckpt"));
    const cb = loadCheckpoint(path.join(b, "last.ckpt"));
    assert.equal(ca.meta.iteration, 4);
    assert.equal(cb.meta.iteration, 4);
    assert.equal(ca.tensors.size, cb.tensors.size);
    for (const [name, t] of ca.tensors) {
      const u = cb.tensors.get(name)!;
      assert.ok(
        t.data.every((v, i) => Object.is(v, u.data[i])),
        `tensor ${name} differs after resume`,
      );
    }
  },
});

Deno.test({
  name: "CMC trains on three modalities (pairwise L_csc / L_cac) and predicts each of them",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = Deno.makeTempDirSync({ prefix: "comodal-e2e-m3-" });
    const r = await trainTask(
      tiny(out, {
        iterations: 2,
        modalities: ["C0", "LGE", "T2"],
        validation: { every: 0, overlap: 0 },
      }),
      { quiet: true },
    );
    assert.equal(r.model.outputs.length, 3);
    const log = readFileSync(path.join(out, "log.jsonl"), "utf8").trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    const it = log.filter((e) => e.event === "iteration");
    assert.ok(
      it.every((e) => "dice_2" in e && Number.isFinite(e.csc) && Number.isFinite(e.cac)),
      JSON.stringify(it[0]),
    );
    const preds = [...Deno.readDirSync(path.join(out, "predictions"))].map((e) => e.name);
    for (const m of ["C0", "LGE", "T2"]) {
      assert.ok(preds.some((p) => p.endsWith(`_${m}.nii.gz`)), `no ${m} prediction`);
    }
    r.model.dispose();
  },
});

Deno.test({
  name: "bad training input gives clear errors",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = Deno.makeTempDirSync({ prefix: "comodal-e2e-bad-" });
    await assert.rejects(
      () => trainTask({ ...tiny(out), task: "brain" }, { quiet: true }),
      /Unknown task 'brain'/,
    );
    await assert.rejects(
      () => trainTask({ ...tiny(out), method: "magic" }, { quiet: true }),
      /method/,
    );
    await assert.rejects(
      () => trainTask({ ...tiny(out), netwrok: {} }, { quiet: true }),
      /netwrok/,
    );
    await assert.rejects(
      () => trainTask({ ...tiny(out), labeled: 50 }, { quiet: true }),
      /labeled/,
    );
    await assert.rejects(
      () => trainTask({ ...tiny(out), data: "/nonexistent/data" }, { quiet: true }),
      /does not exist/,
    );
    await assert.rejects(
      () => trainTask({ ...tiny(out), method: "cmc", modalities: ["C0"] }, { quiet: true }),
      /at least 2 modalities/,
    );
    // A checkpoint from a different model config is refused.
    const r = await trainTask(tiny(out, { iterations: 1, validation: { every: 0 } }), {
      quiet: true,
      skipFinalEvaluation: true,
    });
    r.model.dispose();
    await assert.rejects(
      () =>
        trainTask(tiny(out, { network: { baseWidth: 16, maxLevels: 3 } }), {
          quiet: true,
          resume: true,
        }),
      /network.baseWidth: 8 in the run, 16 given/,
    );
  },
});
