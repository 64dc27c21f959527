import { assert, assertAlmostEquals, assertEquals, assertRejects } from "./testing.ts";
import { writeNifti } from "./nifti.ts";
import type { Manifest } from "./manifest.ts";
import {
  fingerprint,
  labelsToOriginal,
  loadCaseRecord,
  loadPlan,
  preprocessDataset,
  probabilitiesToOriginal,
} from "./preprocess.ts";

const tmp = await Deno.makeTempDir({ prefix: "comodal_pre_" });
globalThis.addEventListener(
  "unload",
  () => Deno.env.get("KEEP") ? console.log(tmp) : Deno.removeSync(tmp, { recursive: true }),
);

// LPS-stored volumes (x runs left, y posterior) with 1 x 1.5 x 4 mm voxels, a body block and two organs.
const DIMS = [20, 16, 6] as const;
const LPS = [-1, 0, 0, 30, 0, -1.5, 0, 40, 0, 0, 4, -10, 0, 0, 0, 1];

function volume(f: (x: number, y: number, z: number) => number): Float32Array {
  const d = new Float32Array(DIMS[0] * DIMS[1] * DIMS[2]);
  let i = 0;
  for (let z = 0; z < DIMS[2]; z++) {
    for (let y = 0; y < DIMS[1]; y++) {
      for (let x = 0; x < DIMS[0]; x++) d[i++] = f(x, y, z);
    }
  }
  return d;
}
const inBody = (x: number, y: number, z: number) =>
  x >= 3 && x < 17 && y >= 2 && y < 14 && z >= 1 && z < 5;
const organ = (x: number, y: number, z: number) =>
  !inBody(x, y, z) ? 0 : x < 8 ? 10 : x > 12 ? 20 : 0;

async function makeCase(
  dir: string,
  id: string,
  opts: {
    labelValue?: (v: number) => number;
    nan?: boolean;
    labelDims?: number[];
    labelAffine?: number[];
  } = {},
) {
  await Deno.mkdir(dir, { recursive: true });
  const mr = volume((
    x,
    y,
    z,
  ) => (inBody(x, y, z) ? 100 + organ(x, y, z) * 3 + ((x * 7 + y * 3 + z) % 5) : 0));
  if (opts.nan) mr[5] = NaN;
  const ct = volume((x, y, z) => (inBody(x, y, z) ? 40 + organ(x, y, z) * 2 + (x % 3) : -1000));
  ct[2 * 320 + 5 * 20 + 5] = 3000; // an outlier inside the body, to be clipped
  const lab = volume((x, y, z) => (opts.labelValue ?? ((v) => v))(organ(x, y, z)));
  await writeNifti(`${dir}/${id}_MR.nii.gz`, { data: mr, dims: DIMS, affine: LPS });
  await writeNifti(`${dir}/${id}_CT.nii.gz`, { data: ct, dims: DIMS, affine: LPS }, {
    datatype: "int16",
  });
  const ld = opts.labelDims ?? DIMS;
  const labData = ld === DIMS ? lab : new Float32Array(ld[0] * ld[1] * ld[2]);
  await writeNifti(`${dir}/${id}_label.nii.gz`, {
    data: labData,
    dims: ld,
    affine: opts.labelAffine ?? LPS,
  }, { datatype: "float32" });
  return { mr, ct, lab };
}

function manifestFor(dir: string, ids: string[], labeled = true): Manifest {
  return {
    task: "toy",
    modalities: ["MR", "CT"],
    classes: { left: 10, right: 20 },
    root: dir,
    cases: ids.map((id) => ({
      id,
      images: { MR: `${dir}/${id}_MR.nii.gz`, CT: `${dir}/${id}_CT.nii.gz` },
      labels: { shared: `${dir}/${id}_label.nii.gz` },
      labeled,
      split: "train" as const,
      aligned: true,
    })),
  };
}

Deno.test("preprocess: RAS, resampling, body crop, normalisation, label mapping and mapping back", async () => {
  const dir = `${tmp}/ok`;
  const a = await makeCase(dir, "a", { labelValue: (v) => v + (v ? 1e-6 : 0) }); // float labels off by 1e-6
  await makeCase(dir, "b");
  const m = manifestFor(dir, ["a", "b"]);
  const fp = await fingerprint(m);
  assertEquals(fp.classes, ["background", "left", "right"]);
  assertEquals(fp.medianSpacing, [1, 1.5, 4]);
  assert(fp.classVoxels[1] > 0 && fp.classVoxels[2] > 0);
  assert(fp.perModality.CT.p995 < 3000, `CT p99.5 ${fp.perModality.CT.p995}`);
  const out = `${tmp}/ok_out`;
  const seen: string[] = [];
  const plan = await preprocessDataset(m, {
    outDir: out,
    onProgress: (_d, _t, label) => seen.push(label),
  });
  assert(seen.includes("preprocess b"));
  assertEquals(plan.targetSpacing, [1, 1.5, 4]);
  const rec = await loadCaseRecord(out, "a");
  const mr = rec.modalities.MR, ct = rec.modalities.CT;
  // Body box: 14 x 12 x 4 voxels; common grid for an aligned case.
  assertEquals(mr.dims, [14, 12, 4]);
  assertEquals(ct.dims, mr.dims);
  assertEquals(mr.affine, ct.affine);
  // RAS: positive diagonal.
  assert(mr.affine[0] > 0 && mr.affine[5] > 0 && mr.affine[10] > 0);
  const data = new Float32Array((await Deno.readFile(`${out}/cases/${mr.file}`)).buffer);
  let s = 0, s2 = 0;
  for (const v of data) {
    s += v;
    s2 += v * v;
  }
  assertAlmostEquals(s / data.length, 0, 1e-4);
  assertAlmostEquals(s2 / data.length, 1, 1e-3);
  const ctData = new Float32Array((await Deno.readFile(`${out}/cases/${ct.file}`)).buffer);
  const maxCt = Math.max(...ctData);
  assertAlmostEquals(maxCt, (ct.norm.clip![1] - ct.norm.mean) / ct.norm.std, 1e-4);
  const lab = new Uint8Array(await Deno.readFile(`${out}/cases/${mr.labelFile}`));
  assertEquals(new Set(lab), new Set([0, 1, 2]));
  // Back to the original grid: exactly the original labels (0/10/20 -> 0/1/2).
  const back = labelsToOriginal(lab, mr);
  const cls = (v: number) => (Math.round(v) === 0 ? 0 : Math.round(v) === 10 ? 1 : 2);
  assertEquals(Array.from(back), Array.from(a.lab, cls));
  // Probabilities: one-hot of the labels maps back to one-hot, background 1 outside the crop.
  const n = lab.length, k = 3;
  const probs = new Float32Array(k * n);
  for (let i = 0; i < n; i++) probs[lab[i] * n + i] = 1;
  const pb = probabilitiesToOriginal(probs, k, mr);
  const on = a.lab.length;
  assertEquals(pb[0], 1); // corner voxel is outside the body box
  for (let i = 0; i < on; i++) {
    const want = cls(a.lab[i]);
    assertAlmostEquals(pb[want * on + i], 1, 1e-6);
  }
  const planAgain = await loadPlan(out);
  assertEquals(planAgain.cases.map((c) => c.labels), [["MR", "CT"], ["MR", "CT"]]);
});

Deno.test("preprocess: cache skips unchanged cases and redoes changed ones", async () => {
  const dir = `${tmp}/cache`;
  await makeCase(dir, "a");
  await makeCase(dir, "b");
  const m = manifestFor(dir, ["a", "b"]);
  const out = `${tmp}/cache_out`;
  await preprocessDataset(m, { outDir: out, targetSpacing: [2, 2, 4] });
  const t0a = (await Deno.stat(`${out}/cases/a_MR.f32`)).mtime!.getTime();
  const t0b = (await Deno.stat(`${out}/cases/b_MR.f32`)).mtime!.getTime();
  await new Promise((r) => setTimeout(r, 20));
  await preprocessDataset(m, { outDir: out, targetSpacing: [2, 2, 4] });
  assertEquals((await Deno.stat(`${out}/cases/a_MR.f32`)).mtime!.getTime(), t0a);
  // Change case b's MR file: only b is redone (MR statistics are per volume, so a stays valid).
  const mr = volume((x, y, z) => (inBody(x, y, z) ? 50 + x : 0));
  await writeNifti(`${dir}/b_MR.nii.gz`, { data: mr, dims: DIMS, affine: LPS });
  await preprocessDataset(m, { outDir: out, targetSpacing: [2, 2, 4] });
  assertEquals((await Deno.stat(`${out}/cases/a_MR.f32`)).mtime!.getTime(), t0a);
  assert((await Deno.stat(`${out}/cases/b_MR.f32`)).mtime!.getTime() > t0b);
  // New settings redo everything.
  const plan = await preprocessDataset(m, { outDir: out, targetSpacing: [1, 1.5, 4] });
  assert((await Deno.stat(`${out}/cases/a_MR.f32`)).mtime!.getTime() > t0a);
  assertEquals((await loadCaseRecord(out, "a")).modalities.MR.dims, [14, 12, 4]);
  assertEquals(plan.targetSpacing, [1, 1.5, 4]);
});

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

Deno.test("preprocess + cases: a case labelled only in a modality the run does not use loads as unlabeled", async () => {
  const { loadPreprocessedCases } = await import("./cases.ts");
  const dir = `${tmp}/partial`;
  await makeCase(dir, "p");
  const m = manifestFor(dir, ["p"]);
  m.cases[0].labels = { MR: `${dir}/p_label.nii.gz` };
  m.cases[0].aligned = false;
  await preprocessDataset(m, { outDir: `${tmp}/partial_out` });
  const both = await loadPreprocessedCases(`${tmp}/partial_out`);
  assertEquals([both.labeled.length, both.unlabeled.length], [1, 0]);
  assertEquals(Object.keys(both.labeled[0].labels), ["MR"]);
  const ctOnly = await loadPreprocessedCases(`${tmp}/partial_out`, { modalities: ["CT"] });
  assertEquals([ctOnly.labeled.length, ctOnly.unlabeled.length], [0, 1]);
  assertEquals(Object.keys(ctOnly.unlabeled[0].volumes), ["CT"]);
  assertEquals("labels" in ctOnly.unlabeled[0], false);
  const none = await loadPreprocessedCases(`${tmp}/partial_out`, { modalities: ["PET"] });
  assertEquals([none.labeled.length, none.unlabeled.length], [0, 0]);
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

Deno.test("resampleLabels: halving the resolution keeps a label's centre in place (no half-voxel shift)", async () => {
  const { resampleLabels } = await import("./preprocess.ts");
  const n = 32;
  const lab = new Uint8Array(n * n * n);
  const c = [13.5, 16.5, 17.5];
  for (let z = 0; z < n; z++) {
    for (let y = 0; y < n; y++) {
      for (let x = 0; x < n; x++) {
        if ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= 36) lab[(z * n + y) * n + x] = 1;
      }
    }
  }
  const aff = [1, 0, 0, 5, 0, 1, 0, -3, 0, 0, 1, 2, 0, 0, 0, 1] as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const centroid = (l: ArrayLike<number>, dims: number[], a: number[]) => {
    const s = [0, 0, 0];
    let k = 0;
    for (let z = 0; z < dims[2]; z++) {
      for (let y = 0; y < dims[1]; y++) {
        for (let x = 0; x < dims[0]; x++) {
          if (l[(z * dims[1] + y) * dims[0] + x] !== 1) continue;
          for (let r = 0; r < 3; r++) {
            s[r] += a[r * 4] * x + a[r * 4 + 1] * y + a[r * 4 + 2] * z + a[r * 4 + 3];
          }
          k++;
        }
      }
    }
    return s.map((v) => v / k);
  };
  const fine = centroid(lab, [n, n, n], aff);
  const r = resampleLabels(lab, [n, n, n], aff, [2, 2, 2]);
  const coarse = centroid(r.labels, r.dims, r.affine as unknown as number[]);
  for (let a = 0; a < 3; a++) {
    assert(Math.abs(coarse[a] - fine[a]) < 0.2, `axis ${a}: centre ${coarse[a]} vs ${fine[a]} mm`);
  }
});
