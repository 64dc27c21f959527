/**
 * The per-case transform of preprocessing and its inverse. Forward (`transformCase`), a pure
 * function of a case in memory and the plan: resample each modality to the target spacing
 * (trilinear for images, class-wise for labels), crop to the body bounding box (non-zero voxels,
 * plus all labelled voxels; one common box for aligned cases on one grid), normalise (CT: clip to
 * the dataset's 0.5/99.5 percentiles of foreground voxels and z-score with the dataset statistics;
 * MR: z-score over the non-zero voxels of each volume). Inverse: class probabilities or labels on
 * a preprocessed grid back onto the modality's original grid (uncrop, resample).
 */
import { type Mat4, maxAbsDiff, mul4, spacingOf, type Vec3 } from "./affine.ts";
import type { NiftiImage } from "./nifti.ts";
import {
  indexMapOf,
  reorientToRAS,
  resample,
  resampledGrid,
  resampleToReference,
  sampleGrid,
} from "./geometry.ts";
import type { ModalityKind } from "./manifest.ts";
import type { CaseTransformSettings } from "./preprocess_plan.ts";

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

/** One modality of a case as read: the image reoriented to RAS and its labels, if any. */
export interface CaseModalityInput {
  modality: string;
  image: RasImage;
  label: RasLabels | null;
}

/** How a modality's intensities were normalised: (clip to `clip`, then) (v - mean) / std. */
export interface Normalisation {
  kind: ModalityKind;
  mean: number;
  std: number;
  clip: [number, number] | null;
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
  norm: Normalisation;
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

/** Volume data on a modality's preprocessed grid, as an image the resampler accepts. */
function onPreprocessedGrid(
  data: Float32Array,
  m: PreprocessedGrid,
  frames: number,
): NiftiImage {
  return inMemoryImage(data, m.dims, m.affine, m.spacing, frames);
}

/**
 * A float32 image held in memory (no file behind it) in the reader's NiftiImage form, for the
 * resampler and the RAS reorientation.
 */
export function inMemoryImage(
  data: Float32Array,
  dims: readonly number[],
  affine: readonly number[],
  spacing: readonly number[],
  frames = 1,
): NiftiImage {
  return {
    data,
    dims: [...dims] as Vec3,
    frames,
    affine: [...affine] as Mat4,
    spacing: [...spacing] as Vec3,
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
