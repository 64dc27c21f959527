import { assert, assertEquals, assertRejects } from "./testing.ts";
import { writeNifti } from "./nifti.ts";
import {
  loadCaseRecord,
  loadPlan,
  PREPROCESS_VERSION,
  preprocessDataset,
} from "./prepared_cache.ts";
import { DIMS, inBody, LPS, makeCase, manifestFor, testDir, volume } from "./toy_cases_testing.ts";

const tmp = await testDir("comodal_cache_");

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

Deno.test("preprocess: a folder of another format version is refused, naming what to do", async () => {
  const dir = `${tmp}/version`;
  await makeCase(dir, "a");
  const out = `${tmp}/version_out`;
  await preprocessDataset(manifestFor(dir, ["a"]), { outDir: out });
  assertEquals((await loadPlan(out)).version, PREPROCESS_VERSION);
  const file = `${out}/preprocess.json`;
  const plan = JSON.parse(await Deno.readTextFile(file));
  await Deno.writeTextFile(file, JSON.stringify({ ...plan, version: PREPROCESS_VERSION - 1 }));
  await assertRejects(
    () => loadPlan(out),
    Error,
    `format version ${PREPROCESS_VERSION - 1}, expected ${PREPROCESS_VERSION} (preprocess again)`,
  );
});
