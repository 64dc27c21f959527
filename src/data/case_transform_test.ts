import { assert, assertAlmostEquals, assertEquals } from "./testing.ts";
import { readNifti } from "./nifti.ts";
import {
  labelsToOriginal,
  probabilitiesToOriginal,
  rasImage,
  transformCase,
} from "./case_transform.ts";
import { loadCaseRecord, loadPlan, preprocessDataset } from "./prepared_cache.ts";
import { planCaseTransform } from "./preprocess_plan.ts";
import { makeCase, manifestFor, testDir } from "./toy_cases_testing.ts";

const tmp = await testDir("comodal_transform_");

Deno.test("preprocess: RAS, resampling, body crop, normalisation, label mapping and mapping back", async () => {
  const dir = `${tmp}/ok`;
  const a = await makeCase(dir, "a", { labelValue: (v) => v + (v ? 1e-6 : 0) }); // float labels off by 1e-6
  await makeCase(dir, "b");
  const m = manifestFor(dir, ["a", "b"]);
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

Deno.test("transformCase: a case in memory gives the volumes preprocessing caches, bit for bit", async () => {
  const dir = `${tmp}/mem`;
  await makeCase(dir, "a");
  const m = manifestFor(dir, ["a"]);
  const out = `${tmp}/mem_out`;
  const plan = await preprocessDataset(m, { outDir: out });
  const rec = await loadCaseRecord(out, "a");
  const inputs = await Promise.all(["MR", "CT"].map(async (mod) => ({
    modality: mod,
    image: rasImage(await readNifti(`${dir}/a_${mod}.nii.gz`)),
    label: null,
  })));
  const t = transformCase({ aligned: true }, inputs, planCaseTransform(m, plan.fingerprint));
  for (const mod of ["MR", "CT"]) {
    const r = rec.modalities[mod];
    // Without labels the crop is the body box alone; here the labels lie inside the body.
    assertEquals(t[mod].grid.dims, r.dims);
    assertEquals(t[mod].grid.affine, r.affine);
    assertEquals(t[mod].grid.source.cropLo, r.source.cropLo);
    assertEquals(t[mod].norm, r.norm);
    assertEquals(t[mod].padValue, r.padValue);
    const cached = new Float32Array((await Deno.readFile(`${out}/cases/${r.file}`)).buffer);
    assertEquals(Array.from(t[mod].data), Array.from(cached));
    assertEquals(t[mod].label, null);
    assertEquals(t[mod].classVoxels, null);
  }
});

Deno.test("resampleLabels: halving the resolution keeps a label's centre in place (no half-voxel shift)", async () => {
  const { resampleLabels } = await import("./case_transform.ts");
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
