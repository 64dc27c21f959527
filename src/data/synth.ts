/**
 * Synthetic phantoms for the three tasks, written as NIfTI in the layout of the real datasets and
 * deterministic by seed:
 * - cardiac: MS-CMRSeg 2019 (patientN_C0/LGE/T2.nii.gz + _manual labels, values 200/500/600),
 *   short-axis stacks ~1.25 x 1.25 x 8 mm, per-sequence breath-hold offsets and slice positions;
 * - abdomen: AMOS 2022 (imagesTr/labelsTr + dataset.json; CT ids below 500, MRI ids from 500, CT
 *   and MRI from different synthetic subjects);
 * - orbit: paired, unregistered CT and MRI per subject (orbit_NNN/ct.nii.gz, mr.nii.gz and labels).
 * Every task also gets a manifest.yaml next to its files.
 */
import * as path from "node:path";
import {
  fromLinear,
  type Mat3,
  type Mat4,
  mul3,
  rotation3,
  transpose3,
  type Vec3,
} from "./affine.ts";
import { writeNifti } from "./nifti.ts";
import { render, type Scene, type Shape } from "./phantom.ts";
import { Rng } from "./rng.ts";
import { importAmos, importMsCmrSeg } from "./importers.ts";
import { assignSplits, type Manifest, saveManifest } from "./manifest.ts";
import type { ProgressFn } from "./progress.ts";

export type SynthTask = "cardiac" | "abdomen" | "orbit";
export const SYNTH_TASKS: readonly SynthTask[] = ["cardiac", "abdomen", "orbit"];

export interface SynthOptions {
  outDir: string;
  cases: number;
  seed?: number;
  onProgress?: ProgressFn;
  /** Scale of the in-plane grid (1 = defaults such as 128 x 128 x 12 for cardiac). */
  sizeScale?: number;
  /** Worker threads (default: up to 4, one per core; 0 or 1 = this thread). Output does not depend on it. */
  workers?: number;
}

export interface SynthResult {
  task: SynthTask;
  outDir: string;
  manifestPath: string;
  files: string[];
}

/** Writes `cases` synthetic cases of `task` into `outDir` (created) and a manifest.yaml. */
export async function synthesize(task: SynthTask, opts: SynthOptions): Promise<SynthResult> {
  if (!SYNTH_TASKS.includes(task)) {
    throw new Error(`Unknown synthetic task "${task}" (choose ${SYNTH_TASKS.join(", ")})`);
  }
  if (!(Number.isInteger(opts.cases) && opts.cases >= 1)) {
    throw new Error(`synth: --cases must be a positive integer, got ${opts.cases}`);
  }
  const outDir = path.resolve(opts.outDir);
  await Deno.mkdir(outDir, { recursive: true });
  const files: string[] = [];
  const seed = opts.seed ?? 0;
  const results = await runCases(task, outDir, seed, opts);
  for (const r of results) files.push(...r);
  let manifest: Manifest;
  if (task === "cardiac") {
    manifest = await importMsCmrSeg(outDir, { seed });
    // Only the cases written now (a reused folder may hold more from an earlier run).
    const ids = new Set(Array.from({ length: opts.cases }, (_, i) => `patient${i + 1}`));
    manifest.cases = manifest.cases.filter((c) => ids.has(c.id));
    manifest.description = `Synthetic cardiac phantoms (seed ${seed}) in the MS-CMRSeg 2019 layout`;
  } else if (task === "abdomen") {
    const entries = Array.from({ length: opts.cases }, (_, i) => {
      const id = abdomenId(i);
      return { image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` };
    });
    const dataset = {
      name: "AMOS",
      description: `Synthetic abdominal CT/MRI phantoms (seed ${seed}) in the AMOS 2022 layout`,
      modality: { "0": "CT" },
      labels: Object.fromEntries(AMOS_LABELS.map((n, i) => [String(i), n])),
      numTraining: entries.length,
      training: entries,
      validation: [],
      test: [],
    };
    await Deno.writeTextFile(path.join(outDir, "dataset.json"), JSON.stringify(dataset, null, 2));
    manifest = await importAmos(outDir, { seed });
  } else {
    const cases: Manifest["cases"] = [];
    for (let i = 0; i < opts.cases; i++) {
      const id = orbitId(i);
      cases.push({
        id,
        images: { CT: `${id}/ct.nii.gz`, MRI: `${id}/mr.nii.gz` },
        labels: { CT: `${id}/ct_seg.nii.gz`, MRI: `${id}/mr_seg.nii.gz` },
        labeled: true,
        split: "train",
        aligned: false,
      });
    }
    const splits = assignSplits(cases.map((c) => c.id), { seed });
    for (const c of cases) c.split = splits.get(c.id)!;
    manifest = {
      task: "orbit",
      description: `Synthetic orbit CT/MRI phantoms (seed ${seed}); paired but not registered`,
      modalities: ["CT", "MRI"],
      modalityKinds: { CT: "ct", MRI: "mr" },
      classes: { globe: 1, optic_nerve: 2, extraocular_muscle: 3, orbital_fat: 4 },
      root: outDir,
      cases,
    };
  }
  const manifestPath = path.join(outDir, "manifest.yaml");
  await saveManifest(manifestPath, manifest);
  return { task, outDir, manifestPath, files };
}

function abdomenId(i: number): string {
  const mri = i % 2 === 1;
  return `amos_${String(mri ? 500 + Math.ceil(i / 2) : 1 + i / 2).padStart(4, "0")}`;
}

function orbitId(i: number): string {
  return `orbit_${String(i + 1).padStart(3, "0")}`;
}

/** Generates case `index` of a task (deterministic in seed and index); returns the files written. */
export async function synthCase(
  task: SynthTask,
  outDir: string,
  index: number,
  seed: number,
  scale = 1,
): Promise<string[]> {
  const rng = new Rng(seed, task, index);
  if (task === "cardiac") return await cardiacCase(outDir, index + 1, rng, scale);
  if (task === "abdomen") {
    return await abdomenCase(outDir, abdomenId(index), index % 2 === 1, rng, scale);
  }
  return await orbitCase(outDir, orbitId(index), rng, scale);
}

/** Runs the cases on a small worker pool (in this thread with workers = 0). */
async function runCases(
  task: SynthTask,
  outDir: string,
  seed: number,
  opts: SynthOptions,
): Promise<string[][]> {
  const n = opts.cases;
  const out: string[][] = new Array(n);
  const scale = opts.sizeScale ?? 1;
  const nWorkers = Math.min(n, opts.workers ?? Math.min(4, navigator.hardwareConcurrency || 1));
  let done = 0;
  const label = (i: number) =>
    `${task} ${
      task === "cardiac" ? `patient${i + 1}` : task === "abdomen" ? abdomenId(i) : orbitId(i)
    }`;
  if (nWorkers <= 1) {
    for (let i = 0; i < n; i++) {
      out[i] = await synthCase(task, outDir, i, seed, scale);
      opts.onProgress?.(++done, n, label(i));
    }
    return out;
  }
  let next = 0;
  const workers = Array.from(
    { length: nWorkers },
    () => new Worker(new URL("./synth_worker.ts", import.meta.url).href, { type: "module" }),
  );
  try {
    await Promise.all(workers.map((w) =>
      new Promise<void>((resolve, reject) => {
        const give = () => {
          if (next >= n) return resolve();
          w.postMessage({ task, outDir, index: next++, seed, scale });
        };
        w.onmessage = (e: MessageEvent<{ index: number; files?: string[]; error?: string }>) => {
          if (e.data.error) return reject(new Error(e.data.error));
          out[e.data.index] = e.data.files!;
          opts.onProgress?.(++done, n, label(e.data.index));
          give();
        };
        w.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`synth worker failed: ${e.message}`));
        };
        give();
      })
    ));
  } finally {
    for (const w of workers) w.terminate();
  }
  return out;
}

function frameToRot(frame: Mat3): Mat3 {
  // frame columns = local axes in world; rot = world -> local = transpose.
  return transpose3(frame);
}

function col(m: Mat3, j: number): Vec3 {
  return [m[j], m[3 + j], m[6 + j]];
}

function add(a: readonly number[], b: readonly number[], s = 1): Vec3 {
  return [a[0] + s * b[0], a[1] + s * b[1], a[2] + s * b[2]];
}

function wobble(rng: Rng, amp: number): Shape["wobble"] {
  return [2, 3].map((k) => ({
    k,
    amp: amp * rng.uniform(0.3, 1) / k * 2,
    phase: rng.uniform(0, 2 * Math.PI),
  }));
}

function stackAffine(rot: Mat3, spacing: Vec3, dims: Vec3, centre: Vec3): Mat4 {
  const l = mul3(rot, [spacing[0], 0, 0, 0, spacing[1], 0, 0, 0, spacing[2]]);
  const half = dims.map((d) => (d - 1) / 2);
  const off = [0, 1, 2].map((r) =>
    centre[r] - (l[r * 3] * half[0] + l[r * 3 + 1] * half[1] + l[r * 3 + 2] * half[2])
  );
  return fromLinear(l, off);
}

async function writePair(
  imgPath: string,
  labPath: string,
  dims: Vec3,
  affine: Mat4,
  image: Float32Array,
  label: Int16Array,
  imgOpts: { datatype: "int16" | "float32"; gain: number; offset?: number; sclSlope?: number },
): Promise<string[]> {
  const data = new Float32Array(image.length);
  const slope = imgOpts.sclSlope ?? 1;
  for (let i = 0; i < image.length; i++) {
    const v = image[i] * imgOpts.gain + (imgOpts.offset ?? 0);
    data[i] = imgOpts.datatype === "int16"
      ? Math.max(-32768 * slope, Math.min(32767 * slope, Math.round(v / slope) * slope))
      : v;
  }
  await writeNifti(imgPath, { data, dims, affine }, {
    datatype: imgOpts.datatype,
    sclSlope: slope,
  });
  await writeNifti(labPath, { data: label, dims, affine }, { datatype: "int16" });
  return [imgPath, labPath];
}

// ---------------------------------------------------------------------------------------------
// Cardiac (MS-CMRSeg)

const CARDIAC_CONTRAST: Record<string, Record<string, number>> = {
  // bSSFP: bright blood, dark myocardium; LGE: nulled myocardium, bright scar, grey blood;
  // T2 (black blood): bright oedema/scar, dark blood, fat suppressed.
  C0: {
    fat: 0.75,
    tissue: 0.36,
    lung: 0.03,
    liver: 0.4,
    blood: 0.95,
    myo: 0.3,
    rvwall: 0.32,
    scar: 0.33,
    papillary: 0.34,
    aorta: 0.9,
  },
  LGE: {
    fat: 0.6,
    tissue: 0.25,
    lung: 0.03,
    liver: 0.3,
    blood: 0.62,
    myo: 0.08,
    rvwall: 0.12,
    scar: 0.85,
    papillary: 0.1,
    aorta: 0.6,
  },
  T2: {
    fat: 0.15,
    tissue: 0.36,
    lung: 0.04,
    liver: 0.28,
    blood: 0.12,
    myo: 0.38,
    rvwall: 0.34,
    scar: 0.6,
    papillary: 0.36,
    aorta: 0.1,
  },
};

function cardiacScene(rng: Rng, frame: Mat3, heartC: Vec3): { scene: Scene; scar: boolean } {
  const u = col(frame, 0), v = col(frame, 1), w = col(frame, 2);
  const R = rng.uniform(19, 27),
    e = rng.uniform(0.85, 1.12),
    t = rng.uniform(7, 11),
    L = rng.uniform(62, 82);
  const rot = frameToRot(frame);
  const base = add(heartC, w, rng.uniform(28, 38)); // base plane centre; apex towards -w
  const clip = { axis: 2, sign: 1 as const, offset: 0 };
  const shapes: Shape[] = [];
  // Thorax (world RAS): subcutaneous fat, body, lungs, liver, descending aorta.
  const body = add(heartC, [rng.uniform(-10, 10), rng.uniform(-40, -25), 0]);
  shapes.push({ kind: "ellipsoid", tissue: "fat", centre: body, radii: [165, 125, 260] });
  shapes.push({
    kind: "ellipsoid",
    tissue: "tissue",
    centre: body,
    radii: [152, 112, 250],
    wobble: wobble(rng, 0.03),
  });
  for (const side of [-1, 1]) {
    shapes.push({
      kind: "ellipsoid",
      tissue: "lung",
      centre: add(heartC, [side * rng.uniform(70, 85), rng.uniform(-35, -20), rng.uniform(10, 25)]),
      radii: [rng.uniform(50, 62), 70, 110],
      wobble: wobble(rng, 0.05),
    });
  }
  shapes.push({
    kind: "ellipsoid",
    tissue: "liver",
    centre: add(heartC, [-rng.uniform(30, 50), -10, -rng.uniform(85, 100)]),
    radii: [110, 90, 55],
  });
  const ao = add(heartC, [rng.uniform(5, 20), -rng.uniform(50, 62), 0]);
  shapes.push({
    kind: "tube",
    tissue: "aorta",
    centre: add(ao, [0, 0, -120]),
    end: add(ao, [0, 0, 120]),
    radius: rng.uniform(10, 13),
  });
  // Heart: pericardial fat, RV (wall, blood), LV myocardium and blood pool, papillary muscles, scar.
  shapes.push({
    kind: "ellipsoid",
    tissue: "fat",
    centre: base,
    radii: [R + t + 6, R * e + t + 5, L + t + 5],
    rot,
    clip: { ...clip, offset: 3 },
    wobble: wobble(rng, 0.12),
  });
  // Above the valve plane: atrium and outflow tract, blood like the ventricles but not labelled
  // (as in MS-CMRSeg, where labels stop at the base), so basal slices are ambiguous.
  shapes.push({
    kind: "ellipsoid",
    tissue: "atrium",
    centre: add(base, w, rng.uniform(18, 26)),
    radii: [R * rng.uniform(0.9, 1.2), R * rng.uniform(1.1, 1.4), rng.uniform(18, 24)],
    rot,
    wobble: wobble(rng, 0.1),
  });
  const alpha = rng.uniform(0.5, 1.3) + Math.PI; // RV direction in the short-axis plane
  const dir = add([0, 0, 0], add(add([0, 0, 0], u, Math.cos(alpha)), v, Math.sin(alpha)));
  const rvDepth = R * rng.uniform(1.1, 1.5), rvWidth = R * rng.uniform(1.7, 2.1);
  const rvC = add(base, dir, R + t - rvDepth * 0.2);
  const rvFrame: Mat3 = mul3(frame, rotation3(0, 0, alpha));
  const rvRot = frameToRot(rvFrame);
  const rvL = L * rng.uniform(0.75, 0.9);
  shapes.push({
    kind: "ellipsoid",
    tissue: "rvwall",
    centre: rvC,
    radii: [rvDepth + 3.5, rvWidth + 3.5, rvL + 3.5],
    rot: rvRot,
    clip,
  });
  shapes.push({
    kind: "ellipsoid",
    tissue: "blood",
    centre: rvC,
    radii: [rvDepth, rvWidth, rvL],
    rot: rvRot,
    clip,
    wobble: wobble(rng, 0.05),
  });
  shapes.push({
    kind: "ellipsoid",
    tissue: "myo",
    centre: base,
    radii: [R + t, R * e + t, L + t * 1.2],
    rot,
    clip,
    wobble: wobble(rng, 0.04),
  });
  shapes.push({
    kind: "ellipsoid",
    tissue: "lvblood",
    centre: base,
    radii: [R, R * e, L],
    rot,
    clip,
    wobble: wobble(rng, 0.05),
  });
  for (const a of [rng.uniform(0.3, 1.0), rng.uniform(2.4, 3.2)]) {
    const p0 = add(add(base, u, 0.7 * R * Math.cos(a)), v, 0.7 * R * e * Math.sin(a));
    shapes.push({
      kind: "tube",
      tissue: "papillary",
      centre: add(p0, w, -0.3 * L),
      end: add(p0, w, -0.65 * L),
      radius: rng.uniform(2.5, 4),
    });
  }
  const scar = rng.chance(0.7);
  if (scar) {
    const a0 = rng.uniform(0, 2 * Math.PI), width = rng.uniform(0.6, 2.0);
    const z0 = rng.uniform(0.1, 0.5) * L;
    shapes.push({
      kind: "ellipsoid",
      tissue: "scar",
      onlyIn: "myo",
      centre: add(base, w, -z0),
      radii: [R + t * rng.uniform(0.4, 1.0) + 1, R * e + t + 1, rng.uniform(0.2, 0.45) * L],
      rot,
      sector: [a0, a0 + width],
    });
  }
  return {
    scene: { shapes, labels: { myo: 200, scar: 200, lvblood: 500, papillary: 500, blood: 600 } },
    scar,
  };
}

async function cardiacCase(dir: string, n: number, rng: Rng, scale: number): Promise<string[]> {
  // Short-axis stack orientation (oblique to the scanner axes), the heart frame slightly tilted.
  const stackRot = rotation3(
    rng.uniform(-0.75, -0.45),
    rng.uniform(0.35, 0.65),
    rng.uniform(-0.3, 0.3),
  );
  const heartFrame = mul3(
    stackRot,
    rotation3(rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12), rng.uniform(0, 2 * Math.PI)),
  );
  const stackCentre: Vec3 = [rng.uniform(-20, 20), rng.uniform(-30, 10), rng.uniform(-10, 30)];
  const heartC = add(
    stackCentre,
    mul3v(stackRot, [rng.uniform(-12, 12), rng.uniform(-12, 12), rng.uniform(-4, 4)]),
  );
  // Flesh out the frame so the heart (centre at base - ~half length) sits in the stack.
  const heartCentreShifted = add(heartC, col(heartFrame, 2), -20);
  const { scene } = cardiacScene(rng, heartFrame, heartCentreShifted);
  const inPlane = Math.round((124 + 2 * rng.int(5)) * scale);
  const seqs = [
    {
      name: "C0",
      spacing: [1.25, 1.25, 8] as Vec3,
      dims: [inPlane, inPlane, 11 + rng.int(3)] as Vec3,
      shift: 0,
      jitter: 0.8,
      noise: 0.04,
      dt: "int16" as const,
      slope: 1,
    },
    {
      name: "LGE",
      spacing: [1.25, 1.25, 8] as Vec3,
      dims: [inPlane, inPlane, 10 + rng.int(4)] as Vec3,
      shift: 5,
      jitter: 1.5,
      noise: 0.06,
      dt: "int16" as const,
      slope: 0.5,
    },
    {
      name: "T2",
      spacing: [1.4, 1.4, 12] as Vec3,
      dims: [Math.round(inPlane * 0.9), Math.round(inPlane * 0.9), 6 + rng.int(3)] as Vec3,
      shift: 5,
      jitter: 1.5,
      noise: 0.05,
      dt: "float32" as const,
      slope: 1,
    },
  ];
  const files: string[] = [];
  for (const s of seqs) {
    // Slice position offset along the stack normal, and breath-hold displacement of the anatomy.
    const centre = add(
      stackCentre,
      col(stackRot, 2),
      s.shift ? rng.uniform(-s.spacing[2] / 2, s.spacing[2] / 2) : 0,
    );
    const affine = stackAffine(stackRot, s.spacing, s.dims, centre);
    const bh: Vec3 = s.shift
      ? [rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-s.shift, s.shift)]
      : [0, 0, 0];
    const perSlice = Array.from(
      { length: s.dims[2] },
      () =>
        [
          rng.uniform(-1, 1) * s.jitter,
          rng.uniform(-1, 1) * s.jitter,
          rng.uniform(-1, 1) * s.jitter,
        ] as Vec3,
    );
    const { image, label } = render(scene, {
      dims: s.dims,
      affine,
      contrast: contrastWithBlood(CARDIAC_CONTRAST[s.name]),
      shift: (k) => add(bh, perSlice[k]),
      noise: s.noise,
      noiseKind: "rician",
      bias: 0.2,
      rng,
      subSlices: 3,
    });
    files.push(
      ...(await writePair(
        path.join(dir, `patient${n}_${s.name}.nii.gz`),
        path.join(dir, `patient${n}_${s.name}_manual.nii.gz`),
        s.dims,
        affine,
        image,
        label,
        { datatype: s.dt, gain: rng.uniform(700, 1500), sclSlope: s.slope },
      )),
    );
  }
  return files;
}

function contrastWithBlood(c: Record<string, number>): Record<string, number> {
  return { ...c, lvblood: c.blood, atrium: c.blood };
}

function mul3v(m: Mat3, v: readonly number[]): Vec3 {
  return [
    m[0] * v[0] + m[1] * v[1] + m[2] * v[2],
    m[3] * v[0] + m[4] * v[1] + m[5] * v[2],
    m[6] * v[0] + m[7] * v[1] + m[8] * v[2],
  ];
}

// ---------------------------------------------------------------------------------------------
// Abdomen (AMOS)

export const AMOS_LABELS = [
  "background",
  "spleen",
  "right kidney",
  "left kidney",
  "gall bladder",
  "esophagus",
  "liver",
  "stomach",
  "aorta",
  "postcava",
  "pancreas",
  "right adrenal gland",
  "left adrenal gland",
  "duodenum",
  "bladder",
  "prostate/uterus",
];

const ABDOMEN_CONTRAST = {
  CT: {
    __background: -1000,
    fat: -100,
    muscle: 50,
    liver: 105,
    spleen: 112,
    kidney: 170,
    gallbladder: 12,
    aorta: 185,
    ivc: 140,
    bone: 650,
    stomach: 35,
    gas: -900,
    pancreas: 92,
    bowel: 85,
  },
  MRI: {
    __background: 0,
    fat: 0.85,
    muscle: 0.25,
    liver: 0.3,
    spleen: 0.62,
    kidney: 0.55,
    gallbladder: 0.95,
    aorta: 0.05,
    ivc: 0.1,
    bone: 0.35,
    stomach: 0.42,
    gas: 0.02,
    pancreas: 0.45,
    bowel: 0.5,
  },
};

function abdomenScene(rng: Rng): Scene {
  const j = (s: number) => rng.uniform(-s, s);
  const k = () => rng.uniform(0.85, 1.15);
  const shapes: Shape[] = [];
  const bw = rng.uniform(140, 170), bd = rng.uniform(100, 125);
  shapes.push({
    kind: "ellipsoid",
    tissue: "fat",
    centre: [0, 0, 0],
    radii: [bw, bd, 400],
    wobble: wobble(rng, 0.03),
  });
  shapes.push({
    kind: "ellipsoid",
    tissue: "muscle",
    centre: [0, -5, 0],
    radii: [bw - rng.uniform(12, 25), bd - rng.uniform(10, 22), 400],
  });
  shapes.push({
    kind: "ellipsoid",
    tissue: "fat",
    centre: [0, 5, 0],
    radii: [bw - 35, bd - 30, 400],
  });
  for (let b = 0; b < 6; b++) {
    shapes.push({
      kind: "ellipsoid",
      tissue: "bowel",
      centre: [j(70), rng.uniform(-10, 60), rng.uniform(-90, -20)],
      radii: [20 * k(), 18 * k(), 25 * k()],
      wobble: wobble(rng, 0.1),
    });
  }
  shapes.push({
    kind: "tube",
    tissue: "bone",
    centre: [0, -bd + 45, -200],
    end: [0, -bd + 45, 200],
    radius: 20 * k(),
  });
  const liverRot = frameToRot(rotation3(j(0.15), j(0.15), j(0.3)));
  shapes.push({
    kind: "ellipsoid",
    tissue: "liver",
    centre: [65 + j(10), 5 + j(10), 55 + j(10)],
    radii: [75 * k(), 85 * k(), 70 * k()],
    rot: liverRot,
    wobble: wobble(rng, 0.08),
  });
  shapes.push({
    kind: "ellipsoid",
    tissue: "gallbladder",
    centre: [45 + j(8), 45 + j(8), 10 + j(8)],
    radii: [13 * k(), 22 * k(), 14 * k()],
    rot: frameToRot(rotation3(0.4, 0, j(0.4))),
  });
  shapes.push({
    kind: "ellipsoid",
    tissue: "spleen",
    centre: [-80 + j(8), -35 + j(8), 60 + j(10)],
    radii: [28 * k(), 55 * k(), 45 * k()],
    rot: frameToRot(rotation3(0, 0, 0.5 + j(0.3))),
    wobble: wobble(rng, 0.06),
  });
  for (const side of [1, -1]) {
    shapes.push({
      kind: "ellipsoid",
      tissue: "kidney",
      centre: [side * (60 + j(6)), -55 + j(6), (side > 0 ? -10 : 0) + j(8)],
      radii: [24 * k(), 28 * k(), 50 * k()],
      rot: frameToRot(rotation3(0.2 * side, 0, side * (0.3 + j(0.1)))),
      wobble: wobble(rng, 0.05),
    });
  }
  shapes.push({
    kind: "ellipsoid",
    tissue: "stomach",
    centre: [-45 + j(10), 30 + j(10), 60 + j(10)],
    radii: [40 * k(), 32 * k(), 48 * k()],
    wobble: wobble(rng, 0.1),
  });
  shapes.push({
    kind: "ellipsoid",
    tissue: "gas",
    onlyIn: "stomach",
    centre: [-45, 50, 75],
    radii: [30, 20, 25],
  });
  const ax = -12 + j(4);
  shapes.push({
    kind: "tube",
    tissue: "aorta",
    centre: [ax, -bd + 82, -200],
    end: [ax, -bd + 80, 200],
    radius: 10 * k(),
  });
  shapes.push({
    kind: "tube",
    tissue: "ivc",
    centre: [22 + j(4), -bd + 80, -200],
    end: [24 + j(4), -bd + 85, 200],
    radius: 11 * k(),
  });
  shapes.push({
    kind: "tube",
    tissue: "pancreas",
    centre: [15 + j(6), -5 + j(6), 15 + j(6)],
    end: [-75 + j(8), -25 + j(8), 35 + j(8)],
    radius: 9 * k(),
  });
  return {
    shapes,
    labels: {
      spleen: 1,
      kidney: 0,
      gallbladder: 4,
      liver: 6,
      stomach: 7,
      gas: 7,
      aorta: 8,
      ivc: 9,
      pancreas: 10,
    },
  };
}

async function abdomenCase(
  dir: string,
  id: string,
  mri: boolean,
  rng: Rng,
  scale: number,
): Promise<string[]> {
  const scene = abdomenScene(rng);
  // Left and right kidneys get their own labels: split the kidney shapes by side.
  const shapes = scene.shapes.map((
    s,
  ) => (s.tissue === "kidney" ? { ...s, tissue: s.centre[0] > 0 ? "rkidney" : "lkidney" } : s));
  const sc: Scene = { shapes, labels: { ...scene.labels, rkidney: 2, lkidney: 3 } };
  const contrast = { ...ABDOMEN_CONTRAST[mri ? "MRI" : "CT"] } as Record<string, number>;
  contrast.rkidney = contrast.kidney;
  contrast.lkidney = contrast.kidney;
  let dims: Vec3, affine: Mat4;
  if (!mri) {
    dims = [Math.round(96 * scale), Math.round(80 * scale), 40];
    const sp: Vec3 = [3.5 / scale, 3.5 / scale, 5];
    affine = stackAffine([-1, 0, 0, 0, -1, 0, 0, 0, 1], sp, dims, [
      rng.uniform(-10, 10),
      rng.uniform(-10, 10),
      rng.uniform(0, 30),
    ]);
  } else {
    dims = [Math.round(88 * scale), Math.round(72 * scale), 30];
    const sp: Vec3 = [3.8 / scale, 3.8 / scale, 6.5];
    affine = stackAffine(
      rotation3(rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)),
      sp,
      dims,
      [rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(0, 30)],
    );
  }
  await Deno.mkdir(path.join(dir, "imagesTr"), { recursive: true });
  await Deno.mkdir(path.join(dir, "labelsTr"), { recursive: true });
  const { image, label } = render(sc, {
    dims,
    affine,
    contrast,
    noise: mri ? 0.04 : 18,
    noiseKind: mri ? "rician" : "gaussian",
    bias: mri ? 0.25 : 0,
    rng,
    subSlices: 3,
  });
  return await writePair(
    path.join(dir, "imagesTr", `${id}.nii.gz`),
    path.join(dir, "labelsTr", `${id}.nii.gz`),
    dims,
    affine,
    image,
    label,
    mri ? { datatype: "int16", gain: rng.uniform(800, 2000) } : { datatype: "int16", gain: 1 },
  );
}

// ---------------------------------------------------------------------------------------------
// Orbit

const ORBIT_CONTRAST = {
  CT: {
    __background: -1000,
    tissue: 35,
    brain: 30,
    bone: 950,
    ofat: -90,
    globe: 12,
    lens: 95,
    nerve: 32,
    muscle: 55,
    sinus: -950,
  },
  MRI: {
    __background: 0,
    tissue: 0.4,
    brain: 0.45,
    bone: 0.05,
    ofat: 0.9,
    globe: 0.12,
    lens: 0.3,
    nerve: 0.5,
    muscle: 0.34,
    sinus: 0.02,
  },
};

function orbitScene(rng: Rng): Scene {
  const j = (s: number) => rng.uniform(-s, s);
  const k = () => rng.uniform(0.9, 1.1);
  const shapes: Shape[] = [];
  shapes.push({
    kind: "ellipsoid",
    tissue: "tissue",
    centre: [0, 0, 0],
    radii: [78 * k(), 100 * k(), 90],
    wobble: wobble(rng, 0.02),
  });
  shapes.push({ kind: "ellipsoid", tissue: "bone", centre: [0, -10, 0], radii: [70, 88, 80] });
  shapes.push({ kind: "ellipsoid", tissue: "brain", centre: [0, -20, 8], radii: [64, 72, 70] });
  shapes.push({ kind: "ellipsoid", tissue: "sinus", centre: [0, 45, -18], radii: [14, 18, 12] });
  const thick = rng.uniform(1, 2); // muscle enlargement (thyroid eye disease)
  for (const side of [-1, 1]) {
    const gc: Vec3 = [side * (32 + j(2)), 62 + j(3), j(2)];
    const apex: Vec3 = [side * (14 + j(2)), 12 + j(3), j(2)];
    const axis = add(gc, apex, -1);
    const len = Math.hypot(...axis);
    // Bony orbit and its fat cone: ellipsoids along the globe-apex axis.
    const yaw = Math.atan2(axis[0], axis[1]);
    const rot = frameToRot(rotation3(0, 0, -yaw));
    const mid = add(apex, axis, 0.55);
    shapes.push({
      kind: "ellipsoid",
      tissue: "bone",
      centre: mid,
      radii: [22, len * 0.62, 20],
      rot,
    });
    shapes.push({
      kind: "ellipsoid",
      tissue: "ofat",
      centre: mid,
      radii: [18, len * 0.58, 16.5],
      rot,
      wobble: wobble(rng, 0.04),
    });
    for (const [dx, dz] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) {
      const r = rng.uniform(2.2, 3.2) * thick;
      shapes.push({
        kind: "tube",
        tissue: "muscle",
        centre: add(gc, [side * dx * 10.5, -6, dz * 10.5]),
        end: add(apex, [side * dx * 2.5, 0, dz * 2.5]),
        radius: r,
      });
    }
    shapes.push({
      kind: "tube",
      tissue: "nerve",
      centre: add(gc, [0, -8, 0]),
      end: add(apex, [0, -6, 0]),
      radius: rng.uniform(1.8, 2.6),
    });
    shapes.push({
      kind: "ellipsoid",
      tissue: "globe",
      centre: gc,
      radii: [12 * k(), 12 * k(), 12 * k()],
    });
    shapes.push({
      kind: "ellipsoid",
      tissue: "lens",
      centre: add(gc, [0, 10, 0]),
      radii: [4.5, 2, 4.5],
    });
  }
  return { shapes, labels: { globe: 1, lens: 1, nerve: 2, muscle: 3, ofat: 4 } };
}

async function orbitCase(dir: string, id: string, rng: Rng, scale: number): Promise<string[]> {
  const scene = orbitScene(rng);
  const caseDir = path.join(dir, id);
  await Deno.mkdir(caseDir, { recursive: true });
  const files: string[] = [];
  const ctDims: Vec3 = [Math.round(112 * scale), Math.round(96 * scale), 32];
  const ctAff = stackAffine([-1, 0, 0, 0, -1, 0, 0, 0, 1], [1 / scale, 1 / scale, 2], ctDims, [
    0,
    38 + rng.uniform(-3, 3),
    rng.uniform(-3, 3),
  ]);
  const ct = render(scene, {
    dims: ctDims,
    affine: ctAff,
    contrast: ORBIT_CONTRAST.CT,
    noise: 14,
    noiseKind: "gaussian",
    bias: 0,
    rng,
  });
  files.push(
    ...(await writePair(
      path.join(caseDir, "ct.nii.gz"),
      path.join(caseDir, "ct_seg.nii.gz"),
      ctDims,
      ctAff,
      ct.image,
      ct.label,
      { datatype: "int16", gain: 1 },
    )),
  );
  // MRI of the same subject: another grid, head slightly moved (not registered to the CT).
  const mrDims: Vec3 = [Math.round(100 * scale), Math.round(84 * scale), 20];
  const mrRot = rotation3(
    rng.uniform(-0.08, 0.08),
    rng.uniform(-0.05, 0.05),
    rng.uniform(-0.05, 0.05),
  );
  const mrAff = stackAffine(mrRot, [1.1 / scale, 1.1 / scale, 3], mrDims, [
    rng.uniform(-2, 2),
    38 + rng.uniform(-3, 3),
    rng.uniform(-3, 3),
  ]);
  const move: Vec3 = [rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-3, 3)];
  const mr = render(scene, {
    dims: mrDims,
    affine: mrAff,
    contrast: ORBIT_CONTRAST.MRI,
    shift: () => move,
    noise: 0.04,
    noiseKind: "rician",
    bias: 0.2,
    rng,
  });
  files.push(
    ...(await writePair(
      path.join(caseDir, "mr.nii.gz"),
      path.join(caseDir, "mr_seg.nii.gz"),
      mrDims,
      mrAff,
      mr.image,
      mr.label,
      { datatype: "int16", gain: rng.uniform(800, 1600) },
    )),
  );
  return files;
}
