/**
 * Dataset fingerprint and preprocessing (METHOD.md section 5).
 *
 * Per case and modality: read, reorient to RAS, resample to the target spacing (trilinear for
 * images, nearest for labels), crop to the body bounding box (non-zero voxels, plus all labelled
 * voxels), normalise (CT: clip to the 0.5/99.5 percentiles of foreground voxels and z-score with
 * dataset statistics; MR: z-score over the non-zero voxels of each volume), map label values to
 * 0..K-1. Each modality keeps its own grid; cases marked aligned whose modalities share one grid keep
 * one common grid (a common crop). Output per case: raw little-endian Float32 image files, Uint8 (or
 * Int16) label files and a JSON sidecar that records everything needed to map back to the original
 * grid. Results are cached: a case is redone only when its inputs (path, size, mtime), the settings
 * or the dataset statistics it depends on change.
 */
import * as path from "node:path";
import { createHash } from "node:crypto";
import { type Mat4, maxAbsDiff, mul4, spacingOf, type Vec3 } from "./affine.ts";
import { type NiftiImage, splitFrames, writeFileAtomic } from "./nifti.ts";
import { readImage } from "./image_io.ts";
import {
  indexMapOf,
  rasReorientation,
  reorientToRAS,
  resample,
  resampledGrid,
  resampleToReference,
  sampleGrid,
} from "./geometry.ts";
import {
  classNames,
  type ImageRef,
  labelValueMap,
  type Manifest,
  type ManifestCase,
  type ModalityKind,
  modalityKind,
  refFrame,
  refPath,
} from "./manifest.ts";
import { Rng } from "./rng.ts";
import { LabelAccess } from "./label_access.ts";
import { IGNORE_INDEX, storedIgnore } from "../util/ignore.ts";

/** Bumped whenever the on-disk format or the processing changes meaning. */
export const PREPROCESS_VERSION = 2;

export type ProgressFn = (done: number, total: number, label: string) => void;

export interface ModalityStats {
  kind: ModalityKind;
  /** Per-case spacings [x, y, z] after RAS reorientation. */
  spacings: Vec3[];
  sizes: Vec3[];
  /** Statistics of foreground voxels (labelled > 0; body voxels where no label exists). */
  mean: number;
  std: number;
  p005: number;
  p995: number;
  min: number;
  max: number;
}

export interface Fingerprint {
  task: string;
  modalities: string[];
  classes: string[];
  /** Voxel counts per class (index order) over the training labels. */
  classVoxels: number[];
  perModality: Record<string, ModalityStats>;
  /** Default target spacing: per-axis median over training images of all modalities (nnU-Net rule for anisotropy). */
  medianSpacing: Vec3;
  targetSpacing: Vec3;
  cases: number;
}

export interface FingerprintOptions {
  onProgress?: ProgressFn;
  /** Which splits feed the statistics (default ["train"]). */
  splits?: ManifestCase["split"][];
  nonFinite?: "error" | "zero";
  /** Seed for the voxel subsample used for percentiles. */
  seed?: number;
  cache?: ImageCache;
  /** The label files it may open (default: those of every case marked labeled). */
  labels?: LabelAccess;
}

function fail(id: string, why: string): never {
  throw new Error(`Cannot preprocess case ${id}: ${why}`);
}

/** An image reoriented to RAS, with the geometry of the file it came from. */
export interface RasImage {
  ras: NiftiImage;
  /** Grid of the file (before reorientation). */
  sourceDims: Vec3;
  sourceAffine: Mat4;
  path: string;
}

/** A label map reoriented to RAS and mapped to class indices. */
export interface RasLabels {
  labels: Uint8Array | Int16Array;
  dims: Vec3;
  affine: Mat4;
  path: string;
}

/**
 * Decoded, reoriented images and labels kept between the fingerprint pass and the preprocessing
 * pass, up to a byte budget (once full, further entries are simply not kept). The last raw 4-D file
 * is kept too, so the frames of one multi-channel file are decompressed once.
 */
export class ImageCache {
  private readonly map = new Map<string, RasImage | RasLabels>();
  private bytes = 0;
  private lastRaw: NiftiImage | null = null;
  constructor(readonly budgetBytes = 2 ** 31) {}
  get<T extends RasImage | RasLabels>(key: string): T | undefined {
    return this.map.get(key) as T | undefined;
  }
  put(key: string, value: RasImage | RasLabels, bytes: number): void {
    if (this.bytes + bytes <= this.budgetBytes) {
      this.map.set(key, value);
      this.bytes += bytes;
    }
  }
  async raw(p: string): Promise<NiftiImage> {
    if (this.lastRaw?.path === p) return this.lastRaw;
    const img = await readImage(p);
    this.lastRaw = img.frames > 1 ? img : null;
    return img;
  }
}

/**
 * Reads one image reference as a 3-D image, with NaN/Inf handling (`label`: a label file, whose
 * NaN/Inf voxels are always an error: nonFinite applies to images only).
 */
export async function readImageRef(
  ref: ImageRef,
  opts: {
    id: string;
    what: string;
    nonFinite?: "error" | "zero";
    cache?: ImageCache;
    label?: boolean;
    /** Required with `label`: label files are opened only through it. */
    labels?: LabelAccess;
  },
): Promise<NiftiImage> {
  const p = refPath(ref), frame = refFrame(ref);
  let img = opts.label
    ? await (opts.labels ?? LabelAccess.none("this reader")).read(p)
    : opts.cache
    ? await opts.cache.raw(p)
    : await readImage(p);
  if (frame === undefined && img.frames > 1) {
    throw new Error(
      `Cannot read ${p}: header says 4 dimensions (${
        img.dims.join("x")
      }x${img.frames}), expected 3`,
    );
  }
  if (frame !== undefined) {
    if (frame >= img.frames) {
      fail(
        opts.id,
        `${opts.what} asks for frame ${frame} of ${p}, which has ${img.frames} frame(s)`,
      );
    }
    img = img.frames > 1 ? splitFrames(img)[frame] : img;
  }
  let bad = 0, first = -1;
  const d = img.data;
  for (let i = 0; i < d.length; i++) {
    if (!Number.isFinite(d[i])) {
      if (first < 0) first = i;
      bad++;
    }
  }
  if (bad > 0) {
    if (opts.nonFinite !== "zero" || opts.label) {
      const x = first % img.dims[0],
        y = Math.floor(first / img.dims[0]) % img.dims[1],
        z = Math.floor(first / (img.dims[0] * img.dims[1]));
      const where = `${p} has ${bad} NaN/Inf voxel(s) (first at voxel ${x},${y},${z} = ${
        d[first]
      })`;
      fail(
        opts.id,
        opts.label
          ? `label file ${where}; nonFinite=zero applies to images only: fix the label file ${p} ` +
            `(set those voxels to 0 for background, or to a value that the manifest's labelMap ` +
            `maps to "ignore")`
          : `${where}; fix the file, or replace them with 0 (train: --set nonFinite=zero; preprocess: --non-finite zero)`,
      );
    }
    for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) d[i] = 0;
  }
  return img;
}

/** Reads an image reference and reorients it to RAS (cached). */
export async function readRasImage(
  ref: ImageRef,
  opts: { id: string; what: string; nonFinite?: "error" | "zero"; cache?: ImageCache },
): Promise<RasImage> {
  const key = `img:${refPath(ref)}#${refFrame(ref) ?? ""}`;
  const hit = opts.cache?.get<RasImage>(key);
  if (hit) return hit;
  const out = rasImage(await readImageRef(ref, opts), refPath(ref));
  opts.cache?.put(key, out, out.ras.data.byteLength);
  return out;
}

/**
 * Reads a label map, checks it against its image's file geometry, reorients it to RAS and maps its
 * values to class indices (cached).
 */
export async function readRasLabels(
  ref: ImageRef,
  image: RasImage,
  opts: {
    id: string;
    what: string;
    map: Map<number, number>;
    cache?: ImageCache;
    labels: LabelAccess;
  },
): Promise<RasLabels> {
  const key = `lab:${refPath(ref)}#${refFrame(ref) ?? ""}`;
  const hit = opts.labels.allows(refPath(ref)) ? opts.cache?.get<RasLabels>(key) : undefined;
  if (hit) return hit;
  const lab = await readImageRef(ref, {
    id: opts.id,
    what: opts.what,
    label: true,
    labels: opts.labels,
  });
  checkLabelGeometry(
    { dims: image.sourceDims, affine: image.sourceAffine, path: image.path },
    { dims: lab.dims, affine: lab.affine, path: refPath(ref) },
    opts.id,
  );
  const ras = reorientToRAS(lab);
  ras.path = refPath(ref);
  const out: RasLabels = {
    labels: mapLabels(ras, opts.map, opts.id),
    dims: ras.dims,
    affine: ras.affine,
    path: refPath(ref),
  };
  opts.cache?.put(key, out, out.labels.byteLength);
  return out;
}

/**
 * Resampling of class indices to a spacing (same field of view as `resample`), as nnU-Net resamples
 * segmentations: each class's indicator is interpolated trilinearly and every voxel takes the class
 * with the largest value (ties to the lowest value; an ignored value competes like a class). Nearest
 * neighbour would pick one corner voxel of each 2x2x2 block when halving the resolution, shifting the
 * labels half a fine voxel against the block-mean image; this keeps them centred on the image.
 */
export function resampleLabels(
  labels: Uint8Array | Int16Array,
  dims: Vec3,
  affine: Mat4,
  spacing: readonly number[],
): { labels: Uint8Array | Int16Array; dims: Vec3; affine: Mat4 } {
  const g = resampledGrid(dims, affine, spacing);
  if (g.dims.every((d, i) => d === dims[i])) return { labels, dims, affine };
  const n = g.dims[0] * g.dims[1] * g.dims[2];
  const out = labels instanceof Uint8Array ? new Uint8Array(n) : new Int16Array(n);
  const values = [...new Set(labels)].sort((a, b) => a - b);
  if (values.length <= 1) {
    out.fill(values[0] ?? 0);
    return { labels: out, dims: g.dims, affine: g.affine };
  }
  const map = indexMapOf(g.newToOld);
  const best = new Float32Array(n).fill(-1);
  const indicator = new Float32Array(labels.length);
  const sampled = new Float32Array(n);
  for (const v of values) {
    for (let i = 0; i < labels.length; i++) indicator[i] = labels[i] === v ? 1 : 0;
    sampleGrid(indicator, dims, g.dims, map, { order: "linear", out: sampled });
    for (let i = 0; i < n; i++) {
      if (sampled[i] > best[i] + 1e-6) {
        best[i] = sampled[i];
        out[i] = v;
      }
    }
  }
  return { labels: out, dims: g.dims, affine: g.affine };
}

/**
 * Maps label file values to class indices. Values within 1e-3 of an integer are rounded (labels
 * stored as float); anything else, or a value not in the task's map, is an error naming the file.
 * Values mapped to "ignore" (IGNORE_INDEX) are stored as `storedIgnore`: 255 (Uint8) or -1 (Int16).
 */
export function mapLabels(
  img: NiftiImage,
  map: Map<number, number>,
  id: string,
): Uint8Array | Int16Array {
  const k = Math.max(...map.values()) + 1;
  const out = k <= 255 ? new Uint8Array(img.data.length) : new Int16Array(img.data.length);
  const ignored = storedIgnore(out);
  const src = img.data;
  const file = img.path ?? "label";
  let lastV = NaN, lastC = 0;
  for (let i = 0; i < src.length; i++) {
    const v = src[i];
    if (v === lastV) {
      out[i] = lastC;
      continue;
    }
    const r = Math.round(v);
    if (!(Math.abs(v - r) <= 1e-3)) {
      fail(
        id,
        `label ${file} has value ${
          Number(v.toPrecision(7))
        }, which is not an integer (labels may differ from integers by at most 1e-3)`,
      );
    }
    const c = map.get(r);
    if (c === undefined) {
      fail(
        id,
        `label ${file} has value ${r}, which is not in the task's label map (${
          [...map.keys()].join(", ")
        })`,
      );
    }
    out[i] = lastC = c === IGNORE_INDEX ? ignored : c;
    lastV = v;
  }
  return out;
}

interface Geometry {
  dims: readonly number[];
  affine: readonly number[];
  path?: string;
}

function checkLabelGeometry(img: Geometry, lab: Geometry, id: string): void {
  if (img.dims.some((d, i) => d !== lab.dims[i])) {
    fail(
      id,
      `label ${lab.path} has shape ${lab.dims.join("x")} but image ${img.path} has ${
        img.dims.join("x")
      }`,
    );
  }
  const scale = Math.max(1, ...img.affine.slice(0, 12).map(Math.abs));
  const diff = maxAbsDiff(img.affine, lab.affine);
  if (diff > 1e-3 * scale + 1e-2) {
    fail(
      id,
      `label ${lab.path} has an affine that differs from image ${img.path} (largest entry difference ${
        diff.toFixed(4)
      })`,
    );
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) >> 1] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

function percentile(sorted: Float32Array | number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

function labelRefFor(c: ManifestCase, modality: string): ImageRef | undefined {
  return c.labels?.[modality] ?? c.labels?.shared;
}

/** 1 where a voxel counts as foreground: labelled > 0 (and not ignored), else body voxels. */
function foregroundFlags(
  d: Float32Array,
  mask: Uint8Array | Int16Array | null,
  k: number,
  airCut: number,
): { flags: Uint8Array; count: number } {
  const flags = new Uint8Array(d.length);
  let count = 0;
  if (mask) {
    for (let i = 0; i < d.length; i++) {
      const v = mask[i];
      if (v > 0 && v < k) {
        flags[i] = 1;
        count++;
      }
    }
  } else {
    for (let i = 0; i < d.length; i++) {
      const v = d[i];
      if (v !== 0 && v > airCut) {
        flags[i] = 1;
        count++;
      }
    }
  }
  return { flags, count };
}

/**
 * Dataset statistics: spacings and sizes per modality, foreground intensity statistics, class
 * voxel counts, and the default target spacing.
 */
export async function fingerprint(
  manifest: Manifest,
  opts: FingerprintOptions = {},
): Promise<Fingerprint> {
  const splits = opts.splits ?? ["train"];
  let cases = manifest.cases.filter((c) => splits.includes(c.split));
  if (cases.length === 0) cases = manifest.cases;
  // A case whose labels are not allowed counts as unlabeled (its files are never opened).
  const labels = opts.labels ?? LabelAccess.forManifest(manifest);
  cases = cases.map((c) => labels.view(c));
  const names = classNames(manifest);
  const map = labelValueMap(manifest);
  const classVoxels = new Array<number>(names.length).fill(0);
  const samples: Record<string, number[]> = {};
  const perModality: Record<string, ModalityStats> = {};
  for (const m of manifest.modalities) {
    samples[m] = [];
    perModality[m] = {
      kind: modalityKind(manifest, m),
      spacings: [],
      sizes: [],
      mean: 0,
      std: 1,
      p005: 0,
      p995: 0,
      min: Infinity,
      max: -Infinity,
    };
  }
  const rng = new Rng(opts.seed ?? 0, "fingerprint");
  const total = cases.reduce((s, c) => s + Object.keys(c.images).length, 0);
  let done = 0;
  for (const c of cases) {
    for (const [m, ref] of Object.entries(c.images)) {
      const prepared = await readRasImage(ref, {
        id: c.id,
        what: `images.${m}`,
        nonFinite: opts.nonFinite,
        cache: opts.cache,
      });
      const img = prepared.ras;
      const st = perModality[m];
      st.spacings.push(img.spacing);
      st.sizes.push(img.dims);
      const lref = c.labeled ? labelRefFor(c, m) : undefined;
      let mask: Uint8Array | Int16Array | null = null;
      if (lref) {
        mask = (await readRasLabels(lref, prepared, {
          id: c.id,
          what: `labels.${m}`,
          map,
          cache: opts.cache,
          labels,
        })).labels;
        // Count each label map once (a shared map would otherwise count per modality).
        if (c.labels?.[m] || m === Object.keys(c.images)[0]) {
          const k = classVoxels.length;
          for (let i = 0; i < mask.length; i++) {
            if (mask[i] >= 0 && mask[i] < k) classVoxels[mask[i]]++;
          }
        }
      }
      // Foreground voxels for intensity statistics: labelled > 0, else the body (non-zero; for CT
      // in Hounsfield units, denser than air).
      const d = img.data;
      let mn = Infinity, mx = -Infinity;
      for (let i = 0; i < d.length; i++) {
        const v = d[i];
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      if (mn < st.min) st.min = mn;
      if (mx > st.max) st.max = mx;
      const airCut = !mask && st.kind === "ct" && mn < -500 ? -500 : -Infinity;
      // Foreground flags once (one byte per voxel), then a systematic sample of up to 10000 values
      // with a random start.
      const { flags: fg, count: nFg } = foregroundFlags(d, mask, names.length, airCut);
      const take = Math.min(nFg, 10000);
      if (take > 0) {
        const step = nFg / take;
        let next = rng.uniform(0, step), k = 0;
        const out = samples[m];
        for (let i = 0; i < d.length; i++) {
          if (fg[i] === 0) continue;
          if (k >= next) {
            out.push(d[i]);
            next += step;
          }
          k++;
        }
      }
      opts.onProgress?.(++done, total, `fingerprint ${c.id} ${m}`);
    }
  }
  const allSp: Vec3[] = [];
  for (const m of manifest.modalities) {
    const st = perModality[m];
    allSp.push(...st.spacings);
    const s = Float32Array.from(samples[m]).sort();
    st.p005 = percentile(s, 0.005);
    st.p995 = percentile(s, 0.995);
    let mean = 0;
    for (const v of s) mean += v;
    mean /= Math.max(1, s.length);
    let v2 = 0;
    for (const v of s) v2 += (v - mean) ** 2;
    st.mean = s.length ? mean : 0;
    st.std = s.length > 1 ? Math.sqrt(v2 / s.length) : 1;
  }
  const med = [0, 1, 2].map((a) => median(allSp.map((s) => s[a]))) as Vec3;
  const target = [...med] as Vec3;
  // nnU-Net: with strong anisotropy, use the 10th percentile along the thick axis (not below the others).
  const worst = med.indexOf(Math.max(...med));
  const others = med.filter((_, i) => i !== worst);
  if (med[worst] > 3 * Math.max(...others)) {
    const p10 = percentile(allSp.map((s) => s[worst]).sort((a, b) => a - b), 0.1);
    target[worst] = Math.max(p10, Math.max(...others));
  }
  return {
    task: manifest.task,
    modalities: manifest.modalities,
    classes: names,
    classVoxels,
    perModality,
    medianSpacing: med,
    targetSpacing: target,
    cases: cases.length,
  };
}

export interface PreprocessOptions {
  outDir: string;
  /** Target spacing [x, y, z] in mm (default: the fingerprint's). */
  targetSpacing?: readonly number[];
  /** Which splits to process (default all). */
  splits?: ManifestCase["split"][];
  /** Crop to the body bounding box (default true). */
  crop?: boolean;
  /** NaN/Inf in images: error (default) or replace with 0. */
  nonFinite?: "error" | "zero";
  /** Ignore the cache. */
  force?: boolean;
  onProgress?: ProgressFn;
  /** Memory for decoded images kept between the two passes (default 2 GiB). */
  cacheBytes?: number;
  /**
   * The label files preprocessing may open (default: those of every case marked labeled). Any other
   * case is preprocessed as unlabeled: its labels shape neither its crop nor the statistics, and
   * its cache entry is keyed (and stored) as unlabeled.
   */
  labels?: LabelAccess;
  /**
   * Dataset statistics to use instead of a fingerprint of the training split (prediction on new
   * data uses the training run's, so CT is clipped and scaled exactly as in training).
   */
  fingerprint?: Fingerprint;
}

/** How one modality of a preprocessed case maps back to its source file. */
export interface PreprocessedModality {
  file: string;
  labelFile: string | null;
  labelDtype: "uint8" | "int16" | null;
  dims: Vec3;
  spacing: Vec3;
  /** Preprocessed grid voxel -> world (RAS+ mm). */
  affine: Mat4;
  /** Normalised value used for padding outside the volume. */
  padValue: number;
  norm: { kind: ModalityKind; mean: number; std: number; clip: [number, number] | null };
  classVoxels: number[] | null;
  source: {
    path: string;
    frame: number | null;
    labelPath: string | null;
    /** Original grid (as stored in the file). */
    dims: Vec3;
    affine: Mat4;
    /** Crop box on the resampled RAS grid: [lo, hi) per axis. */
    cropLo: Vec3;
    cropHi: Vec3;
  };
}

export interface PreprocessedCase {
  id: string;
  labeled: boolean;
  split: ManifestCase["split"];
  aligned: boolean;
  hash: string;
  modalities: Record<string, PreprocessedModality>;
}

export interface PreprocessPlan {
  version: number;
  task: string;
  modalities: string[];
  modalityKinds: Record<string, ModalityKind>;
  classes: string[];
  targetSpacing: Vec3;
  fingerprint: Fingerprint;
  settingsHash: string;
  cases: {
    id: string;
    labeled: boolean;
    split: ManifestCase["split"];
    modalities: string[];
    labels: string[];
  }[];
}

async function fileStamp(ref: ImageRef | undefined): Promise<string> {
  if (!ref) return "-";
  const p = refPath(ref);
  try {
    const st = await Deno.stat(p);
    return `${p}|${refFrame(ref) ?? ""}|${st.size}|${st.mtime?.getTime() ?? 0}`;
  } catch {
    return `${p}|missing`;
  }
}

function sha(obj: unknown): string {
  return createHash("sha256").update(JSON.stringify(obj)).digest("hex").slice(0, 24);
}

async function readJsonIf<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await Deno.readTextFile(file)) as T;
  } catch {
    return null;
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Bounding box of the body: non-zero voxels (MR and anything with a zero background) or, for CT in
 * Hounsfield units, voxels above -500 HU (denser than air); labelled voxels always count.
 */
function bodyBox(
  data: Float32Array,
  dims: Vec3,
  label: ArrayLike<number> | null,
  kind: ModalityKind,
): { lo: Vec3; hi: Vec3 } {
  let thr = 0;
  let useThr = false;
  if (kind === "ct") {
    let mn = Infinity;
    for (let i = 0; i < data.length; i++) if (data[i] < mn) mn = data[i];
    if (mn < -500) {
      thr = -500;
      useThr = true;
    }
  }
  const [nx, ny] = dims;
  const lo: Vec3 = [Infinity, Infinity, Infinity];
  const hi: Vec3 = [-1, -1, -1];
  const inBody = (i: number) =>
    (useThr ? data[i] > thr : data[i] !== 0) || (label !== null && label[i] !== 0);
  for (let z = 0; z < dims[2]; z++) {
    for (let y = 0; y < ny; y++) {
      const row = (z * ny + y) * nx;
      // First and last body voxel of the row (scan from both ends).
      let a = 0;
      while (a < nx && !inBody(row + a)) a++;
      if (a === nx) continue;
      let b = nx - 1;
      while (b > a && !inBody(row + b)) b--;
      if (a < lo[0]) lo[0] = a;
      if (b > hi[0]) hi[0] = b;
      if (y < lo[1]) lo[1] = y;
      if (y > hi[1]) hi[1] = y;
      if (z < lo[2]) lo[2] = z;
      if (z > hi[2]) hi[2] = z;
    }
  }
  if (hi[0] < 0) return { lo: [0, 0, 0], hi: [...dims] as Vec3 };
  return { lo, hi: [hi[0] + 1, hi[1] + 1, hi[2] + 1] };
}

function cropArray<T extends Float32Array | Uint8Array | Int16Array>(
  src: T,
  dims: Vec3,
  lo: Vec3,
  hi: Vec3,
): T {
  const od = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
  const out = new (src.constructor as new (n: number) => T)(od[0] * od[1] * od[2]);
  let o = 0;
  for (let z = lo[2]; z < hi[2]; z++) {
    for (let y = lo[1]; y < hi[1]; y++) {
      const s = (z * dims[1] + y) * dims[0] + lo[0];
      out.set(src.subarray(s, s + od[0]), o);
      o += od[0];
    }
  }
  return out;
}

function cropAffine(affine: Mat4, lo: Vec3): Mat4 {
  return mul4(affine, [1, 0, 0, lo[0], 0, 1, 0, lo[1], 0, 0, 1, lo[2], 0, 0, 0, 1]);
}

/** Preprocesses every case of the manifest into `outDir` (cached; see module doc). */
export async function preprocessDataset(
  manifest: Manifest,
  opts: PreprocessOptions,
): Promise<PreprocessPlan> {
  const outDir = path.resolve(opts.outDir);
  await Deno.mkdir(path.join(outDir, "cases"), { recursive: true });
  const splits = opts.splits ?? ["train", "val", "test"];
  // From here on, a case whose labels are not allowed is unlabeled and names no label file; its
  // case hash (which covers the case) and its stored record say so.
  const labels = opts.labels ?? LabelAccess.forManifest(manifest);
  manifest = labels.restrict(manifest);
  const cases = manifest.cases.filter((c) => splits.includes(c.split));
  if (cases.length === 0) {
    throw new Error(`Cannot preprocess ${manifest.task}: no cases in splits ${splits.join(", ")}`);
  }
  const map = labelValueMap(manifest);
  const names = classNames(manifest);
  const crop = opts.crop ?? true;

  const cache = new ImageCache(opts.cacheBytes);
  const fingerprintData = opts.fingerprint ??
    await cachedFingerprint(manifest, outDir, { ...opts, labels }, cache);
  const target =
    (opts.targetSpacing ? [...opts.targetSpacing] : fingerprintData.targetSpacing) as Vec3;
  if (target.length !== 3 || target.some((v) => !(v > 0))) {
    throw new Error(
      `Cannot preprocess: target spacing must be three positive numbers, got ${target}`,
    );
  }
  const kinds = Object.fromEntries(manifest.modalities.map((m) => [m, modalityKind(manifest, m)]));
  const ctStats = Object.fromEntries(
    manifest.modalities.filter((m) => kinds[m] === "ct").map((m) => {
      const s = fingerprintData.perModality[m];
      return [m, { mean: s.mean, std: s.std, p005: s.p005, p995: s.p995 }];
    }),
  );
  const settings = {
    v: PREPROCESS_VERSION,
    target,
    crop,
    nonFinite: opts.nonFinite ?? "error",
    classes: manifest.classes,
    labelMap: manifest.labelMap ?? null,
    kinds,
    ctStats,
  };
  const settingsHash = sha(settings);

  const plan: PreprocessPlan = {
    version: PREPROCESS_VERSION,
    task: manifest.task,
    modalities: manifest.modalities,
    modalityKinds: kinds,
    classes: names,
    targetSpacing: target,
    fingerprint: fingerprintData,
    settingsHash,
    cases: [],
  };
  let done = 0;
  for (const c of cases) {
    const stamps = [];
    for (const [m, ref] of Object.entries(c.images)) {
      stamps.push([m, await fileStamp(ref), await fileStamp(labelRefFor(c, m))]);
    }
    const caseHash = sha({ settingsHash, c: { ...c, split: undefined }, stamps });
    const sidecar = path.join(outDir, "cases", `${c.id}.json`);
    const old = await readJsonIf<PreprocessedCase>(sidecar);
    let rec: PreprocessedCase;
    if (!opts.force && old && old.hash === caseHash && (await allFilesExist(outDir, old))) {
      rec = { ...old, split: c.split, labeled: c.labeled };
      await dropStaleLabels(outDir, rec);
      if (old.split !== c.split || old.labeled !== c.labeled) {
        await writeFileAtomic(sidecar, new TextEncoder().encode(JSON.stringify(rec, null, 1)));
      }
    } else {
      rec = await preprocessCase(c, {
        outDir,
        target,
        crop,
        map,
        kinds,
        ctStats,
        nonFinite: opts.nonFinite,
        hash: caseHash,
        k: names.length,
        cache,
        labels,
      });
      await dropStaleLabels(outDir, rec);
      await writeFileAtomic(sidecar, new TextEncoder().encode(JSON.stringify(rec, null, 1)));
    }
    plan.cases.push({
      id: c.id,
      labeled: c.labeled,
      split: c.split,
      modalities: Object.keys(rec.modalities),
      labels: Object.entries(rec.modalities).filter(([, v]) => v.labelFile).map(([k]) => k),
    });
    opts.onProgress?.(++done, cases.length, `preprocess ${c.id}`);
  }
  await writeFileAtomic(
    path.join(outDir, "preprocess.json"),
    new TextEncoder().encode(JSON.stringify(plan, null, 1)),
  );
  return plan;
}

/** Removes label files left in the cache by an earlier labeled preprocessing of an unlabeled case. */
async function dropStaleLabels(outDir: string, rec: PreprocessedCase): Promise<void> {
  for (const [m, pm] of Object.entries(rec.modalities)) {
    if (pm.labelFile) continue;
    await Deno.remove(path.join(outDir, "cases", `${rec.id}_${m}.lab`)).catch(() => {});
  }
}

async function allFilesExist(outDir: string, rec: PreprocessedCase): Promise<boolean> {
  for (const m of Object.values(rec.modalities)) {
    if (!(await exists(path.join(outDir, "cases", m.file)))) return false;
    if (m.labelFile && !(await exists(path.join(outDir, "cases", m.labelFile)))) return false;
  }
  return true;
}

interface CaseSettings {
  outDir: string;
  target: Vec3;
  crop: boolean;
  map: Map<number, number>;
  kinds: Record<string, ModalityKind>;
  ctStats: Record<string, { mean: number; std: number; p005: number; p995: number }>;
  nonFinite?: "error" | "zero";
  hash: string;
  k: number;
  cache: ImageCache;
  labels: LabelAccess;
}

async function preprocessCase(c: ManifestCase, s: CaseSettings): Promise<PreprocessedCase> {
  const inputs: CaseModalityInput[] = [];
  const refs: Record<string, { ref: ImageRef; labelRef: ImageRef | undefined }> = {};
  for (const [m, ref] of Object.entries(c.images)) {
    const image = await readRasImage(ref, {
      id: c.id,
      what: `images.${m}`,
      nonFinite: s.nonFinite,
      cache: s.cache,
    });
    const labelRef = c.labeled ? labelRefFor(c, m) : undefined;
    const label = labelRef
      ? await readRasLabels(labelRef, image, {
        id: c.id,
        what: `labels.${m}`,
        map: s.map,
        cache: s.cache,
        labels: s.labels,
      })
      : null;
    inputs.push({ modality: m, image, label });
    refs[m] = { ref, labelRef };
  }
  const transformed = transformCase({ aligned: c.aligned ?? false }, inputs, s);
  const out: PreprocessedCase = {
    id: c.id,
    labeled: c.labeled,
    split: c.split,
    aligned: c.aligned ?? false,
    hash: s.hash,
    modalities: {},
  };
  for (const [m, t] of Object.entries(transformed)) {
    const { ref, labelRef } = refs[m];
    const file = `${c.id}_${m}.f32`;
    await writeFileAtomic(path.join(s.outDir, "cases", file), new Uint8Array(t.data.buffer));
    let labelFile: string | null = null;
    if (t.label) {
      labelFile = `${c.id}_${m}.lab`;
      await writeFileAtomic(
        path.join(s.outDir, "cases", labelFile),
        new Uint8Array(t.label.buffer, t.label.byteOffset, t.label.byteLength),
      );
    }
    out.modalities[m] = {
      file,
      labelFile,
      labelDtype: t.label ? (t.label instanceof Uint8Array ? "uint8" : "int16") : null,
      dims: t.grid.dims,
      spacing: t.grid.spacing,
      affine: t.grid.affine,
      padValue: t.padValue,
      norm: t.norm,
      classVoxels: t.classVoxels,
      source: {
        path: refPath(ref),
        frame: refFrame(ref) ?? null,
        labelPath: labelRef ? refPath(labelRef) : null,
        dims: t.grid.source.dims,
        affine: t.grid.source.affine,
        cropLo: t.grid.source.cropLo,
        cropHi: t.grid.source.cropHi,
      },
    };
  }
  return out;
}

/** One modality of a case as read: the image reoriented to RAS and its labels, if any. */
export interface CaseModalityInput {
  modality: string;
  image: RasImage;
  label: RasLabels | null;
}

/** What the per-case transform depends on: the plan's spacing, crop and normalisation. */
export interface CaseTransformSettings {
  target: Vec3;
  crop: boolean;
  kinds: Record<string, ModalityKind>;
  /** CT statistics of the training data (CT is clipped and z-scored with them). */
  ctStats: Record<string, { mean: number; std: number; p005: number; p995: number }>;
  /** Number of classes (voxel counts per class of the labels). */
  k: number;
}

/** The geometry that maps a preprocessed modality back to its original grid. */
export interface PreprocessedGrid {
  dims: Vec3;
  spacing: Vec3;
  /** Preprocessed grid voxel -> world (RAS+ mm). */
  affine: Mat4;
  source: {
    /** Original grid (as stored in the file). */
    dims: Vec3;
    affine: Mat4;
    /** Crop box on the resampled RAS grid: [lo, hi) per axis. */
    cropLo: Vec3;
    cropHi: Vec3;
  };
}

/** One modality after the per-case transform. */
export interface TransformedModality {
  data: Float32Array;
  label: Uint8Array | Int16Array | null;
  grid: PreprocessedGrid;
  padValue: number;
  norm: PreprocessedModality["norm"];
  classVoxels: number[] | null;
}

/** An in-memory image (original grid, any orientation) as the per-case transform reads it. */
export function rasImage(img: NiftiImage, file = ""): RasImage {
  return {
    ras: reorientToRAS(img),
    sourceDims: [...img.dims] as Vec3,
    sourceAffine: img.affine.slice(),
    path: file,
  };
}

/**
 * The per-case transform of preprocessing, a pure function of the case and the plan: resample to
 * the target spacing (trilinear for images, class-wise for labels), crop to the body box (one common
 * box for aligned cases on one grid), normalise (CT: clip and z-score with the dataset statistics;
 * MR: z-score over non-zero voxels). Training (through `preprocessDataset`) and inference (the
 * Predictor, src/infer/predictor.ts) both run it, so they see the same volumes.
 */
export function transformCase(
  c: { aligned: boolean },
  inputs: readonly CaseModalityInput[],
  s: CaseTransformSettings,
): Record<string, TransformedModality> {
  const mods = inputs.map((x) => ({
    modality: x.modality,
    source: x.image,
    label: x.label
      ? resampleLabels(x.label.labels, x.label.dims, x.label.affine, s.target).labels
      : null,
    image: resample(x.image.ras, { spacing: s.target, order: "linear" }),
  }));
  // Aligned cases on one common grid keep one common crop.
  const common = c.aligned &&
    mods.every((r) =>
      r.image.dims.every((d, i) => d === mods[0].image.dims[i]) &&
      maxAbsDiff(r.image.affine, mods[0].image.affine) < 1e-3
    );
  const boxes = mods.map((
    r,
  ) => (s.crop
    ? bodyBox(r.image.data, r.image.dims, r.label, s.kinds[r.modality])
    : { lo: [0, 0, 0] as Vec3, hi: [...r.image.dims] as Vec3 })
  );
  if (common) {
    const lo = [0, 1, 2].map((a) => Math.min(...boxes.map((b) => b.lo[a]))) as Vec3;
    const hi = [0, 1, 2].map((a) => Math.max(...boxes.map((b) => b.hi[a]))) as Vec3;
    boxes.forEach((b) => {
      b.lo = lo;
      b.hi = hi;
    });
  }
  const out: Record<string, TransformedModality> = {};
  for (let i = 0; i < mods.length; i++) {
    const r = mods[i];
    const { lo, hi } = boxes[i];
    const dims = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]] as Vec3;
    const data = cropArray(r.image.data, r.image.dims, lo, hi);
    const label = r.label ? cropArray(r.label, r.image.dims, lo, hi) : null;
    const affine = cropAffine(r.image.affine, lo);
    const kind = s.kinds[r.modality];
    let mean: number, std: number, clip: [number, number] | null = null;
    if (kind === "ct") {
      const st = s.ctStats[r.modality];
      clip = [st.p005, st.p995];
      mean = st.mean;
      std = st.std;
      for (let j = 0; j < data.length; j++) {
        data[j] = data[j] < clip[0] ? clip[0] : data[j] > clip[1] ? clip[1] : data[j];
      }
    } else {
      let n = 0, s1 = 0, s2 = 0;
      for (let j = 0; j < data.length; j++) {
        const v = data[j];
        if (v !== 0) {
          n++;
          s1 += v;
          s2 += v * v;
        }
      }
      mean = n ? s1 / n : 0;
      std = n ? Math.sqrt(Math.max(0, s2 / n - mean * mean)) : 1;
    }
    if (!(std > 1e-8)) std = 1;
    const inv = 1 / std;
    let minV = Infinity;
    for (let j = 0; j < data.length; j++) {
      const v = (data[j] - mean) * inv;
      data[j] = v;
      if (v < minV) minV = v;
    }
    const padValue = kind === "ct" ? (clip![0] - mean) * inv : (0 - mean) * inv;
    let classVoxels: number[] | null = null;
    if (label) {
      classVoxels = new Array(s.k).fill(0);
      for (let j = 0; j < label.length; j++) {
        if (label[j] >= 0 && label[j] < s.k) classVoxels[label[j]]++;
      }
    }
    out[r.modality] = {
      data,
      label,
      grid: {
        dims,
        spacing: spacingOf(affine),
        affine,
        source: {
          dims: r.source.sourceDims,
          affine: r.source.sourceAffine,
          cropLo: lo,
          cropHi: hi,
        },
      },
      padValue: Number.isFinite(padValue) ? padValue : (Number.isFinite(minV) ? minV : 0),
      norm: { kind, mean, std, clip },
      classVoxels,
    };
  }
  return out;
}

/** Reads preprocess.json of a preprocessed folder. */
export async function loadPlan(dir: string): Promise<PreprocessPlan> {
  const file = path.join(dir, "preprocess.json");
  const plan = await readJsonIf<PreprocessPlan>(file);
  if (!plan) throw new Error(`Cannot read ${file}: missing or not JSON (run preprocess first)`);
  if (plan.version !== PREPROCESS_VERSION) {
    throw new Error(
      `Cannot use ${file}: format version ${plan.version}, expected ${PREPROCESS_VERSION} (preprocess again)`,
    );
  }
  return plan;
}

/** Reads one case sidecar. */
export async function loadCaseRecord(dir: string, id: string): Promise<PreprocessedCase> {
  const file = path.join(dir, "cases", `${id}.json`);
  const rec = await readJsonIf<PreprocessedCase>(file);
  if (!rec) throw new Error(`Cannot read ${file}: missing or not JSON`);
  return rec;
}

/** Volume data on a modality's preprocessed grid, as an image the resampler accepts. */
function onPreprocessedGrid(
  data: Float32Array,
  m: PreprocessedGrid,
  frames: number,
): NiftiImage {
  return {
    data,
    dims: m.dims,
    frames,
    affine: m.affine,
    spacing: m.spacing,
    header: {
      niftiVersion: 1,
      datatype: "float32",
      datatypeCode: 16,
      sclSlope: 1,
      sclInter: 0,
      qformCode: 1,
      sformCode: 1,
      affineSource: "sform",
      intentCode: 0,
      intentName: "",
      descrip: "",
      unitScale: 1,
      dim: [],
    },
  };
}

/**
 * Maps class probabilities [K, z, y, x] on a preprocessed grid back to the modality's original grid
 * (trilinear; outside the crop box the background has probability 1). Returns [K, ...original].
 */
export function probabilitiesToOriginal(
  probs: Float32Array,
  k: number,
  m: PreprocessedGrid,
): Float32Array {
  const n = m.dims[0] * m.dims[1] * m.dims[2];
  if (probs.length !== k * n) {
    throw new Error(
      `probabilitiesToOriginal: got ${probs.length} values, expected ${k} x ${m.dims.join("x")}`,
    );
  }
  const src = onPreprocessedGrid(probs, m, k);
  const outN = m.source.dims[0] * m.source.dims[1] * m.source.dims[2];
  const out = new Float32Array(k * outN);
  for (let c = 0; c < k; c++) {
    const one = { ...src, frames: 1, data: probs.subarray(c * n, (c + 1) * n) };
    const r = resampleToReference(one, { dims: m.source.dims, affine: m.source.affine }, {
      order: "linear",
      fill: c === 0 ? 1 : 0,
    });
    out.set(r.data, c * outN);
  }
  return out;
}

/** Maps a label map on a preprocessed grid back to the original grid (nearest; background outside). */
export function labelsToOriginal(labels: ArrayLike<number>, m: PreprocessedGrid): Int32Array {
  const src = onPreprocessedGrid(Float32Array.from(labels), m, 1);
  const r = resampleToReference(src, { dims: m.source.dims, affine: m.source.affine }, {
    order: "nearest",
    fill: 0,
  });
  return Int32Array.from(r.data);
}

/** The RAS reorientation applied to an original grid (exported for inference code that needs it). */
export { rasReorientation };

/** The training split's fingerprint, cached in outDir by the stamps of the training inputs. */
async function cachedFingerprint(
  manifest: Manifest,
  outDir: string,
  opts: PreprocessOptions,
  cache: ImageCache,
): Promise<Fingerprint> {
  const fpInputs = [];
  for (const c of manifest.cases.filter((c) => c.split === "train")) {
    for (const [m, ref] of Object.entries(c.images)) {
      fpInputs.push([
        c.id,
        m,
        await fileStamp(ref),
        c.labeled ? await fileStamp(labelRefFor(c, m)) : "-",
      ]);
    }
  }
  const fpKey = sha({
    v: PREPROCESS_VERSION,
    fpInputs,
    classes: manifest.classes,
    labelMap: manifest.labelMap,
    kinds: manifest.modalityKinds,
    mods: manifest.modalities,
    nf: opts.nonFinite,
  });
  const fpFile = path.join(outDir, "fingerprint.json");
  let fp = await readJsonIf<{ key: string; fingerprint: Fingerprint }>(fpFile);
  let fingerprintData: Fingerprint;
  if (fp && fp.key === fpKey && !opts.force) fingerprintData = fp.fingerprint;
  else {
    fingerprintData = await fingerprint(manifest, {
      onProgress: opts.onProgress,
      nonFinite: opts.nonFinite,
      cache,
      labels: opts.labels,
    });
    fp = { key: fpKey, fingerprint: fingerprintData };
    await writeFileAtomic(fpFile, new TextEncoder().encode(JSON.stringify(fp, null, 1)));
  }
  return fingerprintData;
}
