/**
 * Preprocessed cases in memory, as two distinct types: a LabeledCase carries label maps; an
 * UnlabeledCase has no label field at all and is built without ever opening a label file. A labeled
 * case that a run treats as unlabeled (labeled-ratio experiments) is loaded through the unlabeled
 * path, so its labels never reach the sampler.
 */
import * as path from "node:path";
import { inv4, type Mat4, mul4, type Vec3 } from "./affine.ts";
import { sampleGrid } from "./geometry.ts";
import { loadCaseRecord, loadPlan, type PreprocessedCase } from "./prepared_cache.ts";
import type { PreprocessPlan } from "./preprocess_plan.ts";
import { Rng } from "./rng.ts";

/** One modality's preprocessed volume. */
export interface Volume {
  data: Float32Array;
  dims: Vec3;
  spacing: Vec3;
  affine: Mat4;
  padValue: number;
}

export interface UnlabeledCase {
  readonly kind: "unlabeled";
  readonly id: string;
  readonly volumes: Readonly<Record<string, Volume>>;
}

export interface LabeledCase {
  readonly kind: "labeled";
  readonly id: string;
  readonly volumes: Readonly<Record<string, Volume>>;
  /** Class indices per modality (only modalities that have a label map). */
  readonly labels: Readonly<Record<string, Uint8Array | Int16Array>>;
  /** Per modality with labels: per class index (1..K-1), up to 10000 voxel indices of that class. */
  readonly foreground: Readonly<Record<string, Int32Array[]>>;
}

export type AnyCase = LabeledCase | UnlabeledCase;

export interface LoadCasesOptions {
  /** Splits to load (default ["train"]). */
  splits?: ("train" | "val" | "test")[];
  /** Labeled cases that keep their labels; other labeled cases load as unlabeled. Default: all labeled. */
  labeledIds?: readonly string[];
  /** Back the arrays with SharedArrayBuffer so loader workers can read them without copies. */
  shared?: boolean;
  /** Only these modalities (default: all of the plan). */
  modalities?: readonly string[];
  /** Only these cases (default: every case of the splits). */
  ids?: readonly string[];
}

export interface LoadedDataset {
  plan: PreprocessPlan;
  labeled: LabeledCase[];
  unlabeled: UnlabeledCase[];
}

async function readArray<T extends Float32Array | Uint8Array | Int16Array>(
  file: string,
  ctor: { new (b: ArrayBufferLike, o?: number, n?: number): T; BYTES_PER_ELEMENT: number },
  count: number,
  shared: boolean,
): Promise<T> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    throw new Error(
      `Cannot read ${file}: ${
        e instanceof Deno.errors.NotFound
          ? "file not found (preprocess again)"
          : (e as Error).message
      }`,
    );
  }
  if (bytes.length !== count * ctor.BYTES_PER_ELEMENT) {
    throw new Error(
      `Cannot read ${file}: ${bytes.length} bytes, expected ${
        count * ctor.BYTES_PER_ELEMENT
      } (preprocess again)`,
    );
  }
  const buf = shared ? new SharedArrayBuffer(bytes.length) : new ArrayBuffer(bytes.length);
  new Uint8Array(buf).set(bytes);
  return new ctor(buf, 0, count);
}

async function loadVolumes(
  dir: string,
  rec: PreprocessedCase,
  mods: readonly string[] | undefined,
  shared: boolean,
) {
  const volumes: Record<string, Volume> = {};
  for (const [m, r] of Object.entries(rec.modalities)) {
    if (mods && !mods.includes(m)) continue;
    const n = r.dims[0] * r.dims[1] * r.dims[2];
    volumes[m] = {
      data: await readArray(path.join(dir, "cases", r.file), Float32Array, n, shared),
      dims: r.dims,
      spacing: r.spacing,
      affine: r.affine,
      padValue: r.padValue,
    };
  }
  return volumes;
}

/** Loads a case's images only (label files are never opened). */
export async function loadUnlabeledCase(
  dir: string,
  rec: PreprocessedCase,
  opts: { shared?: boolean; modalities?: readonly string[] } = {},
): Promise<UnlabeledCase> {
  return {
    kind: "unlabeled",
    id: rec.id,
    volumes: await loadVolumes(dir, rec, opts.modalities, opts.shared ?? false),
  };
}

/**
 * Up to `max` voxel indices per foreground class 1..k-1 (seeded by case id, so it is reproducible).
 * Only voxels holding a class index count: ignored ones (stored as 255 or -1) are never foreground.
 */
export function foregroundLocations(
  label: ArrayLike<number>,
  k: number,
  id: string,
  max = 10000,
): Int32Array[] {
  const counts = new Int32Array(k);
  for (let i = 0; i < label.length; i++) {
    const c = label[i];
    if (c > 0 && c < k) counts[c]++;
  }
  const out: Int32Array[] = [new Int32Array(0)];
  const rng = new Rng(id, "foreground");
  for (let c = 1; c < k; c++) {
    const all = new Int32Array(counts[c]);
    let j = 0;
    for (let i = 0; i < label.length; i++) if (label[i] === c) all[j++] = i;
    if (all.length <= max) out.push(all);
    else {
      const pick = new Int32Array(max);
      for (let t = 0; t < max; t++) pick[t] = all[rng.int(all.length)];
      out.push(pick);
    }
  }
  return out;
}

/** Loads a labeled case (images, label maps, foreground locations). */
export async function loadLabeledCase(
  dir: string,
  rec: PreprocessedCase,
  k: number,
  opts: { shared?: boolean; modalities?: readonly string[] } = {},
): Promise<LabeledCase> {
  const volumes = await loadVolumes(dir, rec, opts.modalities, opts.shared ?? false);
  const labels: Record<string, Uint8Array | Int16Array> = {};
  const foreground: Record<string, Int32Array[]> = {};
  for (const [m, r] of Object.entries(rec.modalities)) {
    if (!r.labelFile || !(m in volumes)) continue;
    const n = r.dims[0] * r.dims[1] * r.dims[2];
    const file = path.join(dir, "cases", r.labelFile);
    labels[m] = r.labelDtype === "int16"
      ? await readArray(file, Int16Array, n, opts.shared ?? false)
      : await readArray(file, Uint8Array, n, opts.shared ?? false);
    foreground[m] = foregroundLocations(labels[m], k, `${rec.id}/${m}`);
  }
  if (Object.keys(labels).length === 0) {
    throw new Error(`Cannot load case ${rec.id} as labeled: it has no preprocessed label map`);
  }
  return { kind: "labeled", id: rec.id, volumes, labels, foreground };
}

/** Loads the cases of a preprocessed folder, split into labeled and unlabeled (see module doc). */
export async function loadPreprocessedCases(
  dir: string,
  opts: LoadCasesOptions = {},
): Promise<LoadedDataset> {
  const plan = await loadPlan(dir);
  const splits = opts.splits ?? ["train"];
  const keep = opts.labeledIds ? new Set(opts.labeledIds) : null;
  if (keep) {
    const known = new Set(plan.cases.filter((c) => c.labeled).map((c) => c.id));
    for (const id of keep) {
      if (!known.has(id)) {
        throw new Error(`Cannot keep labels of case ${id}: it is not a labeled case in ${dir}`);
      }
    }
  }
  const labeled: LabeledCase[] = [];
  const unlabeled: UnlabeledCase[] = [];
  const only = opts.ids ? new Set(opts.ids) : null;
  for (const c of plan.cases) {
    if (!splits.includes(c.split) || (only && !only.has(c.id))) continue;
    if (opts.modalities && !c.modalities.some((m) => opts.modalities!.includes(m))) continue;
    const rec = await loadCaseRecord(dir, c.id);
    // A case keeps labels only when one of the modalities in use has a label map.
    const labelled = c.labels.filter((m) => !opts.modalities || opts.modalities.includes(m));
    const useLabels = c.labeled && labelled.length > 0 && (keep === null || keep.has(c.id));
    if (useLabels) labeled.push(await loadLabeledCase(dir, rec, plan.classes.length, opts));
    else unlabeled.push(await loadUnlabeledCase(dir, rec, opts));
  }
  return { plan, labeled, unlabeled };
}

/**
 * Resamples every modality of a case onto one modality's preprocessed grid (trilinear, pad value
 * outside), e.g. to run sliding-window inference over all modalities at once. Labels are not
 * touched. Misaligned modalities stay misaligned: this only changes the voxel grid.
 */
export function toCommonGrid(
  c: Pick<AnyCase, "id" | "volumes">,
  reference: string,
): { dims: Vec3; affine: Mat4; spacing: Vec3; images: Record<string, Float32Array> } {
  const ref = c.volumes[reference];
  if (!ref) throw new Error(`Cannot resample case ${c.id}: it has no ${reference} volume`);
  const images: Record<string, Float32Array> = {};
  for (const [m, v] of Object.entries(c.volumes)) {
    if (m === reference) {
      images[m] = v.data;
      continue;
    }
    const map = mul4(inv4(v.affine), ref.affine).slice(0, 12);
    images[m] = sampleGrid(v.data, v.dims, ref.dims, map, {
      order: "linear",
      fill: v.padValue,
    }) as Float32Array;
  }
  return { dims: ref.dims, affine: ref.affine, spacing: ref.spacing, images };
}

/**
 * Bytes the given cases take in memory once loaded (float32 volumes of the modalities in use, plus
 * label maps), from their records alone.
 */
export async function loadedBytes(
  dir: string,
  ids: readonly string[],
  modalities: readonly string[],
): Promise<number> {
  let bytes = 0;
  for (const id of ids) {
    const rec = await loadCaseRecord(dir, id);
    for (const m of modalities) {
      const pm = rec.modalities[m];
      if (!pm) continue;
      const n = pm.dims[0] * pm.dims[1] * pm.dims[2];
      bytes += 4 * n + (pm.labelFile ? (pm.labelDtype === "int16" ? 2 : 1) * n : 0);
    }
  }
  return bytes;
}
