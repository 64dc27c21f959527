/**
 * The awkward parts of real data in one dataset, through import, preprocessing and the loader:
 * a Decathlon-style 4-D file with 4 modalities, odd sizes, anisotropic oblique voxels, labels
 * stored as scaled floats, a class of a few voxels, and a NaN voxel.
 */
import { writeNifti } from "../src/data/nifti.ts";
import { importDecathlon } from "../src/data/importers.ts";
import { preprocessDataset } from "../src/data/prepared_cache.ts";
import { loadPreprocessedCases } from "../src/data/cases.ts";
import { PatchLoader } from "../src/data/loader.ts";
import { fromLinear, mul3, rotation3 } from "../src/data/affine.ts";

const tmp = await Deno.makeTempDir({ prefix: "comodal_data_real_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));

function check(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}

Deno.test("data: 4-D four-modality files, odd sizes, scaled float labels, a tiny class, NaN", async () => {
  const dir = `${tmp}/Task99_Odd`;
  await Deno.mkdir(`${dir}/imagesTr`, { recursive: true });
  await Deno.mkdir(`${dir}/labelsTr`, { recursive: true });
  const dims = [37, 29, 11] as const;
  const n = dims[0] * dims[1] * dims[2];
  const affine = fromLinear(mul3(rotation3(0.2, -0.1, 0.4), [-0.7, 0, 0, 0, -0.7, 0, 0, 0, 5]), [
    20,
    -30,
    11,
  ]);
  const training = [];
  for (const id of ["odd_001", "odd_002", "odd_003"]) {
    const data = new Float32Array(n * 4);
    const lab = new Float32Array(n);
    let i = 0;
    for (let z = 0; z < dims[2]; z++) {
      for (let y = 0; y < dims[1]; y++) {
        for (let x = 0; x < dims[0]; x++, i++) {
          const body = x > 3 && x < 33 && y > 2 && y < 26;
          const organ = body && x > 10 && x < 25 && y > 8 && y < 20 && z > 2 && z < 9;
          const tiny = x === 30 && y === 5 && z >= 4 && z <= 6; // 3 voxels
          lab[i] = tiny ? 3 : organ ? (x < 18 ? 1 : 2) : 0;
          for (let m = 0; m < 4; m++) {
            data[m * n + i] = body ? 100 * (m + 1) + (organ ? 50 : 0) + ((x * 3 + y + m) % 7) : 0;
          }
        }
      }
    }
    if (id === "odd_002") data[2 * n + 500] = NaN;
    await writeNifti(`${dir}/imagesTr/${id}.nii.gz`, { data, dims, frames: 4, affine }, {
      datatype: "float32",
    });
    // Labels as float32 stored through scl_slope 0.5: stored value 2*v, read back v (+ rounding noise).
    await writeNifti(`${dir}/labelsTr/${id}.nii.gz`, {
      data: lab.map((v) => v + (v ? 2e-4 : 0)),
      dims,
      affine,
    }, {
      datatype: "float32",
      sclSlope: 0.5,
    });
    training.push({ image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` });
  }
  await Deno.writeTextFile(
    `${dir}/dataset.json`,
    JSON.stringify({
      name: "Odd",
      modality: { "0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w" },
      labels: { "0": "background", "1": "a", "2": "b", "3": "tiny" },
      training,
      test: [],
    }),
  );
  const m = await importDecathlon(dir, { valFraction: 0 });
  check(m.modalities.length === 4, `modalities ${m.modalities}`);
  let err = "";
  try {
    await preprocessDataset(m, { outDir: `${tmp}/pre_err` });
  } catch (e) {
    err = (e as Error).message;
  }
  check(err.includes("Cannot preprocess case odd_002") && err.includes("NaN"), err);
  const plan = await preprocessDataset(m, { outDir: `${tmp}/pre`, nonFinite: "zero" });
  check(plan.targetSpacing[2] > 4.9 && plan.targetSpacing[0] < 0.8, `target ${plan.targetSpacing}`);
  check(plan.fingerprint.classVoxels[3] === 9, `tiny class voxels ${plan.fingerprint.classVoxels}`);
  const data = await loadPreprocessedCases(`${tmp}/pre`);
  check(data.labeled.length === 3, "three labeled cases");
  const c = data.labeled[0];
  check(Object.keys(c.volumes).length === 4, "four modalities");
  // Aligned channels of one file share one preprocessed grid.
  const g = Object.values(c.volumes).map((v) => JSON.stringify([v.dims, v.affine]));
  check(new Set(g).size === 1, "one grid for the four channels");
  check(c.foreground.FLAIR[3].length === 3, `tiny class locations ${c.foreground.FLAIR[3].length}`);
  const loader = await PatchLoader.create({
    dir: `${tmp}/pre`,
    patchSize: [4, 16, 16],
    labeledBatch: 2,
    unlabeledBatch: 0,
    seed: 1,
    workers: 0,
  });
  try {
    let sawTiny = 0;
    for (let i = 0; i < 60; i++) {
      const b = await loader.next();
      for (const mod of m.modalities) {
        check(b.labeled!.images[mod].every(Number.isFinite), "finite images");
      }
      if (b.labeled!.labels.T2w.some((v) => v === 3)) sawTiny++;
    }
    // Foreground draws pick a class uniformly, so a 3-voxel class appears in a fair share of patches.
    check(sawTiny >= 5, `tiny class in ${sawTiny} of 60 batches`);
  } finally {
    await loader.close();
  }
});
