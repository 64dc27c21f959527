/**
 * Reading a case's inputs for preprocessing: one image reference (a 3-D file, or a frame of a 4-D
 * one) with NaN/Inf handling, reoriented to RAS; a label map checked against its image's geometry,
 * reoriented and mapped to class indices; and the in-memory cache of decoded images kept between
 * the fingerprint pass and the preprocessing pass. Errors name the case, the file and what to do.
 */
import { maxAbsDiff } from "./affine.ts";
import { type NiftiImage, splitFrames } from "./nifti.ts";
import { readImage } from "./image_io.ts";
import { reorientToRAS } from "./geometry.ts";
import { type ImageRef, type ManifestCase, refFrame, refPath } from "./manifest.ts";
import { LabelAccess } from "./label_access.ts";
import { IGNORE_INDEX, storedIgnore } from "../util/ignore.ts";
import { type RasImage, rasImage, type RasLabels } from "./case_transform.ts";

function fail(id: string, why: string): never {
  throw new Error(`Cannot preprocess case ${id}: ${why}`);
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

/** The label map of a case's modality: its own, else the case's shared one. */
export function labelRefFor(c: ManifestCase, modality: string): ImageRef | undefined {
  return c.labels?.[modality] ?? c.labels?.shared;
}
