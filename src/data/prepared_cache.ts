/**
 * The cache of prepared volumes: preprocesses every case of a manifest into a folder and keeps it
 * there. Per case and modality: read and reorient (case_reader.ts), then the per-case transform
 * (case_transform.ts) with the plan (preprocess_plan.ts) made from the dataset fingerprint
 * (fingerprint.ts); written as raw little-endian Float32 image files, Uint8 (or Int16) label files
 * and a JSON sidecar that records everything needed to map back to the original grid. A case is
 * redone only when its inputs (path, size, mtime), the settings or the dataset statistics it
 * depends on change; the fingerprint is cached the same way, by the stamps of the training inputs.
 */
import * as path from "node:path";
import { createHash } from "node:crypto";
import type { Mat4, Vec3 } from "./affine.ts";
import { writeFileAtomic } from "./nifti.ts";
import {
  classNames,
  type ImageRef,
  labelValueMap,
  type Manifest,
  type ManifestCase,
  refFrame,
  refPath,
} from "./manifest.ts";
import { LabelAccess } from "./label_access.ts";
import type { ProgressFn } from "./progress.ts";
import { ImageCache, labelRefFor, readRasImage, readRasLabels } from "./case_reader.ts";
import { type Fingerprint, fingerprint } from "./fingerprint.ts";
import {
  type CaseTransformSettings,
  planCaseTransform,
  type PreprocessPlan,
  type PreprocessPlanOptions,
} from "./preprocess_plan.ts";
import { type CaseModalityInput, type Normalisation, transformCase } from "./case_transform.ts";

/** Bumped whenever the on-disk format or the processing changes meaning. */
export const PREPROCESS_VERSION = 2;

/** Where and how to preprocess (the plan's target spacing and crop among them). */
export interface PreprocessOptions extends PreprocessPlanOptions {
  outDir: string;
  /** Which splits to process (default all). */
  splits?: ManifestCase["split"][];
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
  norm: Normalisation;
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

  const cache = new ImageCache(opts.cacheBytes);
  const fingerprintData = opts.fingerprint ??
    await cachedFingerprint(manifest, outDir, { ...opts, labels }, cache);
  const transform = planCaseTransform(manifest, fingerprintData, opts);
  const { target, crop, kinds, ctStats } = transform;
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
        ...transform,
        outDir,
        map,
        nonFinite: opts.nonFinite,
        hash: caseHash,
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

/** Preprocessing of one case: the transform's settings, and how to read and where to write. */
interface CaseSettings extends CaseTransformSettings {
  outDir: string;
  map: Map<number, number>;
  nonFinite?: "error" | "zero";
  hash: string;
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
