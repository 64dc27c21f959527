/**
 * `export` on briefly trained tiny runs (CMC, supervised, early fusion; CMC and supervised with the
 * ViT backbone): the ONNX file carries the
 * run's plan, runs in ONNX Runtime with the engine's logits on a random patch (max abs difference
 * 1e-4), and a whole case predicted through ONNX Runtime (sliding window driven from TS with the
 * session as network) matches `predict` to the voxel.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { noGrad, tensor, tidy } from "../src/engine.ts";
import { Rng } from "../src/data/rng.ts";
import { readNifti } from "../src/data/nifti.ts";
import { trainTask } from "../src/train/run.ts";
import { setCacheRoot } from "../src/train/data.ts";
import { casesFromDataset, predictCases, readPredictCase } from "../src/infer/predict_run.ts";
import { loadRun } from "../src/train/load_run.ts";
import { PLAN_KEY } from "../src/export/export_run.ts";
import { readOnnxMetadata } from "../src/export/onnx_graph.ts";
import {
  ONNX_FUSED,
  openOnnxModel,
  predictVolumesOnnx,
  runOnnx,
} from "../src/export/onnx_runtime.ts";
import { main } from "../cli/main.ts";

const cache = Deno.makeTempDirSync({ prefix: "comodal-export-cache-" });
setCacheRoot(cache);
const opts = { sanitizeResources: false, sanitizeOps: false };

const runs = new Map<string, { dir: string; synth: string }>();
/** A tiny ViT backbone (tokens of 4 x 8 x 8 voxels). */
const VIT = { patchSize: [4, 8, 8], dim: 16, depth: 2, heads: 2, mlpRatio: 2 };

/** One tiny cardiac run per method ("vit-" first: the ViT backbone), shared by its tests. */
async function tinyRun(kind: string): Promise<{ dir: string; synth: string }> {
  const have = runs.get(kind);
  if (have) return have;
  const vit = kind.startsWith("vit-");
  const method = vit ? kind.slice(4) : kind;
  const dir = Deno.makeTempDirSync({ prefix: `comodal-export-${method}-` });
  const r = await trainTask({
    task: "cardiac",
    method,
    out: dir,
    iterations: 3,
    syntheticCases: 6,
    labeled: 2,
    patchSize: [4, 32, 32],
    network: { baseWidth: 8, maxLevels: 3, ...(vit ? { backbone: "vit", vit: VIT } : {}) },
    optimizer: { warmup: 1 },
    validation: { every: 0, overlap: 0 },
    images: false,
    deterministic: true,
    threads: 1,
  }, { quiet: true });
  r.model.dispose();
  const synth =
    JSON.parse(readFileSync(path.join(dir, "log.jsonl"), "utf8").split("\n")[0]).data.source;
  const run = { dir, synth };
  runs.set(kind, run);
  return run;
}

async function exportCli(dir: string): Promise<string> {
  const file = path.join(Deno.makeTempDirSync({ prefix: "comodal-export-out-" }), "model.onnx");
  assert.equal(await main(["export", "--run", dir, "--out", file, "--quiet"]), 0);
  assert.ok(existsSync(file));
  return file;
}

for (const kind of ["cmc", "supervised", "early-fusion", "vit-cmc", "vit-supervised"]) {
  const method = kind.replace(/^vit-/, "");
  Deno.test({
    name: `export (${kind}): the plan is in the metadata and the logits match the engine`,
    ...opts,
    fn: async () => {
      const { dir } = await tinyRun(kind);
      const file = await exportCli(dir);
      const plan = JSON.parse(readOnnxMetadata(await Deno.readFile(file))[PLAN_KEY]);
      const runPlan = JSON.parse(readFileSync(path.join(dir, "plan.json"), "utf8"));
      assert.equal(plan.method, method);
      assert.equal(plan.backbone, kind.startsWith("vit-") ? "vit" : "unet");
      assert.deepEqual(plan.modalities, runPlan.modalities);
      assert.deepEqual(plan.modalities.slice(0, 2), ["C0", "LGE"]);
      assert.deepEqual(plan.classes, runPlan.classes);
      // MS-CMRSeg's label values, background first.
      assert.deepEqual(plan.labelValues, [0, 200, 500, 600]);
      assert.deepEqual(plan.patchSize, [4, 32, 32]);
      assert.deepEqual(plan.targetSpacing, runPlan.targetSpacing);
      assert.equal(plan.outputActivation, "softmax");
      assert.equal(plan.normalization.C0.kind, "mr");
      const mods: string[] = runPlan.modalities;
      const primary = mods[runPlan.primary];
      const inputs = method === "supervised" ? [`image_${primary}`] : mods.map((m) => `image_${m}`);
      const outputs = method === "cmc"
        ? mods.map((m) => `logits_${m}`)
        : [`logits_${method === "supervised" ? primary : mods[0]}`];
      assert.deepEqual(plan.inputs.map((i: { name: string }) => i.name), inputs);
      assert.deepEqual(plan.outputs.map((o: { name: string }) => o.name), outputs);

      const onnx = await openOnnxModel(file);
      const run = await loadRun(dir, { checkpoint: "best" });
      try {
        const [d, h, w] = plan.patchSize;
        const B = 2;
        const r = new Rng(5);
        const images = plan.modalities.map(() =>
          Float32Array.from({ length: B * d * h * w }, () => r.normal())
        );
        const want = tidy(() =>
          noGrad(() =>
            run.model.predict(images.map((a: Float32Array) => tensor(a, [B, 1, d, h, w]))).map((
              t,
            ) => t.toArray() as Float32Array)
          )
        );
        const got = await runOnnx(onnx, images, [B, d, h, w]);
        assert.equal(got.length, want.length);
        let worst = 0;
        got.forEach((g, i) => {
          assert.equal(g.length, B * plan.classes.length * d * h * w);
          for (let j = 0; j < g.length; j++) worst = Math.max(worst, Math.abs(g[j] - want[i][j]));
        });
        assert.ok(worst <= 1e-4, `max abs logit difference ${worst}`);
      } finally {
        run.dispose();
        await onnx.release();
      }
    },
  });
}

for (const kind of ["cmc", "early-fusion", "vit-supervised"]) {
  Deno.test({
    name: `a case predicted through ONNX Runtime (${kind}) matches predict to the voxel`,
    ...opts,
    fn: async () => {
      const { dir, synth } = await tinyRun(kind);
      const file = await exportCli(dir);
      const run = await loadRun(dir, { checkpoint: "best" });
      const onnx = await openOnnxModel(file);
      try {
        const cases = await casesFromDataset(synth, run, { split: "val" });
        const out = Deno.makeTempDirSync({ prefix: "comodal-export-pred-" });
        const r = await predictCases(run, cases, { outDir: out, perModality: true });
        let compared = 0;
        for (const c of r.cases) {
          // The case as predict's Predictor preprocesses it (in memory).
          const input = cases.find((x) => x.id === c.id)!;
          const prepared = run.predictor.preprocess(await readPredictCase(run, input));
          const probs = await predictVolumesOnnx(onnx, prepared.volumes);
          for (const [key, f] of Object.entries(c.files)) {
            const p = probs.get(key === "fused" ? ONNX_FUSED : key);
            assert.ok(p, `${c.id}: the ONNX path has no ${key} output`);
            const m = key === "fused" ? onnx.plan.outputs[0].modality : key;
            const labels = run.predictor.labelsOnOriginal(p, prepared.grids[m]);
            const ref = await readNifti(f);
            assert.equal(ref.data.length, labels.length);
            let differ = 0;
            for (let i = 0; i < labels.length; i++) if (labels[i] !== ref.data[i]) differ++;
            assert.equal(differ, 0, `${c.id} ${key}: ${differ} voxels differ from predict`);
            assert.ok(labels.some((v) => v > 0), `${c.id} ${key}: no foreground`);
            compared++;
          }
        }
        assert.ok(compared >= 1);
      } finally {
        run.dispose();
        await onnx.release();
      }
    },
  });
}
