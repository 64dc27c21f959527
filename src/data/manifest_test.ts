import { assert, assertEquals, assertRejects, assertThrows } from "./testing.ts";
import * as path from "node:path";
import { IGNORE_INDEX } from "../util/ignore.ts";
import {
  assignSplits,
  classNames,
  labelValueMap,
  loadManifest,
  type Manifest,
  modalityKind,
  saveManifest,
  selectLabeled,
} from "./manifest.ts";
import {
  importAmos,
  importDataset,
  importDecathlon,
  importMsCmrSeg,
  importNnUnetRaw,
} from "./importers.ts";

const tmp = await Deno.makeTempDir({ prefix: "comodal_manifest_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));

async function touch(p: string) {
  await Deno.mkdir(path.dirname(p), { recursive: true });
  await Deno.writeFile(p, new Uint8Array([1]));
}

function baseManifest(): Record<string, unknown> {
  return {
    task: "cardiac",
    modalities: ["C0", "LGE"],
    classes: { myo: 200, lv: 500 },
    cases: [
      {
        id: "p1",
        images: { C0: "p1_C0.nii.gz", LGE: "p1_LGE.nii.gz" },
        labels: { C0: "p1_C0_manual.nii.gz" },
        labeled: true,
        split: "train",
      },
      {
        id: "p2",
        images: { C0: "p2_C0.nii.gz", LGE: "p2_LGE.nii.gz" },
        labeled: false,
        split: "train",
      },
    ],
  };
}

Deno.test("manifest: YAML and JSON load, paths resolve, save round trip", async () => {
  const dir = `${tmp}/m1`;
  for (const f of ["p1_C0", "p1_LGE", "p1_C0_manual", "p2_C0", "p2_LGE"]) {
    await touch(`${dir}/${f}.nii.gz`);
  }
  const json = `${dir}/m.json`;
  await Deno.writeTextFile(json, JSON.stringify(baseManifest()));
  const m = await loadManifest(json);
  assertEquals(m.cases[0].images.C0, `${dir}/p1_C0.nii.gz`);
  assertEquals(classNames(m), ["background", "myo", "lv"]);
  assertEquals([...labelValueMap(m)], [[0, 0], [200, 1], [500, 2]]);
  assertEquals(modalityKind(m, "C0"), "mr");
  const yml = `${dir}/sub/m.yaml`;
  await Deno.mkdir(`${dir}/sub`);
  await saveManifest(yml, m);
  const text = await Deno.readTextFile(yml);
  assert(text.includes("../p1_C0.nii.gz"), text);
  const again = await loadManifest(yml);
  assertEquals(again.cases, m.cases);
});

Deno.test("manifest: errors name the file and the key path", async () => {
  const dir = `${tmp}/m2`;
  await Deno.mkdir(dir, { recursive: true });
  const write = async (name: string, obj: unknown) => {
    const p = `${dir}/${name}`;
    await Deno.writeTextFile(p, typeof obj === "string" ? obj : JSON.stringify(obj));
    return p;
  };
  const missing = await write("missing.json", baseManifest());
  await assertRejects(() => loadManifest(missing), Error, `Invalid manifest ${missing}`);
  const e = await assertRejects(() => loadManifest(missing));
  assert(e.message.includes("cases[0].images.C0: file not found"), e.message);
  assert(e.message.includes("cases[1].images.LGE: file not found"), e.message);
  const unknown = baseManifest();
  (unknown.cases as Record<string, unknown>[])[1].colour = "red";
  await assertRejects(
    async () => loadManifest(await write("unknown.json", unknown)),
    Error,
    'cases[1]: Unrecognized key: "colour"',
  );
  const empty = { ...baseManifest(), cases: [] };
  await assertRejects(
    async () => loadManifest(await write("empty.json", empty), { checkFiles: false }),
    Error,
    "cases: the manifest has no cases",
  );
  await assertRejects(
    async () => loadManifest(await write("blank.yaml", "")),
    Error,
    "the file is empty",
  );
  await assertRejects(
    async () => loadManifest(await write("bad.yaml", "task: [")),
    Error,
    `Cannot parse manifest ${dir}/bad.yaml`,
  );
  const badMod = baseManifest();
  (badMod.cases as { labels: Record<string, string> }[])[0].labels = { T2: "x.nii.gz" };
  await assertRejects(
    async () => loadManifest(await write("badmod.json", badMod), { checkFiles: false }),
    Error,
    "cases[0].labels.T2: not one of the modalities (C0, LGE)",
  );
  const noLab = baseManifest();
  (noLab.cases as { labeled: boolean }[])[1].labeled = true;
  await assertRejects(
    async () => loadManifest(await write("nolab.json", noLab), { checkFiles: false }),
    Error,
    "cases[1].labels: labeled is true but no label file is given",
  );
  const wrongType = { ...baseManifest(), classes: { myo: "200" } };
  await assertRejects(
    async () => loadManifest(await write("type.json", wrongType), { checkFiles: false }),
    Error,
    "classes.myo: Invalid input",
  );
  await assertRejects(
    () => loadManifest(`${dir}/none.yaml`),
    Error,
    `Cannot read manifest ${dir}/none.yaml: file not found`,
  );
  const dup = baseManifest();
  (dup.cases as { id: string }[])[1].id = "p1";
  await assertRejects(
    async () => loadManifest(await write("dup.json", dup), { checkFiles: false }),
    Error,
    'cases[1].id: duplicate case id "p1"',
  );
});

Deno.test("manifest: splits and labeled selection are seeded and complete", () => {
  const ids = Array.from({ length: 20 }, (_, i) => `c${i}`);
  const a = assignSplits(ids, { valFraction: 0.2, testFraction: 0.1, seed: 1 });
  const b = assignSplits([...ids].reverse(), { valFraction: 0.2, testFraction: 0.1, seed: 1 });
  assertEquals([...a].sort(), [...b].sort());
  const counts = { train: 0, val: 0, test: 0 };
  for (const s of a.values()) counts[s]++;
  assertEquals(counts, { train: 14, val: 4, test: 2 });
  const cases = ids.map((id, i) => ({
    id,
    images: {},
    labeled: i % 2 === 0,
    split: "train" as const,
  }));
  const pick = selectLabeled(cases, { labeled: 0.4, seed: 3 });
  assertEquals(pick.length, 4);
  assert(pick.every((id) => Number(id.slice(1)) % 2 === 0));
  assertEquals(selectLabeled(cases, { labeled: 0.4, seed: 3 }), pick);
  assertThrows(
    () => selectLabeled(cases, { labeled: 11 }),
    Error,
    "only 10 labeled training cases",
  );
});

Deno.test("importers: MS-CMRSeg tree", async () => {
  const dir = `${tmp}/mscmr`;
  for (let n = 1; n <= 6; n++) {
    for (const s of ["C0", "LGE", "T2"]) await touch(`${dir}/images/patient${n}_${s}.nii.gz`);
    if (n <= 4) {
      for (const s of ["C0", "T2"]) await touch(`${dir}/labels/patient${n}_${s}_manual.nii.gz`);
    }
    if (n <= 2) await touch(`${dir}/labels/patient${n}_LGE_manual.nii.gz`);
  }
  await touch(`${dir}/images/._patient1_C0.nii.gz`);
  await touch(`${dir}/README.txt`);
  const m = await importMsCmrSeg(dir, { valFraction: 0 });
  assertEquals(m.modalities, ["C0", "LGE", "T2"]);
  assertEquals(m.cases.length, 6);
  assertEquals(m.cases.filter((c) => c.labeled).map((c) => c.id), [
    "patient1",
    "patient2",
    "patient3",
    "patient4",
  ]);
  assertEquals(Object.keys(m.cases[0].labels!).sort(), ["C0", "LGE", "T2"]);
  assertEquals(Object.keys(m.cases[3].labels!).sort(), ["C0", "T2"]);
  assertEquals(labelValueMap(m).get(600), 3);
  assertEquals(await importDataset(dir, { valFraction: 0 }), m);
  await touch(`${dir}/labels/patient9_C0_manual.nii.gz`);
  await assertRejects(
    () => importMsCmrSeg(dir),
    Error,
    "patient9_C0_manual.nii.gz has no matching image",
  );
  await assertRejects(() => importMsCmrSeg(`${tmp}/none`), Error, "folder not found");
});

Deno.test("importers: AMOS tree (CT and MRI from different patients)", async () => {
  const dir = `${tmp}/amos`;
  const training = [], validation = [];
  for (const n of [1, 2, 3, 540, 541]) {
    const id = `amos_${String(n).padStart(4, "0")}`;
    await touch(`${dir}/imagesTr/${id}.nii.gz`);
    await touch(`${dir}/labelsTr/${id}.nii.gz`);
    training.push({ image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` });
  }
  await touch(`${dir}/imagesVa/amos_0008.nii.gz`);
  await touch(`${dir}/labelsVa/amos_0008.nii.gz`);
  validation.push({ image: "./imagesVa/amos_0008.nii.gz", label: "./labelsVa/amos_0008.nii.gz" });
  await touch(`${dir}/imagesTs/amos_0600.nii.gz`);
  await Deno.writeTextFile(
    `${dir}/dataset.json`,
    JSON.stringify({
      name: "AMOS",
      labels: { "0": "background", "1": "spleen", "2": "right kidney", "6": "liver" },
      training,
      validation,
      test: [{ image: "./imagesTs/amos_0600.nii.gz" }],
    }),
  );
  const m = await importAmos(dir);
  assertEquals(m.modalities, ["CT", "MRI"]);
  assertEquals(m.classes, { spleen: 1, right_kidney: 2, liver: 6 });
  const byId = new Map(m.cases.map((c) => [c.id, c]));
  assertEquals(Object.keys(byId.get("amos_0540")!.images), ["MRI"]);
  assertEquals(Object.keys(byId.get("amos_0001")!.images), ["CT"]);
  assertEquals(byId.get("amos_0008")!.split, "val");
  assertEquals(byId.get("amos_0600")!.split, "test");
  assertEquals(byId.get("amos_0600")!.labeled, false);
  assertEquals(modalityKind(m, "CT"), "ct");
  assertEquals((await importDataset(dir)).task, "abdomen");
  const mf = `${dir}/manifest.yaml`;
  await saveManifest(mf, m);
  assertEquals((await loadManifest(mf)).cases.length, 7);
});

Deno.test("importers: Decathlon (4-D multichannel) and nnU-Net raw (v2 and v1)", async () => {
  const dec = `${tmp}/Task01_BrainTumour`;
  await touch(`${dec}/imagesTr/BRATS_001.nii.gz`);
  await touch(`${dec}/labelsTr/BRATS_001.nii.gz`);
  await touch(`${dec}/imagesTs/BRATS_485.nii.gz`);
  await Deno.writeTextFile(
    `${dec}/dataset.json`,
    JSON.stringify({
      name: "BRATS",
      modality: { "0": "FLAIR", "1": "T1w" },
      labels: { "0": "background", "1": "edema" },
      training: [{ image: "./imagesTr/BRATS_001.nii.gz", label: "./labelsTr/BRATS_001.nii.gz" }],
      test: ["./imagesTs/BRATS_485.nii.gz"],
    }),
  );
  const d = await importDecathlon(dec);
  assertEquals(d.cases[0].images.T1w, { path: `${dec}/imagesTr/BRATS_001.nii.gz`, frame: 1 });
  assertEquals(d.cases[0].labels, { shared: `${dec}/labelsTr/BRATS_001.nii.gz` });
  assertEquals(d.cases[1].split, "test");
  assertEquals((await importDataset(dec)).modalities, ["FLAIR", "T1w"]);

  const nn = `${tmp}/Dataset005_Prostate`;
  for (const id of ["pro_00", "pro_01", "pro_02"]) {
    for (const ch of ["0000", "0001"]) await touch(`${nn}/imagesTr/${id}_${ch}.nii.gz`);
    await touch(`${nn}/labelsTr/${id}.nii.gz`);
  }
  await touch(`${nn}/imagesTs/pro_09_0000.nii.gz`);
  await touch(`${nn}/imagesTs/pro_09_0001.nii.gz`);
  await Deno.writeTextFile(
    `${nn}/dataset.json`,
    JSON.stringify({
      channel_names: { "0": "T2", "1": "ADC" },
      labels: { background: 0, PZ: 1, TZ: 2 },
      numTraining: 3,
      file_ending: ".nii.gz",
    }),
  );
  const v2 = await importNnUnetRaw(nn, { valFraction: 0.34 });
  assertEquals(v2.modalities, ["T2", "ADC"]);
  assertEquals(v2.classes, { pz: 1, tz: 2 });
  assertEquals(v2.cases.map((c) => c.id), ["pro_00", "pro_01", "pro_02", "pro_09"]);
  assertEquals(v2.cases.filter((c) => c.split === "val").length, 1);
  assertEquals(v2.cases[3].labeled, false);
  assertEquals(await importDataset(nn, { valFraction: 0.34 }), v2);
  await Deno.remove(`${nn}/imagesTr/pro_01_0001.nii.gz`);
  await assertRejects(() => importNnUnetRaw(nn), Error, "imagesTr/pro_01 lacks channel 0001 (ADC)");
  await Deno.writeTextFile(
    `${nn}/dataset.json`,
    JSON.stringify({
      channel_names: { "0": "T2", "1": "ADC" },
      labels: { background: 0, PZ: 1, TZ: 2, ignore: 3 },
    }),
  );
  await touch(`${nn}/imagesTr/pro_01_0001.nii.gz`);
  const withIgnore = await importNnUnetRaw(nn);
  assertEquals(withIgnore.classes, { pz: 1, tz: 2 });
  assertEquals(withIgnore.labelMap, { "3": "ignore" });
  assertEquals(labelValueMap(withIgnore).get(3), IGNORE_INDEX);
  await Deno.writeTextFile(
    `${nn}/dataset.json`,
    JSON.stringify({ channel_names: { "0": "T2" }, labels: { background: 0, whole: [1, 2] } }),
  );
  // nnU-Net v2 region labels: each value becomes a class of its innermost region.
  const withRegions = await importNnUnetRaw(nn);
  assertEquals(withRegions.classes, { whole_1: 1, whole_2: 2 });
  assertEquals(withRegions.regions, { whole: ["whole_1", "whole_2"] });

  const v1dir = `${tmp}/Task002_Heart`;
  await touch(`${v1dir}/imagesTr/la_003_0000.nii.gz`);
  await touch(`${v1dir}/labelsTr/la_003.nii.gz`);
  await Deno.writeTextFile(
    `${v1dir}/dataset.json`,
    JSON.stringify({
      name: "LeftAtrium",
      modality: { "0": "MRI" },
      labels: { "0": "background", "1": "left atrium" },
      training: [{ image: "./imagesTr/la_003.nii.gz", label: "./labelsTr/la_003.nii.gz" }],
      test: [],
    }),
  );
  const v1 = await importDataset(v1dir);
  assertEquals(v1.task, "leftatrium");
  assertEquals(v1.cases[0].images, { MRI: `${v1dir}/imagesTr/la_003_0000.nii.gz` });
  assertEquals(v1.classes, { left_atrium: 1 });
});

Deno.test("manifest: validation of a hand-written manifest object", async () => {
  const m = {
    ...baseManifest(),
    labelMap: { "88": "background", "221": "myo" },
  } as unknown as Manifest;
  const dir = `${tmp}/m3`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/m.yaml`, JSON.stringify(m));
  const loaded = await loadManifest(`${dir}/m.yaml`, { checkFiles: false });
  assertEquals(labelValueMap(loaded).get(221), 1);
  assertEquals(labelValueMap(loaded).get(88), 0);
});
