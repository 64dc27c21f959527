import { assert, assertEquals, assertRejects } from "./testing.ts";
import { synthesize } from "./synth.ts";
import { loadManifest } from "./manifest.ts";
import { readNifti } from "./nifti.ts";
import { importDataset } from "./importers.ts";

const tmp = await Deno.makeTempDir({ prefix: "comodal_synth_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));

async function digest(files: string[]): Promise<string[]> {
  return await Promise.all(files.map(async (f) => {
    const h = await crypto.subtle.digest("SHA-256", await Deno.readFile(f));
    return Array.from(new Uint8Array(h).slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join(
      "",
    );
  }));
}

Deno.test("synth: cardiac phantoms in the MS-CMRSeg layout, deterministic by seed, independent of workers", async () => {
  const a = await synthesize("cardiac", {
    outDir: `${tmp}/a`,
    cases: 2,
    seed: 5,
    sizeScale: 0.35,
    workers: 0,
  });
  const b = await synthesize("cardiac", {
    outDir: `${tmp}/b`,
    cases: 2,
    seed: 5,
    sizeScale: 0.35,
    workers: 2,
  });
  const c = await synthesize("cardiac", {
    outDir: `${tmp}/c`,
    cases: 1,
    seed: 6,
    sizeScale: 0.35,
    workers: 0,
  });
  assertEquals(a.files.length, 12);
  assertEquals(await digest(a.files), await digest(b.files));
  const dc = await digest(c.files);
  assert(
    (await digest(a.files)).filter((d, i) => d !== dc[i]).length >= 6,
    "another seed gives other images",
  );
  const m = await loadManifest(a.manifestPath);
  assertEquals(m.modalities, ["C0", "LGE", "T2"]);
  assertEquals(m.cases.length, 2);
  assertEquals((await importDataset(`${tmp}/a`)).cases.map((x) => x.id), ["patient1", "patient2"]);
  // Anisotropic short-axis stacks with all three classes labelled in each sequence.
  const img = await readNifti(`${tmp}/a/patient1_C0.nii.gz`);
  assert(img.spacing[2] > 7.9 && img.spacing[2] < 8.1, `slice thickness ${img.spacing}`);
  for (const s of ["C0", "LGE", "T2"]) {
    const lab = await readNifti(`${tmp}/a/patient1_${s}_manual.nii.gz`);
    assertEquals(
      [...new Set(lab.data)].sort((x, y) => x - y),
      [0, 200, 500, 600],
      `${s} label values`,
    );
  }
  // Sequences differ in grid (T2 thicker slices) and are not voxel-aligned.
  const t2 = await readNifti(`${tmp}/a/patient1_T2.nii.gz`);
  assert(t2.spacing[2] > 11);
});

Deno.test("synth: contrasts differ between sequences (blood bright in bSSFP, dark in T2)", async () => {
  const dir = `${tmp}/a`;
  const mean = async (seq: string, value: number) => {
    const img = await readNifti(`${dir}/patient1_${seq}.nii.gz`);
    const lab = await readNifti(`${dir}/patient1_${seq}_manual.nii.gz`);
    let s = 0, n = 0;
    for (let i = 0; i < lab.data.length; i++) {
      if (lab.data[i] === value) {
        s += img.data[i];
        n++;
      }
    }
    return s / n;
  };
  assert(
    (await mean("C0", 500)) > 1.8 * (await mean("C0", 200)),
    "bSSFP: blood brighter than myocardium",
  );
  assert((await mean("T2", 500)) < (await mean("T2", 200)), "T2: blood darker than myocardium");
  assert((await mean("LGE", 500)) > (await mean("LGE", 200)), "LGE: nulled myocardium");
});

Deno.test("synth: abdomen (AMOS: CT and MRI of different subjects) and orbit (paired CT/MRI)", async () => {
  const ab = await synthesize("abdomen", {
    outDir: `${tmp}/abd`,
    cases: 2,
    seed: 1,
    sizeScale: 0.5,
    workers: 0,
  });
  const m = await loadManifest(ab.manifestPath);
  assertEquals(m.modalities, ["CT", "MRI"]);
  assertEquals(m.cases.map((c) => Object.keys(c.images)[0]), ["CT", "MRI"]);
  const ct = await readNifti(`${tmp}/abd/imagesTr/amos_0001.nii.gz`);
  assert(Math.min(...ct.data) < -800 && Math.max(...ct.data) > 300, "CT in Hounsfield units");
  const lab = await readNifti(`${tmp}/abd/labelsTr/amos_0001.nii.gz`);
  for (const v of [1, 2, 3, 6, 8]) assert(lab.data.includes(v), `abdomen label ${v}`);
  const orb = await synthesize("orbit", {
    outDir: `${tmp}/orb`,
    cases: 1,
    seed: 1,
    sizeScale: 0.5,
    workers: 0,
  });
  const om = await loadManifest(orb.manifestPath);
  assertEquals(Object.keys(om.cases[0].images), ["CT", "MRI"]);
  const seg = await readNifti(`${tmp}/orb/orbit_001/mr_seg.nii.gz`);
  assertEquals([...new Set(seg.data)].sort(), [0, 1, 2, 3, 4]);
  await assertRejects(
    () => synthesize("brain" as never, { outDir: `${tmp}/x`, cases: 1 }),
    Error,
    'Unknown synthetic task "brain"',
  );
  await assertRejects(
    () => synthesize("cardiac", { outDir: `${tmp}/x`, cases: 0 }),
    Error,
    "--cases must be a positive integer",
  );
});
