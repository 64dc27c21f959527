import {
  deepStrictEqual as assertEquals,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert";
import { basename, join } from "node:path";
import { writeNifti } from "../data/nifti.ts";
import {
  evaluateNiftiCases,
  formatSummaryTable,
  loadLabelMap,
  pairCases,
  parseLabelMap,
} from "./evaluate_files.ts";

function close(got: number, want: number, tol = 1e-6, msg = ""): void {
  if (!(Math.abs(got - want) <= tol)) {
    throw new Error(`${msg} expected ${want} +- ${tol}, got ${got}`);
  }
}

/** NIfTI order: x fastest. Fills value inside [lo, hi) per axis (x, y, z). */
function boxXyz(
  dims: number[],
  lo: number[],
  hi: number[],
  value: number,
  into?: Float32Array,
): Float32Array {
  const out = into ?? new Float32Array(dims[0] * dims[1] * dims[2]);
  for (let z = lo[2]; z < hi[2]; z++) {
    for (let y = lo[1]; y < hi[1]; y++) {
      for (let x = lo[0]; x < hi[0]; x++) out[(z * dims[1] + y) * dims[0] + x] = value;
    }
  }
  return out;
}

const AFFINE = (
  sx: number,
  sy: number,
  sz: number,
) => [sx, 0, 0, -10, 0, sy, 0, 5, 0, 0, sz, 2, 0, 0, 0, 1];

Deno.test("parseLabelMap: inline, regions, JSON and YAML; errors name the problem", () => {
  assertEquals(parseLabelMap("LV=1, MYO=2,heart=1+2+3"), [
    { name: "LV", labels: [1] },
    { name: "MYO", labels: [2] },
    { name: "heart", labels: [1, 2, 3] },
  ]);
  assertEquals(parseLabelMap('{"liver": 1, "kidneys": [2, 3]}'), [{ name: "liver", labels: [1] }, {
    name: "kidneys",
    labels: [2, 3],
  }]);
  assertEquals(parseLabelMap("liver: 1\nkidneys: [2, 3]\n"), [{ name: "liver", labels: [1] }, {
    name: "kidneys",
    labels: [2, 3],
  }]);
  assertThrows(() => parseLabelMap("LV"), /entry "LV" is not name=value/);
  assertThrows(() => parseLabelMap("LV=1.5"), /class "LV" has value/);
  assertThrows(() => parseLabelMap("LV=1,LV=2"), /appears twice/);
});

Deno.test("evaluate NIfTI folders: pairing by case id, float labels, known cube distances, table", async () => {
  const dir = await Deno.makeTempDir({ prefix: "comodal_eval_" });
  try {
    const predDir = join(dir, "pred"), refDir = join(dir, "ref");
    await Deno.mkdir(predDir);
    await Deno.mkdir(refDir);
    const dims = [8, 8, 10]; // x, y, z; spacing 0.8 x 0.8 x 3 mm
    const affine = AFFINE(0.8, 0.8, 3);
    // Case a: label 1 cubes offset by 2 slices along z (known HD95 6 mm and ASSD), label 2 only in
    // the reference (one empty mask -> Infinity). Reference stored as float with a tiny error.
    const refA = boxXyz(dims, [2, 2, 2], [6, 6, 6], 1.0000001);
    boxXyz(dims, [0, 0, 9], [2, 2, 10], 2, refA);
    const predA = boxXyz(dims, [2, 2, 4], [6, 6, 8], 1);
    await writeNifti(join(refDir, "caseA_gt.nii.gz"), { data: refA, dims, affine });
    await writeNifti(join(predDir, "caseA.nii.gz"), { data: predA, dims, affine }, {
      datatype: "uint8",
    });
    // Case b: perfect prediction of both labels.
    const refB = boxXyz(dims, [1, 1, 1], [4, 5, 3], 1);
    boxXyz(dims, [5, 5, 5], [7, 7, 8], 2, refB);
    await writeNifti(join(refDir, "caseB.nii"), { data: refB, dims, affine }, {
      datatype: "int16",
    });
    await writeNifti(join(predDir, "caseB.nii.gz"), { data: refB, dims, affine }, {
      datatype: "uint8",
    });
    await writeNifti(join(predDir, "extra.nii.gz"), { data: refB, dims, affine }, {
      datatype: "uint8",
    });

    const { pairs, unmatched } = await pairCases(predDir, refDir);
    assertEquals(pairs.map((p) => p.id), ["caseA", "caseB"]);
    assertEquals(unmatched, ["extra.nii.gz"]);
    const seen: string[] = [];
    const report = await evaluateNiftiCases(pairs, {
      onProgress: (d, t, id) => seen.push(`${d}/${t} ${id}`),
    });
    assertEquals(seen, ["1/2 caseA", "2/2 caseB"]);
    assertEquals(report.settings.classes, [{ name: "1", labels: [1] }, { name: "2", labels: [2] }]);
    const a = report.cases[0].classes;
    close(a["1"].dice, 0.5);
    close(a["1"].hd95, 6);
    close(a["1"].assd, (16 * 6 + 12 * 3 + 4 * 0.8) / 56);
    assertEquals([a["2"].dice, a["2"].hd95, a["2"].assd], [0, Infinity, Infinity]);
    const b = report.cases[1].classes;
    assertEquals([b["1"].dice, b["1"].hd95, b["2"].assd], [1, 0, 0]);
    close(report.summary.perClass["1"].dice.mean, 0.75);
    close(report.summary.perClass["1"].hd95.mean, 3);
    assertEquals(report.summary.perClass["2"].hd95.nonFinite, 1);
    close(report.summary.perClass["2"].hd95.mean, 0);
    const table = formatSummaryTable(report.summary);
    if (!/^1\s+0\.7500 ± 0\.2500\s+3\.00 ± 3\.00/m.test(table)) throw new Error(`table:\n${table}`);

    // Named regions from a label map file.
    await Deno.writeTextFile(join(dir, "labels.yaml"), "cube: 1\nall: [1, 2]\n");
    const named = await evaluateNiftiCases(pairs, {
      classes: await loadLabelMap(join(dir, "labels.yaml")),
    });
    assertEquals(Object.keys(named.summary.perClass), ["cube", "all"]);
    close(named.cases[1].classes.all.dice, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate NIfTI: size mismatch, non-integer labels and missing predictions are errors", async () => {
  const dir = await Deno.makeTempDir({ prefix: "comodal_eval_" });
  try {
    const p = join(dir, "p.nii.gz"), r = join(dir, "r.nii.gz"), f = join(dir, "f.nii.gz");
    await writeNifti(p, { data: new Float32Array(24), dims: [2, 3, 4], affine: AFFINE(1, 1, 1) });
    await writeNifti(r, { data: new Float32Array(30), dims: [2, 3, 5], affine: AFFINE(1, 1, 1) });
    await writeNifti(f, {
      data: new Float32Array(24).fill(0.5),
      dims: [2, 3, 4],
      affine: AFFINE(1, 1, 1),
    });
    const one = await pairCases(p, r);
    assertEquals(one.pairs, [{ id: "r", pred: p, ref: r }]);
    await assertRejects(
      evaluateNiftiCases(one.pairs),
      /prediction .*p\.nii\.gz is 2x3x4, reference .*r\.nii\.gz is 2x3x5/,
    );
    await assertRejects(
      evaluateNiftiCases([{ id: "f", pred: p, ref: f }]),
      /f\.nii\.gz as a label image: voxel 0 holds 0\.5/,
    );
    await assertRejects(pairCases(dir, p), /both be files or both folders/);
    const refDir = join(dir, "refs");
    await Deno.mkdir(refDir);
    await writeNifti(join(refDir, "zz.nii.gz"), {
      data: new Float32Array(24),
      dims: [2, 3, 4],
      affine: AFFINE(1, 1, 1),
    });
    await assertRejects(
      pairCases(dir, refDir),
      /no prediction in .* for 1 reference file\(s\): zz\.nii\.gz/,
    );
    await assertRejects(pairCases(join(dir, "nope"), refDir), /prediction .*nope does not exist/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pairCases: a shared label pairs with its only per-modality prediction; two need --modality", async () => {
  const dir = await Deno.makeTempDir({ prefix: "comodal_eval_unpaired_" });
  try {
    const preds = join(dir, "preds"), refs = join(dir, "refs");
    await Deno.mkdir(preds);
    await Deno.mkdir(refs);
    const img = { data: new Float32Array(24), dims: [2, 3, 4], affine: AFFINE(1, 1, 1) };
    for (const f of ["amos_0001.nii.gz", "amos_0600.nii.gz"]) await writeNifti(join(refs, f), img);
    // Unpaired AMOS-like outputs: a CT case and an MRI case, one modality each.
    await writeNifti(join(preds, "amos_0001_CT.nii.gz"), img);
    await writeNifti(join(preds, "amos_0600_MRI.nii.gz"), img);
    const { pairs, unmatched } = await pairCases(preds, refs);
    assertEquals(pairs.map((p) => [p.id, basename(p.pred)]), [
      ["amos_0001", "amos_0001_CT.nii.gz"],
      ["amos_0600", "amos_0600_MRI.nii.gz"],
    ]);
    assertEquals(unmatched, []);
    // A case with predictions for two modalities is ambiguous without --modality.
    await writeNifti(join(preds, "amos_0001_MRI.nii.gz"), img);
    await assertRejects(pairCases(preds, refs), /choose one with --modality/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
