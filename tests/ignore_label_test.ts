/**
 * The ignore label end to end (issue 13): the synthetic cardiac data with its RV label value 600
 * sent to "ignore" by the manifest's labelMap. Every method trains on it (the ignored voxels reach
 * the losses: before the fix DICE_STATS_FORWARD stopped every method at iteration 1), the final
 * evaluation leaves those voxels out of prediction and reference, and so does `evaluate --ignore`.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { Command } from "commander";
import { register as registerEvaluate } from "../cli/evaluate.ts";
import { loadManifest, saveManifest } from "../src/data/manifest.ts";
import { readNifti, writeNifti } from "../src/data/nifti.ts";
import { synthesize } from "../src/data/synth.ts";
import { METHODS } from "../src/train/config.ts";
import { trainTask } from "../src/train/run.ts";
import { setCacheRoot } from "../src/train/data.ts";

setCacheRoot(Deno.makeTempDirSync({ prefix: "comodal-ignore-cache-" }));

const IGNORED_VALUE = 600;
const CLASSES = { lv_myocardium: 200, lv_blood_pool: 500 };

/** Synthetic cardiac cases whose manifest maps file value 600 (RV) to "ignore". */
async function ignoreTask(root: string): Promise<string> {
  const syn = await synthesize("cardiac", {
    outDir: path.join(root, "data"),
    cases: 5,
    seed: 0,
    sizeScale: 0.5,
    workers: 0,
  });
  const m = await loadManifest(syn.manifestPath);
  const file = path.join(root, "data", "ignore_rv.yaml");
  await saveManifest(file, { ...m, classes: CLASSES, labelMap: { [IGNORED_VALUE]: "ignore" } });
  return file;
}

function tiny(task: string, out: string, method: string) {
  return {
    task,
    out,
    method,
    iterations: 5,
    labeled: 0.5,
    patchSize: [4, 32, 32],
    network: { baseWidth: 4, maxLevels: 3 },
    optimizer: { warmup: 1 },
    validation: { every: 0, overlap: 0 },
    threads: 1,
    images: false,
  };
}

/** Runs `evaluate` in-process; returns its metrics.json. */
async function evaluate(
  args: string[],
  out: string,
): Promise<
  { cases: { classes: Record<string, { dice: number; predVoxels: number; refVoxels: number }> }[] }
> {
  const program = new Command("comodal").exitOverride();
  registerEvaluate(program);
  const { log, error } = console;
  console.log = console.error = () => {};
  try {
    await program.parseAsync(["evaluate", ...args, "--out", out, "--quiet"], { from: "user" });
  } finally {
    Object.assign(console, { log, error });
  }
  return JSON.parse(readFileSync(out, "utf8"));
}

const root = Deno.makeTempDirSync({ prefix: "comodal-ignore-" });
const task = await ignoreTask(root);

Deno.test({
  name: "ignore label: every method trains 5 iterations on labels with a value mapped to ignore",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    for (const method of METHODS) {
      const out = path.join(root, `run-${method}`);
      const r = await trainTask(tiny(task, out, method), {
        quiet: true,
        skipFinalEvaluation: true,
      });
      assert.equal(r.iterations, 5, method);
      const its = readFileSync(path.join(out, "log.jsonl"), "utf8").trim().split("\n").map((l) =>
        JSON.parse(l)
      )
        .filter((e) => e.event === "iteration");
      assert.equal(its.length, 5, method);
      assert.ok(
        its.every((e) => Number.isFinite(e.loss) && Number.isFinite(e.sup)),
        `${method}: ${JSON.stringify(its)}`,
      );
      r.model.dispose();
    }
  },
});

Deno.test({
  name: "ignore label: the final evaluation and evaluate --ignore leave ignored voxels out of Dice",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = path.join(root, "run-eval");
    const r = await trainTask(tiny(task, out, "cmc"), { quiet: true });
    r.model.dispose();
    const metrics = JSON.parse(readFileSync(path.join(out, "metrics.json"), "utf8"));
    const m = await loadManifest(task);
    let ignoredSeen = 0;
    assert.ok(metrics.cases.length >= 1);
    for (
      const row of metrics.cases as {
        id: string;
        classes: Record<string, { dice: number; predVoxels: number; refVoxels: number }>;
      }[]
    ) {
      const [id, mod] = row.id.split("/");
      const refFile = m.cases.find((c) => c.id === id)!.labels![mod] as string;
      const ref = await readNifti(refFile);
      const pred = await readNifti(path.join(out, "predictions", `${id}_${mod}.nii.gz`));
      Object.entries(CLASSES).forEach(([name, value], i) => {
        let p = 0, g = 0, both = 0;
        for (let v = 0; v < ref.data.length; v++) {
          if (ref.data[v] === IGNORED_VALUE) continue;
          const inP = pred.data[v] === i + 1, inG = ref.data[v] === value;
          p += +inP;
          g += +inG;
          both += +(inP && inG);
        }
        const want = p + g === 0 ? 1 : (2 * both) / (p + g);
        assert.equal(row.classes[name].predVoxels, p, `${row.id} ${name} predicted voxels`);
        assert.equal(row.classes[name].refVoxels, g, `${row.id} ${name} reference voxels`);
        assert.ok(Math.abs(row.classes[name].dice - want) < 1e-12, `${row.id} ${name} Dice`);
      });
      for (const v of ref.data) ignoredSeen += +(v === IGNORED_VALUE);

      // evaluate --ignore 600 on a prediction that paints the ignored region as myocardium:
      // Dice 1 with the region left out, below 1 without.
      const painted = Float32Array.from(
        ref.data,
        (v) => (v === IGNORED_VALUE ? CLASSES.lv_myocardium : v),
      );
      const predFile = path.join(root, `painted_${id}_${mod}.nii.gz`);
      await writeNifti(predFile, { data: painted, dims: ref.dims, affine: ref.affine }, {
        datatype: "int16",
      });
      const labels = Object.entries(CLASSES).map(([n, v]) => `${n}=${v}`).join(",");
      const common = ["--pred", predFile, "--ref", refFile, "--labels", labels];
      const withIgnore = await evaluate(
        [...common, "--ignore", String(IGNORED_VALUE)],
        path.join(root, "e1.json"),
      );
      const viaMap = await evaluate([
        "--pred",
        predFile,
        "--ref",
        refFile,
        "--labels",
        `${labels},ignore=${IGNORED_VALUE}`,
      ], path.join(root, "e2.json"));
      const without = await evaluate(common, path.join(root, "e3.json"));
      for (const e of [withIgnore, viaMap]) {
        assert.equal(e.cases[0].classes.lv_myocardium.dice, 1);
        assert.equal(e.cases[0].classes.lv_blood_pool.dice, 1);
        assert.equal(
          e.cases[0].classes.lv_myocardium.predVoxels,
          e.cases[0].classes.lv_myocardium.refVoxels,
        );
      }
      const myo = without.cases[0].classes.lv_myocardium;
      assert.ok(myo.dice < 1 && myo.predVoxels > myo.refVoxels, JSON.stringify(myo));
    }
    assert.ok(ignoredSeen > 0, "no ignored voxel in the validation labels");
  },
});
