/**
 * What real public files do that phantoms do not, through the user path:
 * - header quirks: CT int16 with scl_inter -1024, float32 MR with scl_slope 0, uint16 MR, qform-only
 *   files with pixdim[0] = -1;
 * - an "ignore" label: metrics on the original grid (training's final evaluation and `evaluate`)
 *   leave ignored voxels out of both the reference and the prediction;
 * - a class absent from a case and a class of 3 voxels: the empty-mask rules, no NaN in the outputs;
 * - bad input: a truncated .nii.gz, an image/label shape mismatch, a label value outside the label
 *   map, NaN voxels: each a clear error naming the file.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { readNifti, writeNifti } from "../src/data/nifti.ts";
import { loadManifest } from "../src/data/manifest.ts";
import { labelValueMap } from "../src/data/manifest.ts";
import { IGNORE_INDEX } from "../src/util/ignore.ts";
import { evaluateCase } from "../src/metrics/metrics.ts";
import { evaluateOriginal, originalLabels, quickDice } from "../src/train/validate.ts";
import { LabelAccess } from "../src/data/label_access.ts";
import {
  ok,
  runCli,
  tinyTrainArgs,
  writeBrats2021,
  writeNiftiWithHeader,
  writeNnUnetCtMr,
} from "./real_layouts.ts";
import { setCacheRoot } from "../src/train/data.ts";

setCacheRoot(Deno.makeTempDirSync({ prefix: "comodal-quirks-cache-" }));

Deno.test("NIfTI headers as scanners write them: scl_inter -1024, scl_slope 0, uint16, qform only with qfac -1", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "comodal-headers-" });
  const dims = [4, 3, 2];
  const affine = [0.8, 0, 0, -9, 0, 0.8, 0, 4, 0, 0, -2.5, 30, 0, 0, 0, 1];
  const stored = Int16Array.from({ length: 24 }, (_, i) => i * 100);
  await writeNiftiWithHeader(`${dir}/ct.nii.gz`, { data: stored, dims, affine }, {
    datatype: "int16",
  }, { sclSlope: 1, sclInter: -1024 });
  const ct = await readNifti(`${dir}/ct.nii.gz`);
  assert.deepEqual([...ct.data.slice(0, 3)], [-1024, -924, -824]);
  // scl_slope 0 means "not scaled" (NIfTI-1 standard): values as stored, scl_inter ignored too.
  await writeNiftiWithHeader(
    `${dir}/mr.nii.gz`,
    { data: Float32Array.from(stored), dims, affine },
    {
      datatype: "float32",
    },
    { sclSlope: 0, sclInter: 7 },
  );
  const mr = await readNifti(`${dir}/mr.nii.gz`);
  assert.deepEqual([...mr.data.slice(0, 3)], [0, 100, 200]);
  // Our writer follows the same rule.
  await writeNifti(`${dir}/mr0.nii.gz`, { data: Float32Array.from(stored), dims, affine }, {
    sclSlope: 0,
    sclInter: 7,
  });
  assert.deepEqual([...(await readNifti(`${dir}/mr0.nii.gz`)).data.slice(0, 3)], [0, 100, 200]);
  // qform only (sform_code 0, srow zeroed), negative determinant -> pixdim[0] = -1.
  const big = Uint16Array.from({ length: 24 }, (_, i) => 40000 + i);
  await writeNiftiWithHeader(`${dir}/q.nii.gz`, { data: big, dims, affine }, {
    datatype: "uint16",
  }, { sformCode: 0, clearSrow: true, qfac: -1 });
  const q = await readNifti(`${dir}/q.nii.gz`);
  assert.equal(q.header.affineSource, "qform");
  assert.equal(q.header.datatype, "uint16");
  assert.equal(q.data[23], 40023);
  assert.ok(q.affine.every((v, i) => Math.abs(v - affine[i]) < 1e-5), `qform affine ${q.affine}`);
  // sform_code set but the matrix left at zero (as some converters write): the qform is used.
  await writeNiftiWithHeader(`${dir}/zs.nii.gz`, { data: big, dims, affine }, {
    datatype: "uint16",
  }, { clearSrow: true });
  const zs = await readNifti(`${dir}/zs.nii.gz`);
  assert.equal(zs.header.affineSource, "qform");
  assert.ok(zs.affine.every((v, i) => Math.abs(v - affine[i]) < 1e-5), `qform affine ${zs.affine}`);
});

Deno.test({
  name:
    "nnU-Net raw CT + MR with header quirks and an ignore label: import, train, predict, evaluate",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = Deno.makeTempDirSync({ prefix: "comodal-ctmr-" });
    const data = path.join(root, "Dataset999_CtMr");
    const { ignoreValue } = await writeNnUnetCtMr(data, { cases: 5 });
    ok(await runCli(["import", data, "--val", "0.2"]), "import");
    const manifestFile = path.join(data, "manifest.yaml");
    const m = await loadManifest(manifestFile);
    assert.deepEqual(m.modalities, ["CT", "T1", "T2"]);
    assert.deepEqual(m.modalityKinds, { CT: "ct", T1: "mr", T2: "mr" });
    assert.deepEqual(m.labelMap, { [ignoreValue]: "ignore" });
    const out = path.join(root, "run");
    ok(
      await runCli(
        tinyTrainArgs(
          manifestFile,
          out,
          "method=cmc",
          "modalities=[CT,T1,T2]",
          "patchSize=[4,16,16]",
        ),
      ),
      "train",
    );
    const plan = JSON.parse(readFileSync(path.join(out, "plan.json"), "utf8"));
    // CT statistics are in HU (scl_inter applied); T1 (scl_slope 0) is not zeroed; T2 keeps uint16.
    const fp = plan.fingerprint.perModality;
    assert.equal(fp.CT.min, -1024);
    assert.ok(fp.CT.mean > 30 && fp.CT.mean < 130 && fp.CT.p005 > -100, JSON.stringify(fp.CT));
    assert.ok(fp.T1.mean > 300 && fp.T1.mean < 800, JSON.stringify(fp.T1));
    assert.ok(fp.T2.max > 50000, JSON.stringify(fp.T2));
    assert.deepEqual(plan.classes, ["background", "organ", "lesion"]);

    // The final evaluation leaves the unannotated slab out of prediction and reference alike.
    const metrics = JSON.parse(readFileSync(path.join(out, "metrics.json"), "utf8"));
    const val = m.cases.find((c) => c.split === "val")!;
    const ref = await readNifti(path.join(data, "labelsTr", `${val.id}.nii.gz`));
    // Co-registered modalities: one fused prediction per case, scored as <case>/fused.
    for (const mod of ["fused"]) {
      const pred = await readNifti(path.join(out, "predictions", `${val.id}.nii.gz`));
      const row = metrics.cases.find((c: { id: string }) => c.id === `${val.id}/${mod}`);
      assert.ok(row, `metrics for ${val.id}/${mod}`);
      for (const [k, name] of [[1, "organ"], [2, "lesion"]] as const) {
        let p = 0, r = 0;
        for (let i = 0; i < ref.data.length; i++) {
          if (ref.data[i] === ignoreValue) continue;
          if (pred.data[i] === k) p++;
          if (ref.data[i] === k) r++;
        }
        assert.equal(row.classes[name].predVoxels, p, `${mod} ${name} predicted voxels`);
        assert.equal(row.classes[name].refVoxels, r, `${mod} ${name} reference voxels`);
      }
    }

    // predict nnU-Net-named inputs (_0000, _0001, _0002) with the decoders' own maps too, evaluate
    // per modality against the shared labels; "ignore" in the label map leaves the slab out.
    const preds = path.join(root, "preds");
    ok(
      await runCli([
        "predict",
        "--run",
        out,
        "--input",
        path.join(data, "imagesTr"),
        "--out",
        preds,
        "--per-modality",
        "--quiet",
      ]),
      "predict",
    );
    const fusedNames = [...Deno.readDirSync(preds)].map((e) => e.name).filter((n) =>
      /^[^_]+_\d+\.nii\.gz$/.test(n)
    );
    assert.equal(fusedNames.length, 5, `one fused map per case: ${fusedNames}`);
    Deno.mkdirSync(path.join(root, "fused"));
    for (const n of fusedNames) Deno.renameSync(path.join(preds, n), path.join(root, "fused", n));
    const mjson = path.join(root, "m.json");
    const noModality = await runCli([
      "evaluate",
      "--pred",
      preds,
      "--ref",
      path.join(data, "labelsTr"),
      "--quiet",
      "--out",
      mjson,
    ]);
    assert.equal(noModality.code, 1);
    assert.match(noModality.err, /per modality: choose one with --modality (CT|T1|T2)/);
    ok(
      await runCli([
        "evaluate",
        "--pred",
        preds,
        "--ref",
        path.join(data, "labelsTr"),
        "--modality",
        "T1",
        "--labels",
        `organ=1,lesion=2,ignore=${ignoreValue}`,
        "--out",
        mjson,
        "--quiet",
      ]),
      "evaluate",
    );
    const ev = JSON.parse(readFileSync(mjson, "utf8"));
    assert.equal(ev.cases.length, 5);
    assert.deepEqual(ev.settings.ignore, [ignoreValue]);
    assert.deepEqual(Object.keys(ev.summary.perClass), ["organ", "lesion"]);
    assert.ok(
      !ev.warnings.some((w: string) => w.includes("belong to no evaluated class")),
      ev.warnings.join("\n"),
    );
    const c0 = ev.cases[0];
    const r0 = await readNifti(c0.ref), p0 = await readNifti(c0.pred);
    let organPred = 0;
    for (let i = 0; i < r0.data.length; i++) {
      if (r0.data[i] !== ignoreValue && p0.data[i] === 1) organPred++;
    }
    assert.equal(c0.classes.organ.predVoxels, organPred);
  },
});

Deno.test("ignore label: evaluateCase, quickDice and the original-grid evaluation exclude ignored voxels", async () => {
  // 1-D strip of 8 voxels as [1, 1, 8]. Reference: organ at 0..2, ignored at 5..7.
  const ref = [1, 1, 1, 0, 0, 255, 255, 255];
  const pred = [1, 1, 1, 0, 0, 1, 1, 1]; // the model paints organ over the unannotated voxels
  const opts = {
    dims: [1, 1, 8] as [number, number, number],
    spacing: [1, 1, 1] as [number, number, number],
    classes: [1],
  };
  const without = evaluateCase(pred, ref, opts).classes["1"];
  assert.equal(without.predVoxels, 6);
  assert.ok(without.dice < 0.7);
  const withIgnore = evaluateCase(pred, ref, { ...opts, ignore: [255] }).classes["1"];
  assert.deepEqual(withIgnore, { dice: 1, hd95: 0, assd: 0, predVoxels: 3, refVoxels: 3 });
  assert.throws(
    () => evaluateCase(pred, ref, { ...opts, ignore: [1] }),
    /both ignored and part of a class/,
  );

  // Preprocessed grid: ignored voxels are stored as 255 (uint8) or -1 (int16).
  assert.deepEqual(quickDice(Int32Array.from(pred), Uint8Array.from(ref), 2), [1]);
  assert.deepEqual(
    quickDice(Int32Array.from(pred), Int16Array.from(ref.map((v) => (v === 255 ? -1 : v))), 2),
    [1],
  );

  // Original grid, through the task's label map (file value 255 -> "ignore").
  const dir = Deno.makeTempDirSync({ prefix: "comodal-ignore-" });
  const file = path.join(dir, "lab.nii.gz");
  const affine = [2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1];
  await writeNifti(file, { data: Uint8Array.from(ref), dims: [8, 1, 1], affine }, {
    datatype: "uint8",
  });
  const map = labelValueMap({
    task: "t",
    modalities: ["a"],
    classes: { organ: 1 },
    labelMap: { "255": "ignore" },
    cases: [],
  });
  const lab = await originalLabels(file, map, new LabelAccess([file], "evaluation"));
  const I = IGNORE_INDEX;
  assert.deepEqual([...lab.labels], [1, 1, 1, 0, 0, I, I, I]);
  const cm = evaluateOriginal(Int32Array.from(pred), lab, [8, 1, 1], ["background", "organ"], "c");
  assert.deepEqual(cm.classes.organ, { dice: 1, hd95: 0, assd: 0, predVoxels: 3, refVoxels: 3 });
  // A value outside the label map names the file and the value.
  await writeNifti(file, {
    data: Uint8Array.from([1, 7, 0, 0, 0, 0, 0, 0]),
    dims: [8, 1, 1],
    affine,
  }, {
    datatype: "uint8",
  });
  await assert.rejects(
    () => originalLabels(file, map, new LabelAccess([file], "evaluation")),
    /lab\.nii\.gz: label value 7 is not in the task's label map/,
  );
});

Deno.test("a class absent from a case and a 3-voxel class: empty-mask rules, no NaN in table or JSON", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "comodal-empty-" });
  const predDir = path.join(dir, "pred"), refDir = path.join(dir, "ref");
  Deno.mkdirSync(predDir);
  Deno.mkdirSync(refDir);
  const dims = [10, 8, 6];
  const affine = [1.2, 0, 0, 0, 0, 1.2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1];
  const at = (x: number, y: number, z: number) => (z * dims[1] + y) * dims[0] + x;
  const mk = () => new Uint8Array(dims[0] * dims[1] * dims[2]);
  // Case a: organ (1) everywhere in a box, tiny (3) = 3 voxels matched exactly, lesion (2) only
  // predicted (absent from the reference): Dice 0, distances infinite.
  const ra = mk(), pa = mk();
  for (let z = 1; z < 4; z++) {
    for (let y = 2; y < 6; y++) for (let x = 2; x < 7; x++) ra[at(x, y, z)] = pa[at(x, y, z)] = 1;
  }
  for (const z of [2, 3, 4]) ra[at(8, 1, z)] = pa[at(8, 1, z)] = 3;
  pa[at(0, 0, 0)] = 2;
  // Case b: lesion absent from both (Dice 1, distances 0); tiny class absent from both too.
  const rb = mk(), pb = mk();
  for (let z = 1; z < 3; z++) {
    for (let y = 1; y < 4; y++) for (let x = 1; x < 5; x++) rb[at(x, y, z)] = pb[at(x, y, z)] = 1;
  }
  // Case c: tiny class in the reference only (missed): Dice 0, distances infinite.
  const rc = Uint8Array.from(rb), pc = Uint8Array.from(pb);
  rc[at(9, 7, 5)] = rc[at(9, 6, 5)] = rc[at(8, 7, 5)] = 3;
  for (const [id, r, p] of [["a", ra, pa], ["b", rb, pb], ["c", rc, pc]] as const) {
    await writeNifti(path.join(refDir, `${id}_seg.nii.gz`), { data: r, dims, affine }, {
      datatype: "uint8",
    });
    await writeNifti(path.join(predDir, `${id}.nii.gz`), { data: p, dims, affine }, {
      datatype: "uint8",
    });
  }
  const out = path.join(dir, "m.json");
  const r = await runCli([
    "evaluate",
    "--pred",
    predDir,
    "--ref",
    refDir,
    "--labels",
    "organ=1,lesion=2,tiny=3",
    "--out",
    out,
    "--quiet",
  ]);
  ok(r, "evaluate");
  const json = readFileSync(out, "utf8");
  const ev = JSON.parse(json);
  const byId = Object.fromEntries(ev.cases.map((c: { id: string }) => [c.id, c]));
  assert.deepEqual(byId.a.classes.lesion, {
    dice: 0,
    hd95: "Infinity",
    assd: "Infinity",
    predVoxels: 1,
    refVoxels: 0,
  });
  assert.deepEqual(byId.b.classes.lesion, {
    dice: 1,
    hd95: 0,
    assd: 0,
    predVoxels: 0,
    refVoxels: 0,
  });
  assert.deepEqual(byId.a.classes.tiny, { dice: 1, hd95: 0, assd: 0, predVoxels: 3, refVoxels: 3 });
  assert.equal(byId.c.classes.tiny.dice, 0);
  const s = ev.summary;
  // Lesion: 0 (a, predicted only), 1 (b), 1 (c, absent from both).
  assert.equal(s.perClass.lesion.dice.mean, 2 / 3);
  assert.equal(s.perClass.lesion.hd95.nonFinite, 1);
  assert.equal(s.perClass.tiny.hd95.n, 2);
  assert.equal(s.nonFinite.hd95, 2);
  assert.ok(!/NaN|null/.test(json), json);
  assert.ok(!/NaN/.test(r.out), r.out);
  assert.match(r.out, /^lesion\s+0\.6667/m);
});

Deno.test({
  name: "bad input: truncated .nii.gz, shape mismatch, label value 7, NaN voxels name the file",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = Deno.makeTempDirSync({ prefix: "comodal-bad-" });
    const cases = 3;
    const fresh = async (name: string) => {
      const data = path.join(root, name);
      const ids = await writeBrats2021(data, { cases, dims: [12, 10, 6] });
      return { data, id: ids[1], dir: path.join(data, ids[1]) };
    };
    const train = async (data: string) => {
      ok(await runCli(["import", data]), "import");
      return await runCli(
        tinyTrainArgs(
          path.join(data, "manifest.yaml"),
          path.join(data, "run"),
          "patchSize=[4,8,8]",
        ),
      );
    };
    // Truncated download.
    {
      const { data, id, dir } = await fresh("truncated");
      const f = path.join(dir, `${id}_t2.nii.gz`);
      const bytes = Deno.readFileSync(f);
      Deno.writeFileSync(f, bytes.subarray(0, Math.floor(bytes.length / 2)));
      const r = await train(data);
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        new RegExp(`Cannot read .*${id}_t2\\.nii\\.gz: corrupt or truncated gzip data`),
      );
    }
    // Label on another grid.
    {
      const { data, id, dir } = await fresh("shape");
      const seg = path.join(dir, `${id}_seg.nii.gz`);
      const s = await readNifti(seg);
      await writeNifti(seg, {
        data: new Uint8Array(12 * 10 * 5),
        dims: [12, 10, 5],
        affine: s.affine,
      }, { datatype: "uint8" });
      const r = await train(data);
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        new RegExp(
          `Cannot preprocess case ${id}: label .*${id}_seg\\.nii\\.gz has shape 12x10x5 but image .*${id}_t1\\.nii\\.gz has 12x10x6`,
        ),
      );
    }
    // A label value outside the label map (BraTS has 0, 1, 2, 4).
    {
      const { data, id, dir } = await fresh("value7");
      const seg = path.join(dir, `${id}_seg.nii.gz`);
      const s = await readNifti(seg);
      const d = Uint8Array.from(s.data);
      d[d.length >> 1] = 7;
      await writeNifti(seg, { data: d, dims: s.dims, affine: s.affine }, { datatype: "uint8" });
      const r = await train(data);
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        new RegExp(
          `Cannot preprocess case ${id}: label .*${id}_seg\\.nii\\.gz has value 7, which is not in the task's label map \\(0, 1, 2, 4\\)`,
        ),
      );
    }
    // NaN voxels in a float image.
    {
      const { data, id, dir } = await fresh("nan");
      const f = path.join(dir, `${id}_flair.nii.gz`);
      const s = await readNifti(f);
      const d = Float32Array.from(s.data);
      d[5] = NaN;
      d[6] = NaN;
      await writeNifti(f, { data: d, dims: s.dims, affine: s.affine });
      const r = await train(data);
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        new RegExp(
          `Cannot preprocess case ${id}: .*${id}_flair\\.nii\\.gz has 2 NaN/Inf voxel\\(s\\) \\(first at voxel 5,0,0.*--set nonFinite=zero`,
        ),
      );
      // The remedy the message names works: the same data trains with NaN voxels set to 0.
      const again = await runCli(
        tinyTrainArgs(
          path.join(data, "manifest.yaml"),
          path.join(data, "run-zero"),
          "patchSize=[4,8,8]",
          "nonFinite=zero",
        ),
      );
      ok(again, "train with nonFinite=zero");
      assert.ok(existsSync(path.join(data, "run-zero", "last.ckpt")), again.out);
    }
  },
});

Deno.test("BraTS importer: 2023 names (labels 1/2/3), validation cases without seg, a missing modality", async () => {
  const { importDataset, detectLayout } = await import("../src/data/importers.ts");
  const { labelValueMap } = await import("../src/data/manifest.ts");
  const root = Deno.makeTempDirSync({ prefix: "comodal-brats23-" });
  const src = path.join(root, "src");
  const ids = await writeBrats2021(src, { cases: 3, dims: [8, 8, 4] });
  // Rename to the 2023 scheme: BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.
  const data = path.join(root, "BraTS2023");
  const rename: Record<string, string> = {
    t1: "t1n",
    t1ce: "t1c",
    t2: "t2w",
    flair: "t2f",
    seg: "seg",
  };
  ids.forEach((id, c) => {
    const nid = `BraTS-GLI-${String(c).padStart(5, "0")}-000`;
    Deno.mkdirSync(path.join(data, nid), { recursive: true });
    for (const [a, b] of Object.entries(rename)) {
      if (c === 2 && a === "seg") continue; // a validation case: no segmentation
      Deno.copyFileSync(
        path.join(src, id, `${id}_${a}.nii.gz`),
        path.join(data, nid, `${nid}-${b}.nii.gz`),
      );
    }
  });
  assert.equal(await detectLayout(data), "brats");
  const m = await importDataset(data, { valFraction: 0.5 });
  assert.deepEqual(m.modalities, ["t1n", "t1c", "t2w", "t2f"]);
  assert.deepEqual(m.classes, { necrotic_core: 1, edema: 2, enhancing_tumour: 3 });
  assert.deepEqual([...labelValueMap(m)], [[0, 0], [1, 1], [2, 2], [3, 3]]);
  const unlabeled = m.cases.find((c) => !c.labeled)!;
  assert.equal(unlabeled.id, "BraTS-GLI-00002-000");
  assert.equal(unlabeled.split, "train");
  assert.equal(unlabeled.labels, undefined);
  // The 2021 scheme maps enhancing tumour's file value 4 to class index 3.
  const m21 = await importDataset(src);
  assert.deepEqual([...labelValueMap(m21)], [[0, 0], [1, 1], [2, 2], [4, 3]]);
  Deno.removeSync(path.join(src, ids[1], `${ids[1]}_flair.nii.gz`));
  await assert.rejects(
    () => importDataset(src),
    new RegExp(`case ${ids[1]} lacks its flair image`),
  );
});
