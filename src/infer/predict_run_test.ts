/**
 * predict on a tiny trained run: same labels as the run's own final predictions, original grids,
 * CT normalised with the training statistics, and clear errors for bad input.
 */
import assert from "node:assert/strict";
import { copyFileSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { readNifti } from "../data/nifti.ts";
import { parseTrainConfig } from "../train/config.ts";
import { modelSignature, type RunPlan, trainTask } from "../train/run.ts";
import { recentreOn } from "./predictor.ts";
import type { Volume } from "../data/cases.ts";
import { apply4 } from "../data/affine.ts";
import { cropCentre } from "./partners.ts";
import { main } from "../../cli/main.ts";
import { casesFromDataset, casesFromFolder, predictCases } from "./predict_run.ts";
import { loadRun } from "../train/load_run.ts";
import { setCacheRoot } from "../train/data.ts";

const cache = Deno.makeTempDirSync({ prefix: "comodal-predict-cache-" });
setCacheRoot(cache);
let runDir: string | null = null;
/** The synthetic data folder the run used (from the config event at the top of its log). */
let synthDir = "";
/** One tiny cardiac run shared by the tests (validation case: patient5). */
async function tinyRun(): Promise<string> {
  if (runDir) return runDir;
  const out = Deno.makeTempDirSync({ prefix: "comodal-predict-run-" });
  const r = await trainTask({
    task: "cardiac",
    out,
    iterations: 3,
    syntheticCases: 6,
    labeled: 2,
    patchSize: [4, 32, 32],
    network: { baseWidth: 8, maxLevels: 3 },
    optimizer: { warmup: 1 },
    validation: { every: 0, overlap: 0 },
    images: false,
    deterministic: true,
    threads: 1,
  }, { quiet: true });
  r.model.dispose();
  synthDir =
    JSON.parse(readFileSync(path.join(out, "log.jsonl"), "utf8").split("\n")[0]).data.source;
  runDir = out;
  return out;
}

/** A copy of the run (config, plan, last checkpoint) with `edit` applied to config and plan. */
function editedRun(
  src: string,
  edit: (config: Record<string, any>, plan: RunPlan) => void,
): string {
  const dir = Deno.makeTempDirSync({ prefix: "comodal-predict-edited-" });
  const config = JSON.parse(readFileSync(path.join(src, "config.json"), "utf8"));
  const plan = JSON.parse(readFileSync(path.join(src, "plan.json"), "utf8")) as RunPlan;
  edit(config, plan);
  writeFileSync(path.join(dir, "config.json"), JSON.stringify(config));
  writeFileSync(path.join(dir, "plan.json"), JSON.stringify(plan));
  copyFileSync(path.join(src, "last.ckpt"), path.join(dir, "last.ckpt"));
  return dir;
}

const opts = { sanitizeResources: false, sanitizeOps: false };

Deno.test({
  name: "predict reproduces the run's own predictions on the original grids",
  ...opts,
  fn: async () => {
    const dir = await tinyRun();
    assert.ok(existsSync(path.join(dir, "plan.json")));
    // Paired data: no stand-ins for missing modalities are stored.
    assert.ok(!existsSync(path.join(dir, "partners")));
    const run = await loadRun(dir, { checkpoint: "best" });
    try {
      // No validation during training: best.ckpt is written by the final evaluation (iteration 3).
      assert.equal(run.iteration, 3);
      const cases = await casesFromDataset(synthDir, run, { split: "val" });
      assert.deepEqual(cases.map((c) => c.id), ["patient5"]);
      const out = Deno.makeTempDirSync({ prefix: "comodal-predict-out-" });
      const windows: [number, number, string][] = [];
      const r = await predictCases(run, cases, {
        outDir: out,
        onWindows: (d, t, id) => windows.push([d, t, id]),
      });
      assert.deepEqual(Object.keys(r.cases[0].files).sort(), ["C0", "LGE"]);
      // Sliding-window progress: increasing, ending at its total, for the case predicted.
      assert.ok(windows.length > 1, `${windows.length} progress calls`);
      assert.ok(
        windows.every(([d, t, id], i) =>
          id === "patient5" && d <= t && (i === 0 || d > windows[i - 1][0])
        ),
      );
      const [lastDone, lastTotal] = windows[windows.length - 1];
      assert.equal(lastDone, lastTotal);
      for (const m of ["C0", "LGE"]) {
        const mine = await readNifti(path.join(out, `patient5_${m}.nii.gz`));
        const ref = await readNifti(path.join(dir, "predictions", `patient5_${m}.nii.gz`));
        const src = await readNifti(path.join(synthDir, `patient5_${m}.nii.gz`));
        assert.deepEqual([...mine.dims], [...src.dims]);
        assert.ok(mine.affine.every((v, i) => Math.abs(v - src.affine[i]) < 1e-3));
        assert.equal(mine.header.datatype, "uint8");
        assert.deepEqual(
          mine.data,
          ref.data,
          `${m}: labels differ from the run's final prediction`,
        );
        assert.ok(mine.data.some((v) => v > 0), `${m}: no foreground predicted`);
      }
    } finally {
      run.dispose();
    }
  },
});

Deno.test({
  name: "predict CLI on a folder of <case>_<modality> files (names and channel indices)",
  ...opts,
  fn: async () => {
    const dir = await tinyRun();
    const input = Deno.makeTempDirSync({ prefix: "comodal-predict-in-" });
    copyFileSync(path.join(synthDir, "patient6_C0.nii.gz"), path.join(input, "new1_C0.nii.gz"));
    copyFileSync(path.join(synthDir, "patient6_LGE.nii.gz"), path.join(input, "new1_LGE.nii.gz"));
    // nnU-Net channel naming: 0000 = C0, 0001 = LGE in the training dataset's modality order.
    copyFileSync(path.join(synthDir, "patient5_C0.nii.gz"), path.join(input, "new2_0000.nii.gz"));
    copyFileSync(path.join(synthDir, "patient5_LGE.nii.gz"), path.join(input, "new2_0001.nii.gz"));
    writeFileSync(path.join(input, "notes.txt"), "not an image");
    const out = path.join(Deno.makeTempDirSync({ prefix: "comodal-predict-cli-" }), "pred");
    const code = await main([
      "predict",
      "--run",
      dir,
      "--input",
      input,
      "--out",
      out,
      "--checkpoint",
      "last",
      "--quiet",
    ]);
    assert.equal(code, 0);
    const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
    assert.deepEqual(names, [
      "new1_C0.nii.gz",
      "new1_LGE.nii.gz",
      "new2_C0.nii.gz",
      "new2_LGE.nii.gz",
      "report.html",
      "viewer",
    ]);
    const p = await readNifti(path.join(out, "new1_LGE.nii.gz"));
    const src = await readNifti(path.join(synthDir, "patient6_LGE.nii.gz"));
    assert.deepEqual([...p.dims], [...src.dims]);
    // Same image, same model as the run's final prediction of patient5.
    const a = await readNifti(path.join(out, "new2_C0.nii.gz"));
    const b = await readNifti(path.join(dir, "predictions", "patient5_C0.nii.gz"));
    assert.deepEqual(a.data, b.data);
    // The dataset's own label values (MS-CMRSeg: 200, 500, 600), same labels otherwise.
    const out2 = path.join(path.dirname(out), "pred-values");
    const args = ["predict", "--run", dir, "--input", input, "--out", out2, "--checkpoint", "last"];
    assert.equal(await main([...args, "--label-values", "file", "--quiet"]), 0);
    const v = await readNifti(path.join(out2, "new2_C0.nii.gz"));
    const values = [0, 200, 500, 600];
    assert.deepEqual(v.data, a.data.map((k) => values[k]));
    assert.equal(v.header.datatype, "int16");
    assert.ok(v.data.some((x) => x === 500 || x === 600 || x === 200));
    assert.equal(await main([...args, "--label-values", "raw", "--quiet"]), 1);
    // Exactly one input source.
    assert.equal(await main(["predict", "--run", dir, "--out", out, "--quiet"]), 1);
  },
});

Deno.test({
  name: "CT inputs are normalised with the training dataset's statistics, not the new data's",
  ...opts,
  fn: async () => {
    const src = await tinyRun();
    const dir = editedRun(src, (_c, plan) => {
      plan.dataset.modalityKinds.C0 = "ct";
      const st = { mean: 321.5, std: 77.25, p005: 40, p995: 1100 };
      plan.normalization.C0 = { kind: "ct", ...st };
      Object.assign(plan.fingerprint.perModality.C0, { kind: "ct", ...st });
    });
    const run = await loadRun(dir);
    try {
      const input = Deno.makeTempDirSync({ prefix: "comodal-predict-ct-" });
      for (const m of ["C0", "LGE"]) {
        copyFileSync(
          path.join(synthDir, `patient4_${m}.nii.gz`),
          path.join(input, `ct1_${m}.nii.gz`),
        );
      }
      const out = Deno.makeTempDirSync({ prefix: "comodal-predict-ctout-" });
      await predictCases(run, await casesFromFolder(input, run), { outDir: out });
      // What the Predictor did to the case (in memory, as predictCases hands it over).
      const images = {
        C0: await readNifti(path.join(input, "ct1_C0.nii.gz")),
        LGE: await readNifti(path.join(input, "ct1_LGE.nii.gz")),
      };
      const prepared = run.predictor.preprocess({ id: "ct1", images, aligned: true });
      assert.deepEqual(prepared.norm.C0, {
        kind: "ct",
        mean: 321.5,
        std: 77.25,
        clip: [40, 1100],
      });
      // MR keeps its per-volume z-score (statistics of this image, not the training set's).
      assert.equal(prepared.norm.LGE.kind, "mr");
      assert.notEqual(prepared.norm.LGE.mean, run.plan.normalization.LGE.mean);
      assert.ok(existsSync(path.join(out, "ct1_C0.nii.gz")));
    } finally {
      run.dispose();
    }
  },
});

Deno.test({
  name: "predict errors name what is wrong",
  ...opts,
  fn: async () => {
    const dir = await tinyRun();
    await assert.rejects(
      () => loadRun("/nonexistent/run"),
      /Cannot load run \/nonexistent\/run: the folder does not exist/,
    );
    await assert.rejects(
      () => loadRun(dir, { checkpoint: "nope.ckpt" }),
      /checkpoint nope\.ckpt does not exist/,
    );
    const noCkpt = editedRun(dir, () => {});
    Deno.removeSync(path.join(noCkpt, "last.ckpt"));
    await assert.rejects(() => loadRun(noCkpt), /neither best\.ckpt nor last\.ckpt/);
    const noPlan = editedRun(dir, () => {});
    Deno.removeSync(path.join(noPlan, "plan.json"));
    await assert.rejects(() => loadRun(noPlan), /plan\.json does not exist/);
    // A checkpoint written for another model config.
    const other = editedRun(dir, (c, plan) => {
      c.network.baseWidth = 16;
      plan.signature = modelSignature(
        parseTrainConfig(c),
        plan.modalities,
        plan.classes.length,
        plan.network,
      );
    });
    await assert.rejects(
      () => loadRun(other),
      /last\.ckpt: it was written for a different model config \(network\.baseWidth: \d+ in the checkpoint, 16 in this run\)$/,
    );

    const run = await loadRun(dir);
    try {
      const input = Deno.makeTempDirSync({ prefix: "comodal-predict-bad-" });
      const out = Deno.makeTempDirSync({ prefix: "comodal-predict-badout-" });
      copyFileSync(path.join(synthDir, "patient1_C0.nii.gz"), path.join(input, "only_C0.nii.gz"));
      await assert.rejects(
        async () => predictCases(run, await casesFromFolder(input, run), { outDir: out }),
        (e: Error) =>
          e.message.startsWith(
            "Cannot predict case only: it has no LGE image (the model reads C0, LGE; the case has C0)",
          ) &&
          e.message.includes("stores no stand-in LGE volume (partners/LGE.nii.gz)") &&
          e.message.includes("trained on paired data"),
      );
      const bad = path.join(input, "only_LGE.nii.gz");
      writeFileSync(bad, new Uint8Array(400).fill(7));
      await assert.rejects(
        async () => predictCases(run, await casesFromFolder(input, run), { outDir: out }),
        (e: Error) => e.message.includes(bad) && /Cannot read/.test(e.message),
      );
      await assert.rejects(
        () => casesFromFolder(out, run),
        /no <caseId>_<modality>\.nii\.gz files/,
      );
      assert.deepEqual([...Deno.readDirSync(out)], []);
    } finally {
      run.dispose();
    }
  },
});

Deno.test("recentreOn moves a stand-in's grid centre onto the reference's, nothing else", () => {
  const c = Math.cos(0.3), s = Math.sin(0.3);
  const src: Volume = {
    data: new Float32Array(4 * 6 * 3).map((_, i) => i),
    dims: [4, 6, 3],
    spacing: [2, 1.5, 5],
    affine: [2 * c, -1.5 * s, 0, 10, 2 * s, 1.5 * c, 0, -20, 0, 0, 5, 7, 0, 0, 0, 1],
    padValue: -1,
  };
  const ref: Volume = {
    data: new Float32Array(9 * 5 * 2),
    dims: [9, 5, 2],
    spacing: [1, 1, 3],
    affine: [-1, 0, 0, 100, 0, -1, 0, 50, 0, 0, 3, -30, 0, 0, 0, 1],
    padValue: 0,
  };
  const centre = (v: Volume) => apply4(v.affine, v.dims.map((d) => (d - 1) / 2));
  const out = recentreOn(src, ref);
  centre(out).forEach((x, i) => assert.ok(Math.abs(x - centre(ref)[i]) < 1e-9));
  for (const k of [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15]) {
    assert.equal(out.affine[k], src.affine[k]);
  }
  assert.equal(out.data, src.data);
  assert.deepEqual([out.dims, out.spacing, out.padValue], [src.dims, src.spacing, src.padValue]);
  assert.deepEqual(src.affine[3], 10, "the source is not modified");
  // A centred crop (as stored in <run>/partners/) keeps the centre within half a voxel.
  const { volume, lo, hi } = cropCentre(src, [2, 6, 2]);
  assert.deepEqual([lo, hi, volume.dims], [[1, 0, 0], [3, 6, 2], [2, 6, 2]]);
  assert.equal(volume.data[0], src.data[1]);
  assert.equal(volume.data[2 * 6], src.data[4 * 6 + 1]);
  const shift = centre(volume).map((x, i) => x - centre(src)[i]);
  assert.ok(Math.hypot(...shift) <= 0.5 * 5 + 1e-9);
});
