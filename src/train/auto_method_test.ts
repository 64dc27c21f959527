import assert from "node:assert/strict";
import type { Manifest } from "../data/manifest.ts";
import { autoMethod } from "./data.ts";

function manifest(cases: Manifest["cases"]): Manifest {
  return {
    task: "t",
    modalities: ["FLAIR", "T1"],
    classes: { lesion: 1 },
    cases,
  } as unknown as Manifest;
}

Deno.test("method auto: early fusion for co-registered cases, CMC for unpaired or misaligned ones, supervised for one modality", () => {
  const both = { FLAIR: "a_flair.nii.gz", T1: "a_t1.nii.gz" };
  const aligned = manifest([
    { id: "a", images: both, labeled: true, aligned: true, split: "train" },
    { id: "b", images: both, labeled: false, aligned: true, split: "train" },
  ]);
  assert.equal(autoMethod(aligned, ["FLAIR", "T1"]).method, "early-fusion");
  // One case not marked co-registered (MS-CMRSeg, orbit scans) is enough for CMC.
  const mis = manifest([
    { id: "a", images: both, labeled: true, aligned: true, split: "train" },
    { id: "b", images: both, labeled: true, split: "train" },
  ]);
  const r = autoMethod(mis, ["FLAIR", "T1"]);
  assert.equal(r.method, "cmc");
  assert.match(r.why, /1 of 2 cases .*first: b/);
  // Unpaired (AMOS: CT and MRI from different patients): CMC.
  const unpaired = manifest([
    { id: "ct1", images: { FLAIR: "ct1.nii.gz" }, labeled: true, aligned: true, split: "train" },
    { id: "mr1", images: { T1: "mr1.nii.gz" }, labeled: true, aligned: true, split: "train" },
  ]);
  assert.equal(autoMethod(unpaired, ["FLAIR", "T1"]).method, "cmc");
  // Only the modalities the run uses count.
  assert.equal(autoMethod(unpaired, ["FLAIR"]).method, "supervised");
});
