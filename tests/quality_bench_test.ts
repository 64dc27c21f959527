import assert from "node:assert/strict";
import { foldManifest, parseQualityArgs, qualityTable } from "../bench/quality_bench.ts";
import type { Manifest } from "../src/data/manifest.ts";

const manifest: Manifest = {
  task: "T",
  modalities: ["A", "B"],
  classes: { lesion: 1 },
  cases: ["c1", "c2", "c3", "c4", "c5"].map((id) => ({
    id,
    images: { A: `${id}_A.nii.gz`, B: `${id}_B.nii.gz` },
    labels: { shared: `${id}_seg.nii.gz` },
    labeled: true,
    split: "train" as const,
  })),
};

Deno.test("quality bench: each fold hides the labels of its unlabeled and test cases; folds rotate the test cases", () => {
  const seen = new Set<string>();
  for (let f = 0; f < 3; f++) {
    const r = foldManifest(manifest, f, { labeled: 2, unlabeled: 2, test: 1 });
    assert.equal(r.test.length, 1);
    seen.add(r.test[0]);
    const byId = new Map(r.manifest.cases.map((c) => [c.id, c]));
    for (const id of r.labeled) {
      assert.ok(byId.get(id)!.labels && byId.get(id)!.labeled, `${id} labeled`);
    }
    for (const id of [...r.unlabeled, ...r.test]) {
      const c = byId.get(id)!;
      assert.equal(c.labels, undefined, `${id}: no label in the fold's manifest`);
      assert.equal(c.labeled, false);
      assert.ok(!JSON.stringify(c).includes("_seg"), `${id}: the label path appears nowhere`);
    }
    assert.equal(byId.get(r.test[0])!.split, "test");
    assert.ok(
      r.manifest.cases.every((c) =>
        Object.values(c.images).every((p) => typeof p === "string" && p.startsWith("/"))
      ),
    );
  }
  assert.equal(seen.size, 3, "three different test cases");
  assert.throws(
    () => foldManifest(manifest, 0, { labeled: 5, unlabeled: 0, test: 1 }),
    /need at least 6/,
  );
});

Deno.test("quality bench: arguments and the table (mean ± sd, undefined HD95 counted)", () => {
  const a = parseQualityArgs({ data: "/d", seeds: "0,1", methods: "cmc,early-fusion", time: "5m" });
  assert.deepEqual(a.seeds, [0, 1]);
  assert.deepEqual(a.methods, ["cmc", "early-fusion"]);
  assert.throws(() => parseQualityArgs({}), /--data/);
  assert.throws(
    () => parseQualityArgs({ data: "/d", recipe: "fast" }),
    /not defaults or reference/,
  );
  const rec = (dice: number, hd: number | null) => ({
    recipe: "defaults",
    method: "cmc",
    output: "fused",
    fold: 0,
    seed: 0,
    seconds: 10,
    peakMiB: 100,
    summary: { lesion: { dice, hd95: hd, hd95_undefined: hd === null ? 1 : 0 } },
  });
  const t = qualityTable([rec(0.5, 10), rec(0.7, null)]);
  const row = t.rows[0];
  assert.equal(row[t.columns.indexOf("Dice lesion")], "0.600 ± 0.141");
  assert.equal(row[t.columns.indexOf("HD95 lesion (undef.)")], "10.000 ± 0.000 (1)");
});
