import { assert, assertEquals } from "./testing.ts";
import { fingerprint } from "./fingerprint.ts";
import { makeCase, manifestFor, testDir } from "./toy_cases_testing.ts";

const tmp = await testDir("comodal_fp_");

Deno.test("fingerprint: classes, median spacing, class voxels and CT percentiles of foreground voxels", async () => {
  const dir = `${tmp}/ok`;
  await makeCase(dir, "a", { labelValue: (v) => v + (v ? 1e-6 : 0) }); // float labels off by 1e-6
  await makeCase(dir, "b");
  const m = manifestFor(dir, ["a", "b"]);
  const fp = await fingerprint(m);
  assertEquals(fp.classes, ["background", "left", "right"]);
  assertEquals(fp.medianSpacing, [1, 1.5, 4]);
  assert(fp.classVoxels[1] > 0 && fp.classVoxels[2] > 0);
  assert(fp.perModality.CT.p995 < 3000, `CT p99.5 ${fp.perModality.CT.p995}`);
  // No strong anisotropy: the default target spacing is the median.
  assertEquals(fp.targetSpacing, [1, 1.5, 4]);
  assertEquals(fp.cases, 2);
  assertEquals(fp.perModality.CT.kind, "ct");
  assertEquals(fp.perModality.MR.kind, "mr");
  assertEquals(fp.perModality.MR.spacings, [[1, 1.5, 4], [1, 1.5, 4]]);
  // Statistics over labelled voxels only: CT organs are 60..62 and 80..82 HU (the outlier aside).
  assert(fp.perModality.CT.p005 >= 60, `CT p0.5 ${fp.perModality.CT.p005}`);
});
