/**
 * `predict` on unpaired data (AMOS-like: CT and MRI from different patients): a CMC run trained on
 * it stores one stand-in per modality (<run>/partners/), and predicting a CT-only or an MRI-only
 * case writes only that modality's label map, on the input's grid, without the training data.
 * `evaluate` reads those outputs with --modality. A run without stand-ins fails with a message
 * naming the case, the missing modality and why.
 */
import assert from "node:assert/strict";
import { copyFileSync, cpSync, existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import * as path from "node:path";
import { readNifti } from "../src/data/nifti.ts";
import { trainTask } from "../src/train/run.ts";
import { casesFromDataset, casesFromFolder, predictCases } from "../src/infer/predict_run.ts";
import { loadRun } from "../src/train/load_run.ts";
import { PARTNER_MAX_VOXELS } from "../src/infer/partners.ts";
import { main } from "../cli/main.ts";
import { setCacheRoot } from "../src/train/data.ts";

const cache = Deno.makeTempDirSync({ prefix: "comodal-unpaired-cache-" });
setCacheRoot(cache);
const opts = { sanitizeResources: false, sanitizeOps: false };

let run: { dir: string; synth: string } | null = null;
/** One tiny CMC run on synthetic AMOS (3 CT + 3 MRI cases, no patient has both). */
async function tinyUnpairedRun(): Promise<{ dir: string; synth: string }> {
  if (run) return run;
  const dir = Deno.makeTempDirSync({ prefix: "comodal-unpaired-run-" });
  const r = await trainTask({
    task: "abdomen",
    method: "cmc",
    out: dir,
    iterations: 2,
    syntheticCases: 6,
    patchSize: [8, 32, 32],
    network: { baseWidth: 4, maxLevels: 3 },
    optimizer: { warmup: 1 },
    validation: { every: 0, overlap: 0 },
    images: false,
    deterministic: true,
    threads: 2,
  }, { quiet: true });
  r.model.dispose();
  const synth =
    JSON.parse(readFileSync(path.join(dir, "log.jsonl"), "utf8").split("\n")[0]).data.source;
  run = { dir, synth };
  return run;
}

Deno.test({
  name: "an unpaired run stores one bounded stand-in per modality",
  ...opts,
  fn: async () => {
    const { dir } = await tinyUnpairedRun();
    const plan = JSON.parse(readFileSync(path.join(dir, "plan.json"), "utf8"));
    assert.deepEqual(plan.modalities, ["CT", "MRI"]);
    for (const m of ["CT", "MRI"]) {
      const img = await readNifti(path.join(dir, "partners", `${m}.nii.gz`));
      const info = JSON.parse(readFileSync(path.join(dir, "partners", `${m}.json`), "utf8"));
      assert.deepEqual([...img.dims], info.dims);
      assert.ok(img.dims.every((d, a) => d <= Math.max(PARTNER_MAX_VOXELS[a], 32)));
      assert.match(info.case, m === "CT" ? /^amos_0\d\d\d$/ : /^amos_05\d\d$/);
      assert.ok(Number.isFinite(info.padValue));
      assert.ok(img.data.some((v) => v !== info.padValue), `${m}: stand-in is empty`);
    }
  },
});

Deno.test({
  name: "predict on CT-only and MRI-only cases writes only the present modality, on its grid",
  ...opts,
  fn: async () => {
    const { dir, synth } = await tinyUnpairedRun();
    // The run folder alone (no training data, no preprocessed cache) must be enough.
    const moved = path.join(Deno.makeTempDirSync({ prefix: "comodal-unpaired-moved-" }), "run");
    cpSync(dir, moved, { recursive: true });
    const input = Deno.makeTempDirSync({ prefix: "comodal-unpaired-in-" });
    const refs = Deno.makeTempDirSync({ prefix: "comodal-unpaired-ref-" });
    const src = { CT: "amos_0001", MRI: "amos_0501" } as const;
    for (const [m, id] of Object.entries(src)) {
      const name = m === "CT" ? "scan_ct" : "scan_mr";
      copyFileSync(
        path.join(synth, "imagesTr", `${id}.nii.gz`),
        path.join(input, `${name}_${m}.nii.gz`),
      );
      copyFileSync(path.join(synth, "labelsTr", `${id}.nii.gz`), path.join(refs, `${name}.nii.gz`));
    }
    const preprocessed = path.join(cache, "preprocessed");
    rmSync(preprocessed, { recursive: true, force: true });
    const out = path.join(Deno.makeTempDirSync({ prefix: "comodal-unpaired-out-" }), "pred");
    const code = await main([
      "predict",
      "--run",
      moved,
      "--input",
      input,
      "--out",
      out,
      "--checkpoint",
      "last",
      "--quiet",
    ]);
    assert.equal(code, 0);
    assert.deepEqual(readdirSync(out).sort(), [
      "report.html",
      "scan_ct_CT.nii.gz",
      "scan_mr_MRI.nii.gz",
      "viewer",
    ]);
    assert.ok(!existsSync(preprocessed), "predict read the training cache");
    for (const [m, name] of [["CT", "scan_ct"], ["MRI", "scan_mr"]]) {
      const p = await readNifti(path.join(out, `${name}_${m}.nii.gz`));
      const img = await readNifti(path.join(input, `${name}_${m}.nii.gz`));
      assert.deepEqual([...p.dims], [...img.dims]);
      assert.ok(p.affine.every((v, i) => Math.abs(v - img.affine[i]) < 1e-3), `${m}: affine`);
      assert.equal(p.header.datatype, "uint8");
      assert.ok(p.data.every((v) => v >= 0 && v < 16));
    }
    // evaluate reads the per-modality outputs (one modality at a time, as for any predict output).
    for (const m of ["CT", "MRI"]) {
      const one = Deno.makeTempDirSync({ prefix: `comodal-unpaired-ref-${m}-` });
      const name = m === "CT" ? "scan_ct" : "scan_mr";
      copyFileSync(path.join(refs, `${name}.nii.gz`), path.join(one, `${name}.nii.gz`));
      const metrics = path.join(one, "metrics.json");
      const args = ["evaluate", "--pred", out, "--ref", one, "--modality", m, "--out", metrics];
      assert.equal(await main([...args, "--quiet"]), 0);
      const report = JSON.parse(readFileSync(metrics, "utf8"));
      assert.equal(report.summary.cases, 1);
    }
  },
});

Deno.test({
  name: "the stored stand-ins give the same labels as the run's own validation predictions",
  ...opts,
  fn: async () => {
    const { dir, synth } = await tinyUnpairedRun();
    // The run's final predictions of its validation cases paired each with a training volume,
    // re-centred; predict pairs them with the stored stand-in (uncropped at this size).
    const preds = readdirSync(path.join(dir, "predictions")).sort();
    assert.ok(preds.length >= 1);
    const loaded = await loadRun(dir, { checkpoint: "last" });
    try {
      // The dataset's own validation cases (each has CT or MRI only), through its AMOS manifest.
      const cases = await casesFromDataset(synth, loaded, { split: "val" });
      assert.deepEqual(
        cases.map((c) => `${c.id}_${Object.keys(c.images).join()}.nii.gz`).sort(),
        preds,
      );
      const out = Deno.makeTempDirSync({ prefix: "comodal-unpaired-valout-" });
      await predictCases(loaded, cases, { outDir: out });
      assert.deepEqual(readdirSync(out).sort(), preds);
      for (const f of preds) {
        const mine = await readNifti(path.join(out, f));
        const ref = await readNifti(path.join(dir, "predictions", f));
        assert.deepEqual(
          mine.data,
          ref.data,
          `${f}: labels differ from the run's final prediction`,
        );
      }
    } finally {
      loaded.dispose();
    }
  },
});

Deno.test({
  name: "a run without a stand-in names the case, the missing modality and why",
  ...opts,
  fn: async () => {
    const { dir, synth } = await tinyUnpairedRun();
    const old = path.join(Deno.makeTempDirSync({ prefix: "comodal-unpaired-old-" }), "run");
    cpSync(dir, old, { recursive: true });
    rmSync(path.join(old, "partners", "MRI.nii.gz"));
    const loaded = await loadRun(old, { checkpoint: "last" });
    try {
      assert.deepEqual(Object.keys(loaded.partners), ["CT"]);
      const input = Deno.makeTempDirSync({ prefix: "comodal-unpaired-oldin-" });
      copyFileSync(
        path.join(synth, "imagesTr", "amos_0001.nii.gz"),
        path.join(input, "p1_CT.nii.gz"),
      );
      const out = Deno.makeTempDirSync({ prefix: "comodal-unpaired-oldout-" });
      await assert.rejects(
        async () => predictCases(loaded, await casesFromFolder(input, loaded), { outDir: out }),
        (e: Error) =>
          e.message.startsWith("Cannot predict case p1: it has no MRI image") &&
          e.message.includes("stores no stand-in MRI volume (partners/MRI.nii.gz)") &&
          e.message.includes("trained on paired data") &&
          e.message.includes("train --resume"),
      );
      assert.deepEqual(readdirSync(out), []);
    } finally {
      loaded.dispose();
    }
    // An older unpaired run (no partners/) gets its stand-ins by resuming with nothing left to train.
    rmSync(path.join(old, "partners"), { recursive: true });
    const config = JSON.parse(readFileSync(path.join(old, "config.json"), "utf8"));
    const r = await trainTask({ ...config, out: old }, { quiet: true, resume: true });
    r.model.dispose();
    assert.equal(r.iterations, 2);
    for (const m of ["CT", "MRI"]) {
      assert.deepEqual(
        readFileSync(path.join(old, "partners", `${m}.json`)),
        readFileSync(path.join(dir, "partners", `${m}.json`)),
      );
    }
  },
});
