/**
 * Scans in the formats users have, through the command line: an nnU-Net raw dataset whose
 * file_ending is .mha (as MetaImage challenge data such as PROMISE12 are converted), written by
 * ITK (@itk-wasm/image-io) with an oblique LPS direction, imports, trains and predicts; `predict`
 * then reads a folder of .mha / .nrrd files and DICOM series (written by dcmjs), and a folder that
 * is one DICOM series. Predictions are NIfTI on each input's own grid.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { apply4, type Mat4 } from "../src/data/affine.ts";
import { readNifti } from "../src/data/nifti.ts";
import { lpsToRas, readImage, writeImage } from "../src/data/image_io.ts";
import { writeDicomSeries } from "../src/data/dicom_testing.ts";
import { loadManifest } from "../src/data/manifest.ts";
import { Rng } from "../src/data/rng.ts";
import { ok, runCli, tinyTrainArgs } from "./real_layouts.ts";
import { setCacheRoot } from "../src/train/data.ts";

setCacheRoot(Deno.makeTempDirSync({ prefix: "comodal-formats-cache-" }));

const DIMS: [number, number, number] = [20, 16, 6];

/** LPS geometry of a slightly oblique axial scan: 0.8 mm pixels, 2.5 mm slices. */
function lpsGeometry(): Mat4 {
  const a = 0.15;
  const c = Math.cos(a), s = Math.sin(a);
  return [0.8 * c, -0.8 * s, 0, -20, 0.8 * s, 0.8 * c, 0, 15, 0, 0, 2.5, -40, 0, 0, 0, 1];
}

function scene(r: Rng): { image: Int16Array; label: Uint8Array } {
  const [X, Y, Z] = DIMS;
  const image = new Int16Array(X * Y * Z), label = new Uint8Array(X * Y * Z);
  const cx = X / 2 + r.uniform(-2, 2), cy = Y / 2 + r.uniform(-2, 2);
  for (let z = 0, i = 0; z < Z; z++) {
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++, i++) {
        const inside = Math.hypot(x - cx, y - cy, (z - Z / 2) * 2) < 5;
        label[i] = inside ? 1 : 0;
        image[i] = Math.round((inside ? 300 : 100) + 15 * r.normal());
      }
    }
  }
  return { image, label };
}

Deno.test({
  name: "MetaImage nnU-Net dataset: import, train, predict .mha/.nrrd files and DICOM series",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const root = Deno.makeTempDirSync({ prefix: "comodal-formats-" });
    const data = path.join(root, "Dataset012_PROMISE12");
    Deno.mkdirSync(path.join(data, "imagesTr"), { recursive: true });
    Deno.mkdirSync(path.join(data, "labelsTr"), { recursive: true });
    const ras = lpsToRas(lpsGeometry());
    const ids: string[] = [];
    const scenes = new Map<string, ReturnType<typeof scene>>();
    for (let c = 0; c < 4; c++) {
      const id = `Case${String(c).padStart(2, "0")}`;
      ids.push(id);
      const sc = scene(new Rng(0, id));
      scenes.set(id, sc);
      await writeImage(path.join(data, "imagesTr", `${id}_0000.mha`), {
        data: sc.image,
        dims: DIMS,
        affine: ras,
      }, { datatype: "int16" });
      await writeImage(path.join(data, "labelsTr", `${id}.mha`), {
        data: sc.label,
        dims: DIMS,
        affine: ras,
      }, { datatype: "uint8", compress: true });
    }
    Deno.writeTextFileSync(
      path.join(data, "dataset.json"),
      JSON.stringify({
        channel_names: { "0": "T2" },
        labels: { background: 0, prostate: 1 },
        numTraining: 4,
        file_ending: ".mha",
      }),
    );
    ok(await runCli(["import", data, "--val", "0.25"]), "import");
    const m = await loadManifest(path.join(data, "manifest.yaml"));
    assert.deepEqual(m.modalities, ["T2"]);
    assert.deepEqual(m.classes, { prostate: 1 });
    assert.ok(m.cases.every((c) => String(c.images.T2).endsWith(".mha")));

    const out = path.join(root, "run");
    ok(
      await runCli(tinyTrainArgs(
        path.join(data, "manifest.yaml"),
        out,
        "method=supervised",
        // One loader worker, as by default: the main thread has the format libraries loaded.
        "loaderWorkers=1",
        "patchSize=[4,16,16]",
      )),
      "train",
    );
    const metrics = JSON.parse(readFileSync(path.join(out, "metrics.json"), "utf8"));
    assert.deepEqual(Object.keys(metrics.summary.perClass), ["prostate"]);
    // The validation prediction is NIfTI on the .mha label's grid (same voxels, same world).
    const val = m.cases.find((c) => c.split === "val")!;
    const label = await readImage(path.join(data, "labelsTr", `${val.id}.mha`));
    const predNames = [...Deno.readDirSync(path.join(out, "predictions"))].map((e) => e.name);
    const valPred = predNames.find((n) => n.startsWith(val.id) && n.endsWith(".nii.gz"));
    assert.ok(valPred, `a prediction of ${val.id} among ${predNames}`);
    const vp = await readNifti(path.join(out, "predictions", valPred));
    assert.deepEqual(vp.dims, label.dims);
    assert.ok(vp.affine.every((v, i) => Math.abs(v - label.affine[i]) < 1e-4), "val affine");

    // predict: a folder with an .mha case, an .nrrd case and a DICOM series case
    // (<case>_<modality>/ holding the series), next to a label file that is skipped.
    const input = path.join(root, "new_scans");
    Deno.mkdirSync(input);
    const [a, b, d] = ids;
    Deno.copyFileSync(
      path.join(data, "imagesTr", `${a}_0000.mha`),
      path.join(input, `scanA_T2.mha`),
    );
    await writeImage(path.join(input, "scanB_T2.nrrd"), {
      data: scenes.get(b)!.image,
      dims: DIMS,
      affine: ras,
    }, { datatype: "int16" });
    const series = path.join(input, "scanD_T2");
    writeDicomSeries(series, {
      stored: scenes.get(d)!.image.map((v) => v + 1024),
      dims: DIMS,
      lps: lpsGeometry(),
      slope: 1,
      intercept: -1024,
    });
    Deno.copyFileSync(path.join(data, "labelsTr", `${a}.mha`), path.join(input, "scanA.mha"));
    const preds = path.join(root, "preds");
    ok(
      await runCli(["predict", "--run", out, "--input", input, "--out", preds, "--quiet"]),
      "predict a folder of scans",
    );
    // Beside the predictions: the report and its viewer (MetaImage, NRRD and DICOM shown as NIfTI).
    const all = [...Deno.readDirSync(preds)].map((e) => e.name).sort();
    assert.ok(all.includes("report.html") && all.includes("viewer"), `${all}`);
    const names = all.filter((n) => n !== "report.html" && n !== "viewer");
    assert.equal(names.length, 3, `${names}`);
    for (
      const [scan, source] of [["scanA", path.join(input, "scanA_T2.mha")], [
        "scanB",
        path.join(input, "scanB_T2.nrrd"),
      ], ["scanD", series]]
    ) {
      const name = names.find((n) => n.startsWith(scan));
      assert.ok(name && /\.nii\.gz$/.test(name), `${scan} predicted as NIfTI: ${names}`);
      const p = await readNifti(path.join(preds, name));
      const src = await readImage(source);
      assert.deepEqual(p.dims, src.dims, scan);
      for (const corner of [[0, 0, 0], [DIMS[0] - 1, DIMS[1] - 1, DIMS[2] - 1]]) {
        const pw = apply4(p.affine, corner), sw = apply4(src.affine, corner);
        assert.ok(pw.every((v, k) => Math.abs(v - sw[k]) < 1e-3), `${scan} world ${corner}`);
      }
      assert.ok(p.data.every((v) => v === 0 || v === 1), `${scan} labels`);
    }
    // The DICOM series and the .mha of the same scan give the same prediction grid.
    const dicomImg = await readImage(series);
    assert.ok(
      dicomImg.data.every((v, i) => v === scenes.get(d)!.image[i]),
      "rescaled DICOM voxels",
    );

    // A folder that is itself one DICOM series is one case named after it.
    const single = path.join(root, "preds_single");
    ok(
      await runCli(["predict", "--run", out, "--input", series, "--out", single, "--quiet"]),
      "predict one DICOM series",
    );
    const singleNames = [...Deno.readDirSync(single)].map((e) => e.name)
      .filter((n) => n !== "report.html" && n !== "viewer");
    assert.equal(singleNames.length, 1, `${singleNames}`);
    assert.ok(singleNames[0].startsWith("scanD_T2"), `${singleNames}`);

    // evaluate a NIfTI prediction against the .mha reference.
    const mjson = path.join(root, "m.json");
    ok(
      await runCli([
        "evaluate",
        "--pred",
        path.join(out, "predictions", valPred),
        "--ref",
        path.join(data, "labelsTr", `${val.id}.mha`),
        "--labels",
        "prostate=1",
        "--out",
        mjson,
        "--quiet",
      ]),
      "evaluate against .mha",
    );
    const ev = JSON.parse(readFileSync(mjson, "utf8"));
    assert.ok(Number.isFinite(ev.summary.perClass.prostate.dice.mean));
  },
});
