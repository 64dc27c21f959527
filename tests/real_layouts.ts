/**
 * Tiny generators of files shaped like the public datasets comodal is used on: the same folder
 * layouts, file names, datatypes, header fields (scl_slope/scl_inter, sform/qform codes, qfac) and
 * label encodings as the real files, at sizes that keep tests fast.
 *
 * - BraTS 2021: BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz, int16 images, uint8
 *   seg with labels {0, 1, 2, 4}, an LPS-like sform (negative x and y columns).
 * - Decathlon Task05_Prostate: 4-D [x, y, z, 2] (T2, ADC) float32 images, 0.625 x 0.625 x 3.6 mm,
 *   fewer slices than a patch is deep, float64 labels 0/1/2, dataset.json with "modality".
 * - writeNiftiWithHeader: any image with chosen raw header fields (scl_slope 0, sform_code 0,
 *   pixdim[0] = -1, ...), which the normal writer never produces.
 */
import * as zlib from "node:zlib";
import * as path from "node:path";
import {
  encodeNifti,
  type WritableImage,
  writeNifti,
  type WriteNiftiOptions,
} from "../src/data/nifti.ts";
import { Rng } from "../src/data/rng.ts";

/** Raw NIfTI-1 header fields to force after encoding. */
export interface RawHeaderFields {
  sclSlope?: number;
  sclInter?: number;
  qformCode?: number;
  sformCode?: number;
  /** pixdim[0] (qfac). */
  qfac?: number;
  /** Zero the srow_x/y/z rows (as files without an sform often have). */
  clearSrow?: boolean;
}

/**
 * Writes a NIfTI-1 file whose voxels are stored exactly as `stored` says (no scaling by the writer),
 * then overwrites raw header fields. Use it for headers the normal writer never makes.
 */
export async function writeNiftiWithHeader(
  file: string,
  image: WritableImage,
  opts: WriteNiftiOptions,
  fields: RawHeaderFields,
): Promise<void> {
  const bytes = encodeNifti(image, { ...opts, sclSlope: 1, sclInter: 0 }, file);
  const dv = new DataView(bytes.buffer);
  if (fields.sclSlope !== undefined) dv.setFloat32(112, fields.sclSlope, true);
  if (fields.sclInter !== undefined) dv.setFloat32(116, fields.sclInter, true);
  if (fields.qformCode !== undefined) dv.setInt16(252, fields.qformCode, true);
  if (fields.sformCode !== undefined) dv.setInt16(254, fields.sformCode, true);
  if (fields.qfac !== undefined) dv.setFloat32(76, fields.qfac, true);
  if (fields.clearSrow) { for (let i = 0; i < 12; i++) dv.setFloat32(280 + 4 * i, 0, true); }
  await Deno.writeFile(file, file.endsWith(".gz") ? zlib.gzipSync(bytes, { level: 1 }) : bytes);
}

/** A tumour phantom: class per voxel (0 background, 1 core, 2 edema, 3 enhancing) and a brain mask. */
function tumourScene(dims: readonly number[], r: Rng): { cls: Uint8Array; brain: Uint8Array } {
  const [X, Y, Z] = dims;
  const cls = new Uint8Array(X * Y * Z), brain = new Uint8Array(X * Y * Z);
  const cx = X / 2 + r.uniform(-2, 2), cy = Y / 2 + r.uniform(-2, 2), cz = Z / 2 + r.uniform(-1, 1);
  const tx = cx + r.uniform(-2, 2), ty = cy + r.uniform(-2, 2), tz = cz;
  const rad = 3.5 + r.uniform(0, 1.5);
  for (let z = 0, i = 0; z < Z; z++) {
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++, i++) {
        const inBrain = ((x - cx) / (X * 0.42)) ** 2 + ((y - cy) / (Y * 0.42)) ** 2 +
            ((z - cz) / (Z * 0.45)) ** 2 < 1;
        if (!inBrain) continue;
        brain[i] = 1;
        const d = Math.hypot(x - tx, y - ty, z - tz);
        cls[i] = d < rad * 0.45 ? 1 : d < rad * 0.7 ? 3 : d < rad * 1.3 ? 2 : 0;
      }
    }
  }
  return { cls, brain };
}

/** BraTS file label of each phantom class (BraTS 2021 and earlier: enhancing tumour is 4). */
const BRATS_LABEL = [0, 1, 2, 4];
/** Per modality: [brain, core, edema, enhancing] mean intensity. */
const BRATS_CONTRAST: Record<string, number[]> = {
  t1: [600, 350, 500, 550],
  t1ce: [650, 400, 600, 1400],
  t2: [700, 1500, 1700, 1300],
  flair: [500, 700, 1300, 900],
};

/**
 * Writes a BraTS 2021 training folder: one sub-folder per case. `dims` is [x, y, z]. The sform is
 * LPS-like, as in the released files: x and y columns negative, offset at the far corner.
 */
export async function writeBrats2021(
  root: string,
  opts: {
    cases: number;
    dims?: [number, number, number];
    seed?: number;
    firstId?: number;
    withSeg?: boolean;
  },
): Promise<string[]> {
  const dims = opts.dims ?? [22, 20, 12];
  const [X, Y] = dims;
  const affine = [-1, 0, 0, X - 1, 0, -1, 0, Y - 1, 0, 0, 1, 0, 0, 0, 0, 1];
  const ids: string[] = [];
  for (let c = 0; c < opts.cases; c++) {
    const id = `BraTS2021_${String((opts.firstId ?? 0) + c).padStart(5, "0")}`;
    ids.push(id);
    const dir = path.join(root, id);
    await Deno.mkdir(dir, { recursive: true });
    const r = new Rng(opts.seed ?? 0, id);
    const { cls, brain } = tumourScene(dims, r);
    for (const [mod, contrast] of Object.entries(BRATS_CONTRAST)) {
      const img = new Int16Array(cls.length);
      for (let i = 0; i < cls.length; i++) {
        if (!brain[i]) continue;
        const base = cls[i] === 0 ? contrast[0] : contrast[cls[i]];
        img[i] = Math.max(1, Math.round(base + 40 * r.normal()));
      }
      await writeNifti(path.join(dir, `${id}_${mod}.nii.gz`), { data: img, dims, affine }, {
        datatype: "int16",
      });
    }
    if (opts.withSeg !== false) {
      const seg = Uint8Array.from(cls, (k) => BRATS_LABEL[k]);
      await writeNifti(path.join(dir, `${id}_seg.nii.gz`), { data: seg, dims, affine }, {
        datatype: "uint8",
      });
    }
  }
  return ids;
}

/**
 * Writes a Decathlon Task05_Prostate-like folder: 4-D float32 images [x, y, z, 2] (T2, ADC) at
 * 0.625 x 0.625 x 3.6 mm with `slices` slices per case, float64 labels (0 background, 1 PZ, 2 TZ).
 */
export async function writeProstate(
  root: string,
  opts: {
    cases: number;
    inPlane?: [number, number];
    slices?: number[];
    seed?: number;
    labelType?: "float64" | "float32";
  },
): Promise<string[]> {
  await Deno.mkdir(path.join(root, "imagesTr"), { recursive: true });
  await Deno.mkdir(path.join(root, "labelsTr"), { recursive: true });
  const [X, Y] = opts.inPlane ?? [40, 36];
  const training = [];
  const ids: string[] = [];
  for (let c = 0; c < opts.cases; c++) {
    const Z = opts.slices?.[c % opts.slices.length] ?? 5;
    const id = `prostate_${String(c).padStart(2, "0")}`;
    ids.push(id);
    const r = new Rng(opts.seed ?? 0, id);
    // Real Task05 files are RAS-like with a translation; spacing 0.625 x 0.625 x 3.6 (slightly off).
    const affine = [0.625, 0, 0, -12.5, 0, 0.625, 0, -15, 0, 0, 3.6 + 1e-4 * c, -8, 0, 0, 0, 1];
    const n = X * Y * Z;
    const img = new Float32Array(2 * n);
    const lab = new Float64Array(n);
    const cx = X / 2 + r.uniform(-3, 3), cy = Y / 2 + r.uniform(-3, 3), cz = (Z - 1) / 2;
    const rad = 7 + r.uniform(0, 3);
    for (let z = 0, i = 0; z < Z; z++) {
      for (let y = 0; y < Y; y++) {
        for (let x = 0; x < X; x++, i++) {
          const d = Math.hypot((x - cx) * 0.625, (y - cy) * 0.625, (z - cz) * 3.6) / 0.625;
          const k = d < rad * 0.55 ? 2 : d < rad ? 1 : 0;
          lab[i] = k;
          const body = Math.hypot(x - X / 2, y - Y / 2) < X * 0.48;
          img[i] = body ? [300, 520, 420][k] + 30 * r.normal() : 0; // T2
          img[n + i] = body ? [1400, 1100, 800][k] + 60 * r.normal() : 0; // ADC
        }
      }
    }
    await writeNifti(path.join(root, "imagesTr", `${id}.nii.gz`), {
      data: img,
      dims: [X, Y, Z],
      frames: 2,
      affine,
    });
    await writeNifti(path.join(root, "labelsTr", `${id}.nii.gz`), {
      data: lab,
      dims: [X, Y, Z],
      affine,
    }, {
      datatype: opts.labelType ?? "float64",
    });
    training.push({ image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` });
  }
  await Deno.writeTextFile(
    path.join(root, "dataset.json"),
    JSON.stringify(
      {
        name: "PROSTATE",
        description: "Prostate transitional zone and peripheral zone segmentation",
        tensorImageSize: "4D",
        modality: { "0": "T2", "1": "ADC" },
        labels: { "0": "background", "1": "PZ", "2": "TZ" },
        numTraining: opts.cases,
        numTest: 0,
        training,
        test: [],
      },
      null,
      4,
    ),
  );
  return ids;
}

/** Runs the CLI in-process; returns its exit code and what it printed. */
export async function runCli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const { main } = await import("../cli/main.ts");
  const out: string[] = [], err: string[] = [];
  const log = console.log, error = console.error, warn = console.warn;
  console.log = (...a: unknown[]) => out.push(a.map(String).join(" "));
  console.error = (...a: unknown[]) => err.push(a.map(String).join(" "));
  console.warn = console.error;
  try {
    const code = await main(args);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
    console.warn = warn;
  }
}

/**
 * Writes an nnU-Net v2 raw dataset with the header quirks of real scanner exports, one file per
 * channel on one grid (z axis stored inferior-to-superior reversed, so det < 0 and qfac = -1):
 * - CT (_0000): int16 stored as HU + 1024 with scl_slope 1, scl_inter -1024, air at -1024 HU;
 * - T1 (_0001): float32 with scl_slope 0 ("no scaling" per the standard) and scl_inter 7, and only
 *   a qform (sform_code 0, srow zeroed), pixdim[0] = -1;
 * - T2 (_0002): uint16 with values above the int16 range.
 * Labels are uint8 with 1 organ, 2 lesion (a few voxels) and 3 = "ignore" (an unannotated slab).
 */
export async function writeNnUnetCtMr(
  root: string,
  opts: { cases: number; dims?: [number, number, number]; seed?: number },
): Promise<{ ids: string[]; ignoreValue: number }> {
  const dims = opts.dims ?? [24, 20, 10];
  const [X, Y, Z] = dims;
  await Deno.mkdir(path.join(root, "imagesTr"), { recursive: true });
  await Deno.mkdir(path.join(root, "labelsTr"), { recursive: true });
  const affine = [0.8, 0, 0, -9, 0, 0.8, 0, 4, 0, 0, -2.5, 30, 0, 0, 0, 1];
  const ids: string[] = [];
  for (let c = 0; c < opts.cases; c++) {
    const id = `ctmr_${String(c).padStart(3, "0")}`;
    ids.push(id);
    const r = new Rng(opts.seed ?? 0, id);
    const n = X * Y * Z;
    const ct = new Int16Array(n), t1 = new Float32Array(n), t2 = new Uint16Array(n);
    const lab = new Uint8Array(n);
    const cx = X / 2 + r.uniform(-2, 2), cy = Y / 2 + r.uniform(-2, 2);
    for (let z = 0, i = 0; z < Z; z++) {
      for (let y = 0; y < Y; y++) {
        for (let x = 0; x < X; x++, i++) {
          const body = Math.hypot(x - X / 2, y - Y / 2) < X * 0.45;
          const organ = body && Math.hypot(x - cx, y - cy, (z - Z / 2) * 2) < 5;
          const lesion = organ && x === Math.round(cx) && y === Math.round(cy) &&
            Math.abs(z - Z / 2) < 1.5;
          const k = lesion ? 2 : organ ? 1 : 0;
          // The top two slices were not annotated: "ignore", whatever the anatomy.
          lab[i] = z >= Z - 2 ? 3 : k;
          const hu = body ? [40, 70, 120][k] + 10 * r.normal() : -1024;
          ct[i] = Math.round(hu) + 1024;
          t1[i] = body ? [400, 700, 250][k] + 20 * r.normal() : 0;
          t2[i] = body ? Math.round([30000, 52000, 61000][k] + 500 * r.normal()) : 0;
        }
      }
    }
    const dir = path.join(root, "imagesTr");
    await writeNiftiWithHeader(path.join(dir, `${id}_0000.nii.gz`), { data: ct, dims, affine }, {
      datatype: "int16",
    }, { sclSlope: 1, sclInter: -1024 });
    await writeNiftiWithHeader(path.join(dir, `${id}_0001.nii.gz`), { data: t1, dims, affine }, {
      datatype: "float32",
    }, { sclSlope: 0, sclInter: 7, sformCode: 0, clearSrow: true, qfac: -1 });
    await writeNifti(path.join(dir, `${id}_0002.nii.gz`), { data: t2, dims, affine }, {
      datatype: "uint16",
    });
    await writeNifti(path.join(root, "labelsTr", `${id}.nii.gz`), { data: lab, dims, affine }, {
      datatype: "uint8",
    });
  }
  await Deno.writeTextFile(
    path.join(root, "dataset.json"),
    JSON.stringify(
      {
        channel_names: { "0": "CT", "1": "T1", "2": "T2" },
        labels: { background: 0, organ: 1, lesion: 2, ignore: 3 },
        numTraining: opts.cases,
        file_ending: ".nii.gz",
        name: "Dataset999_CtMr",
      },
      null,
      2,
    ),
  );
  return { ids, ignoreValue: 3 };
}

/** CLI flags of a tiny, fast training run (2 iterations, a 3-level width-4 network, no images). */
export const TINY = [
  "--iterations",
  "2",
  "--threads",
  "2",
  "--set",
  "network.baseWidth=4",
  "--set",
  "network.maxLevels=3",
  "--set",
  "optimizer.warmup=1",
  "--set",
  "validation.every=0",
  "--set",
  "validation.overlap=0",
  "--set",
  "loaderWorkers=0",
  "--set",
  "images=false",
];

/** Arguments of `runCli` for a tiny training run (`TINY`) of `task` into `out`, plus `--set`s. */
export function tinyTrainArgs(task: string, out: string, ...sets: string[]): string[] {
  return ["train", task, "--out", out, ...TINY, ...sets.flatMap((s) => ["--set", s])];
}

/** Asserts a runCli result exited 0, showing its output otherwise. */
export function ok(r: { code: number; out: string; err: string }, what: string): void {
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code}):\n${r.err}\n${r.out}`);
}
