/**
 * Training on a dataset laid out like the real ones, not the built-in phantoms: a Medical
 * Segmentation Decathlon tree with 4-D four-channel images, odd sizes, anisotropic oblique-free
 * spacing, labels stored as float32 with a scaling factor in the header, imported to a manifest and
 * trained with CMC on all four modalities.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { writeNifti } from "../src/data/nifti.ts";
import { importDataset } from "../src/data/importers.ts";
import { saveManifest } from "../src/data/manifest.ts";
import { Rng } from "../src/data/rng.ts";
import { trainTask } from "../src/train/run.ts";
import { setCacheRoot } from "../src/train/data.ts";

setCacheRoot(Deno.makeTempDirSync({ prefix: "comodal-real-cache-" }));

async function decathlonTree(dir: string, cases: number): Promise<void> {
  await Deno.mkdir(path.join(dir, "imagesTr"), { recursive: true });
  await Deno.mkdir(path.join(dir, "labelsTr"), { recursive: true });
  const [X, Y, Z] = [27, 23, 9]; // odd sizes
  const spacing = [0.9, 0.9, 3.3];
  const affine = [spacing[0], 0, 0, -10, 0, spacing[1], 0, 12, 0, 0, spacing[2], -4, 0, 0, 0, 1];
  const training = [];
  for (let c = 0; c < cases; c++) {
    const r = new Rng(c, "case");
    const cx = 10 + r.int(8), cy = 9 + r.int(6), cz = 3 + r.int(3);
    const rad = 5 + r.int(3);
    const label = new Float32Array(X * Y * Z);
    const img = new Float32Array(X * Y * Z * 4);
    for (let z = 0; z < Z; z++) {
      for (let y = 0; y < Y; y++) {
        for (let x = 0; x < X; x++) {
          const i = (z * Y + y) * X + x;
          const d = Math.hypot(x - cx, y - cy, (z - cz) * 3.3);
          const cls = d < rad * 0.5 ? 2 : d < rad ? 1 : 0;
          // The writer stores value / scl_slope: 0 / 2 / 4 on disk, read back as 0 / 1 / 2.
          label[i] = cls;
          for (let ch = 0; ch < 4; ch++) {
            img[ch * X * Y * Z + i] = 100 + 40 * cls * (ch % 2 === 0 ? 1 : -1) + 10 * r.normal();
          }
        }
      }
    }
    const id = `BRATS_${String(c + 1).padStart(3, "0")}`;
    await writeNifti(path.join(dir, "imagesTr", `${id}.nii.gz`), {
      data: img,
      dims: [X, Y, Z],
      frames: 4,
      affine,
    });
    await writeNifti(path.join(dir, "labelsTr", `${id}.nii.gz`), {
      data: label,
      dims: [X, Y, Z],
      affine,
    }, { datatype: "float32", sclSlope: 0.5 });
    training.push({ image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` });
  }
  await Deno.writeTextFile(
    path.join(dir, "dataset.json"),
    JSON.stringify({
      name: "BrainTumour",
      modality: { "0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w" },
      labels: { "0": "background", "1": "edema", "2": "tumour" },
      numTraining: cases,
      training,
      test: [],
    }),
  );
}

Deno.test({
  name:
    "CMC trains on an imported Decathlon-style tree (4-D, four modalities, scaled float labels)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = Deno.makeTempDirSync({ prefix: "comodal-decathlon-" });
    await decathlonTree(dir, 6);
    const manifest = await importDataset(dir);
    assert.equal(manifest.modalities.length, 4);
    const file = path.join(dir, "manifest.yaml");
    await saveManifest(file, manifest);
    const out = Deno.makeTempDirSync({ prefix: "comodal-decathlon-run-" });
    const r = await trainTask({
      task: file,
      out,
      method: "cmc",
      modalities: manifest.modalities,
      iterations: 3,
      patchSize: [4, 16, 16],
      network: { baseWidth: 8, maxLevels: 3 },
      validation: { every: 0, overlap: 0 },
      optimizer: { warmup: 1 },
    }, { quiet: true });
    assert.equal(r.model.outputs.length, 4);
    const metrics = JSON.parse(readFileSync(path.join(out, "metrics.json"), "utf8"));
    // Classes come from the labels map, not from the float values stored in the files.
    assert.deepEqual(Object.keys(metrics.summary.perClass).sort(), ["edema", "tumour"]);
    // Four co-registered sequences: one fused prediction per validation case.
    const preds = [...Deno.readDirSync(path.join(out, "predictions"))].map((e) => e.name);
    assert.ok(
      preds.length >= 1 && preds.every((n) => /^BRATS_\d+\.nii\.gz$/.test(n)),
      preds.join(),
    );
    assert.ok(existsSync(path.join(out, "plan.json")));
    r.model.dispose();
  },
});
