/**
 * The user path on files shaped exactly like public datasets, through the command line:
 * import -> train -> predict -> evaluate.
 *
 * - BraTS 2021: a folder per case, int16 images, uint8 seg with labels {0, 1, 2, 4}, LPS-like sform;
 *   CMC on all four modalities; metrics per class under the class names.
 * - Decathlon Task05_Prostate: 4-D (T2, ADC) images with fewer slices than the patch is deep,
 *   0.625 x 0.625 x 3.6 mm, float64 labels; the network plan pools in-plane only at first.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { readNifti } from "../src/data/nifti.ts";
import { loadManifest } from "../src/data/manifest.ts";
import { ok, runCli, tinyTrainArgs, writeBrats2021, writeProstate } from "./real_layouts.ts";
import { setAvailableMemory, setCacheRoot } from "../src/train/data.ts";

setCacheRoot(Deno.makeTempDirSync({ prefix: "comodal-public-cache-" }));

Deno.test({
  name: "BraTS 2021 layout: import, CMC on 4 modalities, predict, evaluate with labels 1/2/4",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = Deno.makeTempDirSync({ prefix: "comodal-brats-" });
    const data = path.join(root, "BraTS2021_Training_Data");
    const ids = await writeBrats2021(data, { cases: 5 });
    const manifestFile = path.join(root, "brats.yaml");
    ok(await runCli(["import", data, "--out", manifestFile, "--val", "0.2"]), "import");
    const m = await loadManifest(manifestFile);
    assert.deepEqual(m.modalities, ["t1", "t1ce", "t2", "flair"]);
    assert.deepEqual(m.classes, { necrotic_core: 1, edema: 2, enhancing_tumour: 4 });
    assert.ok(m.cases.every((c) => c.labeled && c.aligned && c.labels?.shared));
    assert.equal(m.cases.filter((c) => c.split === "val").length, 1);

    const out = path.join(root, "run");
    ok(
      await runCli(
        tinyTrainArgs(
          manifestFile,
          out,
          "method=cmc",
          "modalities=[t1,t1ce,t2,flair]",
          "patchSize=[8,16,16]",
        ),
      ),
      "train",
    );
    const plan = JSON.parse(readFileSync(path.join(out, "plan.json"), "utf8"));
    assert.deepEqual(plan.modalities, ["t1", "t1ce", "t2", "flair"]);
    assert.deepEqual(plan.classes, ["background", "necrotic_core", "edema", "enhancing_tumour"]);
    // BraTS classes train as nested regions by default; the run stores them.
    const cfg = JSON.parse(readFileSync(path.join(out, "config.json"), "utf8"));
    assert.deepEqual(cfg.regions, {
      whole_tumour: ["necrotic_core", "edema", "enhancing_tumour"],
      tumour_core: ["necrotic_core", "enhancing_tumour"],
      enhancing_tumour: ["enhancing_tumour"],
    });
    const metrics = JSON.parse(readFileSync(path.join(out, "metrics.json"), "utf8"));
    assert.deepEqual(
      Object.keys(metrics.summary.perClass).sort(),
      ["edema", "enhancing_tumour", "necrotic_core"],
    );
    // One fused prediction of the co-registered validation case (the decoders' mean), on the
    // file's (LPS) grid, and no per-modality maps.
    const val = m.cases.find((c) => c.split === "val")!;
    const seg = await readNifti(path.join(data, val.id, `${val.id}_seg.nii.gz`));
    const p = await readNifti(path.join(out, "predictions", `${val.id}.nii.gz`));
    assert.deepEqual(p.dims, seg.dims);
    assert.ok(p.affine.every((v, i) => Math.abs(v - seg.affine[i]) < 1e-4), "fused affine");
    for (const mod of m.modalities) {
      assert.ok(
        !existsSync(path.join(out, "predictions", `${val.id}_${mod}.nii.gz`)),
        `no ${mod} map`,
      );
    }

    // predict on one case folder as users get it (seg file beside the images is skipped) and on
    // the whole dataset folder; file label values give 4 back for enhancing tumour.
    const caseDir = path.join(data, ids[0]);
    const preds = path.join(root, "preds");
    ok(
      await runCli([
        "predict",
        "--run",
        out,
        "--input",
        caseDir,
        "--out",
        preds,
        "--label-values",
        "file",
        "--quiet",
      ]),
      "predict --input",
    );
    const names = [...Deno.readDirSync(preds)].map((e) => e.name).sort();
    assert.deepEqual(names, [`${ids[0]}.nii.gz`, "report.html", "viewer"]);
    const p0 = await readNifti(path.join(preds, `${ids[0]}.nii.gz`));
    assert.ok(p0.data.every((v) => v === 0 || v === 1 || v === 2 || v === 4), "file label values");
    // BraTS 2023-style names (<case>-<modality>) are read too.
    const dashed = path.join(root, "dashed");
    Deno.mkdirSync(dashed);
    for (const mod of m.modalities) {
      Deno.copyFileSync(
        path.join(caseDir, `${ids[0]}_${mod}.nii.gz`),
        path.join(dashed, `X-1-${mod}.nii.gz`),
      );
    }
    const predsDashed = path.join(root, "preds_dashed");
    ok(
      await runCli(["predict", "--run", out, "--input", dashed, "--out", predsDashed, "--quiet"]),
      "predict dashed names",
    );
    assert.deepEqual([...Deno.readDirSync(predsDashed)].map((e) => e.name).sort(), [
      "X-1.nii.gz",
      "report.html",
      "viewer",
    ]);
    const predsAll = path.join(root, "preds_all");
    ok(
      await runCli([
        "predict",
        "--run",
        out,
        "--data",
        data,
        "--split",
        "val",
        "--out",
        predsAll,
        "--quiet",
      ]),
      "predict --data",
    );
    assert.ok(existsSync(path.join(predsAll, `${val.id}.nii.gz`)));

    // evaluate the file-valued prediction against the BraTS seg with named classes and regions.
    const mjson = path.join(root, "m.json");
    ok(
      await runCli([
        "evaluate",
        "--pred",
        path.join(preds, `${ids[0]}.nii.gz`),
        "--ref",
        path.join(caseDir, `${ids[0]}_seg.nii.gz`),
        "--labels",
        "NCR=1,ED=2,ET=4,TC=1+4,WT=1+2+4",
        "--out",
        mjson,
        "--quiet",
      ]),
      "evaluate",
    );
    const ev = JSON.parse(readFileSync(mjson, "utf8"));
    assert.deepEqual(Object.keys(ev.summary.perClass), ["NCR", "ED", "ET", "TC", "WT"]);
    assert.ok(Number.isFinite(ev.summary.perClass.WT.dice.mean));
    assert.ok(!JSON.stringify(ev).includes("NaN"));
  },
});

Deno.test({
  name: "Decathlon Task05_Prostate layout: 4-D T2/ADC, 5 slices < patch depth, float64 labels",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = Deno.makeTempDirSync({ prefix: "comodal-prostate-" });
    const data = path.join(root, "Task05_Prostate");
    await writeProstate(data, { cases: 5, slices: [5, 4, 6] });
    ok(await runCli(["import", data, "--val", "0.2"]), "import");
    const manifestFile = path.join(data, "manifest.yaml");
    const m = await loadManifest(manifestFile);
    assert.deepEqual(m.modalities, ["T2", "ADC"]);
    assert.deepEqual(m.classes, { pz: 1, tz: 2 });
    const out = path.join(root, "run");
    // Patch depth 8 > 4..6 slices: the volume is padded; anisotropic spacing pools in-plane first.
    ok(
      await runCli(tinyTrainArgs(manifestFile, out, "method=cmc", "patchSize=[8,32,32]")),
      "train",
    );
    const plan = JSON.parse(readFileSync(path.join(out, "plan.json"), "utf8"));
    assert.ok(plan.targetSpacing[2] > 3.5 && plan.targetSpacing[0] < 0.7, `${plan.targetSpacing}`);
    const levels = plan.network.levels as { kernel: number[]; stride: number[] }[];
    assert.deepEqual(levels[0].kernel, [1, 3, 3], JSON.stringify(levels));
    assert.deepEqual(levels[1].stride, [1, 2, 2], JSON.stringify(levels));
    const metrics = JSON.parse(readFileSync(path.join(out, "metrics.json"), "utf8"));
    assert.deepEqual(Object.keys(metrics.summary.perClass).sort(), ["pz", "tz"]);

    // Without patchSize the patch is planned from the median image within patchVoxels.
    const auto = path.join(root, "run-auto");
    const r = await runCli(tinyTrainArgs(manifestFile, auto, "patchVoxels=4096"));
    ok(r, "train with a planned patch");
    // method=auto (the default): co-registered T2 + ADC train as early fusion, and the run says so.
    assert.match(
      r.err + r.out,
      /Method early-fusion \(method=auto: every case has T2, ADC co-registered/,
    );
    assert.equal(
      JSON.parse(readFileSync(path.join(auto, "config.json"), "utf8")).method,
      "early-fusion",
    );
    const planned =
      JSON.parse(readFileSync(path.join(auto, "plan.json"), "utf8")).network.patchSize;
    assert.match(
      r.err + r.out,
      new RegExp(`Patch size \\[${planned.join(", ")}\\] \\(D, H, W\\), planned`),
    );
    assert.ok(planned[0] * planned[1] * planned[2] <= 4096, `${planned}`);
    assert.ok(planned[1] > planned[0], `thick slices: fewer voxels along D (${planned})`);

    // predict the whole dataset folder (4-D files, frames by modality) and evaluate one case.
    const preds = path.join(root, "preds");
    ok(
      await runCli(["predict", "--run", out, "--data", data, "--out", preds, "--quiet"]),
      "predict",
    );
    const first = m.cases[0].id;
    const label = await readNifti(path.join(data, "labelsTr", `${first}.nii.gz`));
    const pred = await readNifti(path.join(preds, `${first}.nii.gz`));
    assert.deepEqual(pred.dims, label.dims);
    assert.equal(pred.frames, 1);
    // A Decathlon imagesTs-like folder: 4-D files without a modality tag, and the macOS "._" copies
    // that the released archives carry (also in labelsTr).
    const imagesTs = path.join(root, "imagesTs");
    Deno.mkdirSync(imagesTs);
    for (const c of m.cases.slice(0, 2)) {
      Deno.copyFileSync(
        path.join(data, "imagesTr", `${c.id}.nii.gz`),
        path.join(imagesTs, `${c.id}.nii.gz`),
      );
    }
    Deno.writeFileSync(path.join(imagesTs, `._${first}.nii.gz`), new Uint8Array(4096).fill(1));
    Deno.writeFileSync(
      path.join(data, "labelsTr", `._${first}.nii.gz`),
      new Uint8Array(4096).fill(1),
    );
    const predsTs = path.join(root, "preds_ts");
    ok(
      await runCli(["predict", "--run", out, "--input", imagesTs, "--out", predsTs, "--quiet"]),
      "predict 4-D",
    );
    assert.deepEqual(
      [...Deno.readDirSync(predsTs)].map((e) => e.name).sort(),
      [...m.cases.slice(0, 2).map((c) => `${c.id}.nii.gz`), "report.html", "viewer"].sort(),
    );
    // Every case's fused prediction against the shared label folder.
    const mAll = path.join(root, "m_all.json");
    ok(
      await runCli([
        "evaluate",
        "--pred",
        preds,
        "--ref",
        path.join(data, "labelsTr"),
        "--labels",
        "PZ=1,TZ=2",
        "--out",
        mAll,
        "--quiet",
      ]),
      "evaluate folders",
    );
    assert.equal(JSON.parse(readFileSync(mAll, "utf8")).cases.length, 5);
    const mjson = path.join(root, "m.json");
    ok(
      await runCli([
        "evaluate",
        "--pred",
        path.join(preds, `${first}.nii.gz`),
        "--ref",
        path.join(data, "labelsTr", `${first}.nii.gz`),
        "--labels",
        "PZ=1,TZ=2,prostate=1+2",
        "--out",
        mjson,
        "--quiet",
      ]),
      "evaluate",
    );
    const ev = JSON.parse(readFileSync(mjson, "utf8"));
    assert.deepEqual(Object.keys(ev.summary.perClass), ["PZ", "TZ", "prostate"]);
  },
});

Deno.test({
  name:
    "train on a dataset folder given as the task: imported on the fly, every modality, every label",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = Deno.makeTempDirSync({ prefix: "comodal-folder-task-" });
    const data = path.join(root, "BraTS2021_Training_Data");
    await writeBrats2021(data, { cases: 4 });
    const out = path.join(root, "run");
    const r = await runCli(tinyTrainArgs(data, out, "patchSize=[8,16,16]"));
    ok(r, "train on a folder");
    assert.match(r.err + r.out, /Importing the dataset in /);
    assert.ok(
      !existsSync(path.join(data, "manifest.yaml")),
      "the dataset folder is left untouched",
    );
    const plan = JSON.parse(readFileSync(path.join(out, "plan.json"), "utf8"));
    assert.deepEqual(plan.modalities, ["t1", "t1ce", "t2", "flair"]);
    const config = readFileSync(path.join(out, "log.jsonl"), "utf8").split("\n")
      .filter((l) => l.includes('"event":"config"')).map((l) => JSON.parse(l))[0];
    // Real data keeps its own labels: no case is turned unlabeled (the synthetic default does that).
    assert.equal(config.data.unlabeled, 0, JSON.stringify(config.data));
    const missing = await runCli([
      "train",
      path.join(root, "nope"),
      "--out",
      path.join(root, "r2"),
    ]);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /Unknown task '.*nope': expected one of .* or a dataset folder/);
  },
});

Deno.test({
  name:
    "large datasets: maxTrainCases / maxValidationCases subsets; too little memory is a clear error before loading",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = Deno.makeTempDirSync({ prefix: "comodal-subset-" });
    const data = path.join(root, "BraTS2021_Training_Data");
    await writeBrats2021(data, { cases: 6 });
    const out = path.join(root, "run");
    ok(
      await runCli(
        tinyTrainArgs(data, out, "patchSize=[8,16,16]", "maxTrainCases=2", "maxValidationCases=1"),
      ),
      "train on a subset",
    );
    const config = readFileSync(path.join(out, "log.jsonl"), "utf8").split("\n")
      .filter((l) => l.includes('"event":"config"')).map((l) => JSON.parse(l))[0];
    assert.equal(
      config.data.labeled.length + config.data.unlabeled,
      2,
      JSON.stringify(config.data),
    );
    assert.ok(config.data.labeled.length >= 1);
    assert.equal(config.data.validation.length, 1);
    // The same data with a 64 KiB memory budget: stops before loading, naming the remedy.
    setAvailableMemory(2 ** 16);
    try {
      const r = await runCli(tinyTrainArgs(data, path.join(root, "r2")));
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        /need [0-9.]+ GiB in memory after preprocessing, .* use a subset with --set maxTrainCases=N/,
      );
    } finally {
      setAvailableMemory(null);
    }
  },
});
