import { assert, assertEquals, assertRejects } from "./testing.ts";
import { writeNifti } from "./nifti.ts";
import { preprocessDataset } from "./prepared_cache.ts";
import { LPS, makeCase, manifestFor, testDir } from "./toy_cases_testing.ts";

const tmp = await testDir("comodal_read_");

Deno.test("preprocess: bad inputs name the case, the file and the problem", async () => {
  const dir = `${tmp}/bad`;
  await makeCase(dir, "badval", { labelValue: (v) => (v === 20 ? 30 : v) });
  await assertRejects(
    () => preprocessDataset(manifestFor(dir, ["badval"]), { outDir: `${tmp}/bad_out1` }),
    Error,
    `Cannot preprocess case badval: label ${dir}/badval_label.nii.gz has value 30, which is not in the task's label map (0, 10, 20)`,
  );
  await makeCase(dir, "frac", { labelValue: (v) => (v === 20 ? 20.4 : v) });
  await assertRejects(
    () => preprocessDataset(manifestFor(dir, ["frac"]), { outDir: `${tmp}/bad_out2` }),
    Error,
    "has value 20.4",
  );
  await makeCase(dir, "shape", { labelDims: [20, 16, 5] });
  await assertRejects(
    () => preprocessDataset(manifestFor(dir, ["shape"]), { outDir: `${tmp}/bad_out3` }),
    Error,
    `label ${dir}/shape_label.nii.gz has shape 20x16x5 but image ${dir}/shape_MR.nii.gz has 20x16x6`,
  );
  const shifted = [...LPS];
  shifted[3] += 5;
  await makeCase(dir, "aff", { labelAffine: shifted });
  await assertRejects(
    () => preprocessDataset(manifestFor(dir, ["aff"]), { outDir: `${tmp}/bad_out4` }),
    Error,
    "has an affine that differs from image",
  );
  await makeCase(dir, "nan", { nan: true });
  await assertRejects(
    () => preprocessDataset(manifestFor(dir, ["nan"]), { outDir: `${tmp}/bad_out5` }),
    Error,
    `Cannot preprocess case nan: ${dir}/nan_MR.nii.gz has 1 NaN/Inf voxel(s) (first at voxel 5,0,0 = NaN)`,
  );
  await makeCase(dir, "inf", { nan: true });
  const inf = await (await import("./nifti.ts")).readNifti(`${dir}/inf_MR.nii.gz`);
  inf.data[5] = 0;
  inf.data[7] = -Infinity;
  await writeNifti(`${dir}/inf_MR.nii.gz`, inf);
  await assertRejects(
    () => preprocessDataset(manifestFor(dir, ["inf"]), { outDir: `${tmp}/bad_out8` }),
    Error,
    "has 1 NaN/Inf voxel(s) (first at voxel 7,0,0 = -Infinity)",
  );
  const plan = await preprocessDataset(manifestFor(dir, ["nan"]), {
    outDir: `${tmp}/bad_out6`,
    nonFinite: "zero",
  });
  assertEquals(plan.cases.length, 1);
  // A 4-D file where a 3-D image is expected.
  await writeNifti(`${dir}/four_MR.nii.gz`, {
    data: new Float32Array(2 * 2 * 2 * 2),
    dims: [2, 2, 2],
    frames: 2,
    affine: LPS,
  });
  const m4 = manifestFor(dir, ["nan"]);
  m4.cases[0].images.MR = `${dir}/four_MR.nii.gz`;
  await assertRejects(
    () => preprocessDataset(m4, { outDir: `${tmp}/bad_out7` }),
    Error,
    `Cannot read ${dir}/four_MR.nii.gz: header says 4 dimensions (2x2x2x2), expected 3`,
  );
});

Deno.test("preprocess: NaN in a label file names the label file and what to do (nonFinite=zero is for images)", async () => {
  const dir = `${tmp}/nanlab`;
  await makeCase(dir, "nl");
  const { readNifti } = await import("./nifti.ts");
  const file = `${dir}/nl_label.nii.gz`;
  const lab = await readNifti(file);
  lab.data[7] = NaN;
  await writeNifti(file, lab, { datatype: "float32" });
  for (const nonFinite of ["error", "zero"] as const) {
    const err = await assertRejects(
      () =>
        preprocessDataset(manifestFor(dir, ["nl"]), {
          outDir: `${tmp}/nanlab_${nonFinite}`,
          nonFinite,
        }),
      Error,
      `Cannot preprocess case nl: label file ${file} has 1 NaN/Inf voxel(s) (first at voxel 7,0,0 = NaN); ` +
        `nonFinite=zero applies to images only: fix the label file ${file}`,
    );
    assert(!/--set nonFinite=zero|--non-finite zero/.test(err.message), err.message);
    assert(/labelMap/.test(err.message), err.message);
  }
});

Deno.test("preprocess + sampler: values mapped to 'ignore' become IGNORE_INDEX in patches", async () => {
  const { loadPreprocessedCases } = await import("./cases.ts");
  const { PatchSampler } = await import("./sampler.ts");
  const { IGNORE_INDEX } = await import("../util/ignore.ts");
  const { Rng } = await import("./rng.ts");
  const dir = `${tmp}/ignore`;
  await makeCase(dir, "g");
  const m = manifestFor(dir, ["g"]);
  m.classes = { left: 10 };
  m.labelMap = { "20": "ignore" };
  const plan = await preprocessDataset(m, { outDir: `${tmp}/ignore_out` });
  assertEquals(plan.classes, ["background", "left"]);
  assertEquals(plan.fingerprint.classVoxels.length, 2);
  const data = await loadPreprocessedCases(`${tmp}/ignore_out`);
  const c = data.labeled[0];
  assertEquals(new Set(c.labels.MR), new Set([0, 1, 255]));
  const s = new PatchSampler({ patchSize: [4, 12, 14], modalities: ["MR", "CT"], augment: false });
  const p = s.sampleLabeled(c, new Rng(1), { forceForeground: false }); // the whole volume
  const values = new Set(p.labels.MR);
  assert(
    values.has(IGNORE_INDEX) && values.has(1) && !values.has(255),
    `patch labels ${[...values]}`,
  );
});
