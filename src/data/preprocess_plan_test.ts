import { assertEquals, assertThrows } from "./testing.ts";
import type { Fingerprint, ModalityStats } from "./fingerprint.ts";
import type { Manifest } from "./manifest.ts";
import { planCaseTransform } from "./preprocess_plan.ts";

const stats = (kind: "ct" | "mr", mean: number): ModalityStats => ({
  kind,
  spacings: [],
  sizes: [],
  mean,
  std: 2,
  p005: -10,
  p995: 90,
  min: -1000,
  max: 3000,
});
const manifest: Manifest = {
  task: "toy",
  modalities: ["CT", "T1"],
  classes: { liver: 1, spleen: 2, kidney: 3 },
  cases: [],
};
const fp: Fingerprint = {
  task: "toy",
  modalities: ["CT", "T1"],
  classes: ["background", "liver", "spleen", "kidney"],
  classVoxels: [0, 0, 0, 0],
  perModality: { CT: stats("ct", 40), T1: stats("mr", 300) },
  medianSpacing: [0.8, 0.8, 5],
  targetSpacing: [0.8, 0.8, 2.5],
  cases: 0,
};

Deno.test("plan: the fingerprint's target spacing, kinds by name, CT statistics for CT only", () => {
  const t = planCaseTransform(manifest, fp);
  assertEquals(t, {
    target: [0.8, 0.8, 2.5],
    crop: true,
    kinds: { CT: "ct", T1: "mr" },
    ctStats: { CT: { mean: 40, std: 2, p005: -10, p995: 90 } },
    k: 4,
  });
  // Kinds come from the manifest when it names them.
  const asMr = planCaseTransform({ ...manifest, modalityKinds: { CT: "mr" } }, fp);
  assertEquals([asMr.kinds, asMr.ctStats], [{ CT: "mr", T1: "mr" }, {}]);
});

Deno.test("plan: a given target spacing and crop win; a bad spacing is refused", () => {
  const t = planCaseTransform(manifest, fp, { targetSpacing: [1, 1, 3], crop: false });
  assertEquals([t.target, t.crop], [[1, 1, 3], false]);
  for (const bad of [[1, 1], [1, 0, 1], [1, NaN, 1]]) {
    assertThrows(
      () => planCaseTransform(manifest, fp, { targetSpacing: bad }),
      Error,
      "target spacing must be three positive numbers",
    );
  }
});
