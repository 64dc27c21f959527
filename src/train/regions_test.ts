import assert from "node:assert/strict";
import { tensor, tidy } from "../engine.ts";
import { IGNORE_INDEX } from "../util/ignore.ts";
import {
  regionProbabilities,
  regionsToSetting,
  regionSupervisedLoss,
  resolveRegions,
} from "./regions.ts";

const BRATS = ["background", "necrotic_core", "edema", "enhancing_tumour"];

Deno.test("regions: BraTS classes get whole tumour > core > enhancing by default; others none; bad specs are errors", () => {
  const r = resolveRegions("auto", BRATS)!;
  assert.deepEqual(r.names, ["whole_tumour", "tumour_core", "enhancing_tumour"]);
  assert.deepEqual(r.classes, [[1, 2, 3], [1, 3], [3]]);
  assert.equal(resolveRegions("auto", ["background", "LV", "MYO", "RV"]), null);
  assert.equal(resolveRegions("none", BRATS), null);
  assert.deepEqual(regionsToSetting(r, BRATS), {
    whole_tumour: ["necrotic_core", "edema", "enhancing_tumour"],
    tumour_core: ["necrotic_core", "enhancing_tumour"],
    enhancing_tumour: ["enhancing_tumour"],
  });
  assert.deepEqual(resolveRegions({ ET: [3], WT: [1, 2, 3] }, BRATS)!.names, ["WT", "ET"]);
  assert.throws(
    () => resolveRegions({ A: ["liver"] }, BRATS),
    /regions.A: "liver" is not a foreground class/,
  );
  assert.throws(() => resolveRegions({ A: [1, 2], B: [2, 3] }, BRATS), /not strictly inside/);
});

Deno.test("regions: the loss is binary cross-entropy + (1 - soft Dice) per region, ignored voxels left out", () => {
  const r = resolveRegions("auto", BRATS)!;
  const n = 12;
  const z = Array.from({ length: 3 * n }, (_, i) => Math.sin(i * 1.7) * 2);
  const lab = Array.from({ length: n }, (_, i) => (i === 11 ? IGNORE_INDEX : i % 4));
  const got = tidy(() => {
    const s = regionSupervisedLoss(
      tensor(Float32Array.from(z), [1, 3, 1, 1, n]),
      tensor(Int32Array.from(lab), [1, 1, 1, 1, n], { dtype: "i32" }),
      r,
    );
    return [s.loss.item(), s.ce.item(), s.dice.item()];
  });
  let bce = 0, dice = 0;
  r.classes.forEach((members, k) => {
    let l = 0, pt = 0, ps = 0, ts = 0, cnt = 0;
    for (let i = 0; i < n; i++) {
      if (lab[i] === IGNORE_INDEX) continue;
      const s = 1 / (1 + Math.exp(-z[k * n + i]));
      const t = members.includes(lab[i]) ? 1 : 0;
      l += -(t * Math.log(s) + (1 - t) * Math.log(1 - s));
      pt += s * t;
      ps += s;
      ts += t;
      cnt++;
    }
    bce += l / cnt / 3;
    dice += (2 * pt + 1e-5) / (ps + ts + 1e-5) / 3;
  });
  assert.ok(Math.abs(got[1] - bce) < 1e-4, `BCE ${got[1]} vs ${bce}`);
  assert.ok(Math.abs(got[2] - dice) < 1e-4, `Dice ${got[2]} vs ${dice}`);
  assert.ok(Math.abs(got[0] - (bce + 1 - dice)) < 1e-4);
});

Deno.test("regions: class probabilities from region sigmoids sum to 1 and pick the innermost region above one half", () => {
  const r = resolveRegions("auto", BRATS)!;
  // Voxels: outside; whole tumour only (edema); core but not enhancing (necrotic); all three (enhancing).
  const logit = (p: number) => Math.log(p / (1 - p));
  const s = [[0.1, 0.05, 0.02], [0.9, 0.2, 0.1], [0.95, 0.8, 0.1], [0.97, 0.9, 0.85]];
  const z = new Float32Array(3 * 4);
  s.forEach((v, i) => v.forEach((p, k) => (z[k * 4 + i] = logit(p))));
  const p = tidy(() =>
    regionProbabilities(tensor(z, [1, 3, 1, 1, 4]), r, 4).toArray() as Float32Array
  );
  const want = [0, 2, 1, 3]; // background, edema, necrotic_core, enhancing_tumour
  for (let i = 0; i < 4; i++) {
    const col = [0, 1, 2, 3].map((c) => p[c * 4 + i]);
    assert.ok(Math.abs(col.reduce((a, b) => a + b, 0) - 1) < 1e-5, `voxel ${i} sums to 1`);
    assert.equal(col.indexOf(Math.max(...col)), want[i], `voxel ${i}: ${col}`);
  }
});

Deno.test("regions: an nnU-Net v2 dataset.json with region labels imports as classes by innermost region, and its regions are the default", async () => {
  const { regionLabelsFromJson, importNnUnetRaw } = await import("../data/importers.ts");
  const { writeNifti } = await import("../data/nifti.ts");
  const labels = {
    background: 0,
    "whole tumor": [1, 2, 3],
    "tumor core": [2, 3],
    "enhancing tumor": 3,
  };
  const r = regionLabelsFromJson(labels, "dataset.json")!;
  assert.deepEqual(r.classes, { whole_tumor: 1, tumor_core: 2, enhancing_tumor: 3 });
  assert.deepEqual(r.regions.tumor_core, ["tumor_core", "enhancing_tumor"]);
  assert.equal(regionLabelsFromJson({ background: 0, liver: 1 }, "d.json"), null);
  assert.throws(
    () => regionLabelsFromJson({ a: [1, 2], b: [2, 3] }, "d.json"),
    /same size; regions must be nested/,
  );
  const dir = Deno.makeTempDirSync({ prefix: "regions_nnunet_" });
  Deno.mkdirSync(`${dir}/imagesTr`);
  Deno.mkdirSync(`${dir}/labelsTr`);
  Deno.writeTextFileSync(
    `${dir}/dataset.json`,
    JSON.stringify({
      channel_names: { "0": "T1", "1": "FLAIR" },
      labels,
      regions_class_order: [1, 2, 3],
      numTraining: 1,
      file_ending: ".nii.gz",
    }),
  );
  const aff = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1] as Parameters<
    typeof writeNifti
  >[1]["affine"];
  const dims: [number, number, number] = [4, 4, 4];
  for (const c of ["0000", "0001"]) {
    await writeNifti(`${dir}/imagesTr/b1_${c}.nii.gz`, {
      data: new Float32Array(64).fill(1),
      dims,
      affine: aff,
    });
  }
  await writeNifti(`${dir}/labelsTr/b1.nii.gz`, {
    data: Uint8Array.from({ length: 64 }, (_, i) => i % 4),
    dims,
    affine: aff,
  }, { datatype: "uint8" });
  const m = await importNnUnetRaw(dir);
  assert.deepEqual(m.classes, r.classes);
  const classes = ["background", "whole_tumor", "tumor_core", "enhancing_tumor"];
  const res = resolveRegions("auto", classes, m.regions)!;
  assert.deepEqual(res.classes, [[1, 2, 3], [2, 3], [3]]);
  assert.equal(resolveRegions("none", classes, m.regions), null);
});
