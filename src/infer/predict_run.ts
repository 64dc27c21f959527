/**
 * Inference with a trained run on new data.
 *
 * A run comes from `loadRun(runDir)` (src/train/load_run.ts), which rebuilds its model and its
 * Predictor from the run folder.
 *
 * `predictCases(run, cases, { outDir })` reads each case's images and hands them, in memory, to the
 * run's Predictor (src/infer/predictor.ts), which preprocesses them exactly like the training data
 * (RAS reorientation, resampling to the run's target spacing, body crop; MR: per-volume z-score; CT:
 * clipped and z-scored with the TRAINING dataset's statistics), runs sliding-window inference and
 * maps the result back; one label map per predicted modality is written on that modality's
 * original grid, as <outDir>/<caseId>_<modality>.nii.gz (class indices, background 0; written
 * atomically), or one fused <outDir>/<caseId>.nii.gz for co-registered multi-decoder runs.
 *
 * A case may lack some of the run's modalities (unpaired data such as AMOS, where CT and MRI come
 * from different patients) when the run stores stand-ins for them (<run>/partners/, written at the
 * end of training on unpaired data; src/infer/partners.ts): the stand-in is re-centred on the
 * case's grid as in validation, and only the modalities the case has get a label map.
 *
 * Cases come from a folder of <caseId>_<modality>.nii(.gz) files (`casesFromFolder`), a manifest
 * (`casesFromManifest`) or a dataset folder in a known layout (`casesFromDataset`).
 *
 * @module
 */
import { existsSync, statSync } from "node:fs";
import { mkdir, readdir } from "node:fs/promises";
import * as path from "node:path";
import { type ImageRef, loadManifest, type Manifest, refPath } from "../data/manifest.ts";
import { importDataset } from "../data/importers.ts";
import { ImageCache, readImageRef } from "../data/case_reader.ts";
import { type NiftiImage, writeNifti } from "../data/nifti.ts";
import { IMAGE_FILE_RE, isDicomSeriesDir, readImage, stripImageExt } from "../data/image_io.ts";
import type { TrainConfig } from "../train/config.ts";
import type { Volume } from "../data/cases.ts";
import { partnerFiles } from "./partners.ts";
import type { CaseImages, Predictor, PredictorPlan } from "./predictor.ts";

/**
 * What predicting needs of a trained run: `loadRun` (src/train/load_run.ts) gives one, with the
 * run's Predictor.
 */
export interface PredictRun {
  /** The run folder. */
  dir: string;
  plan: PredictorPlan;
  config: Pick<TrainConfig, "nonFinite" | "validation">;
  /** Stored stand-ins for modalities a case lacks (unpaired runs; empty otherwise). */
  partners: Readonly<Record<string, Volume>>;
  /** The folder of the stored stand-ins. */
  partnersDir: string;
  /** The inference core with the run's model, plan, config and stand-ins. */
  predictor: Predictor;
}

/** One case to predict: an image per modality (a file or one frame of a 4-D file). */
export interface PredictCase {
  id: string;
  images: Record<string, ImageRef>;
  /** The modalities share one grid and anatomy (they then get one common crop). */
  aligned?: boolean;
}

export interface PredictOptions {
  outDir: string;
  /** Sliding-window overlap in [0, 0.95] (default: the run's validation overlap). */
  overlap?: number;
  /** Average over axis flips (default: the run's validation setting). */
  mirror?: boolean;
  /**
   * Also write each modality decoder's own map (<case>_<modality>.nii.gz) for co-registered cases,
   * which otherwise get one fused <case>.nii.gz.
   */
  perModality?: boolean;
  /** Called after each case with the files written for it. */
  onProgress?: (done: number, total: number, caseId: string) => void;
  /** Sliding-window progress within the current case (windows done, total, case id). */
  onWindows?: (done: number, total: number, caseId: string) => void;
  /**
   * Voxel values of the written label maps: "index" (default; class indices 0..K-1, as in the run's
   * predictions/ folder) or "file" (the dataset's label values, e.g. 200/500/600 for MS-CMRSeg, so
   * predictions compare directly with the reference files).
   */
  labelValues?: "index" | "file";
}

export interface PredictResult {
  cases: { id: string; files: Record<string, string> }[];
  seconds: number;
}

function fail(what: string, why: string): never {
  throw new Error(`${what}: ${why}`);
}

/**
 * Cases from a folder of <caseId>_<modality>.nii(.gz) files (modality as the run names it, or its
 * nnU-Net channel index in the training dataset's modality order: <caseId>_0000.nii.gz; BraTS 2023
 * names such as <caseId>-t1c.nii.gz work too). MetaImage (.mha, .mhd) and NRRD (.nrrd, .nhdr)
 * files are named the same way, and so are sub-folders holding a DICOM series (<caseId>_<modality>/
 * with the series' files). Files whose name has no modality tag (a label beside the images, say)
 * are skipped; when no file has one, each file is one case: a 4-D file with one frame per modality
 * of the training dataset (Decathlon imagesTs), or the one modality. A folder that is itself a
 * DICOM series is one case of a one-modality model, named after the folder. Hidden files (macOS
 * "._" copies) are skipped.
 */
export async function casesFromFolder(dir: string, run: PredictRun): Promise<PredictCase[]> {
  const root = path.resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory()) {
    fail(`Cannot read input ${root}`, "the folder does not exist");
  }
  const mods = run.plan.dataset.modalities;
  const byLower = new Map(mods.map((m) => [m.toLowerCase(), m]));
  const cases = new Map<string, Record<string, ImageRef>>();
  const names = (await readdir(root)).filter((n) =>
    !n.startsWith(".") &&
    (IMAGE_FILE_RE.test(n)
      ? !statSync(path.join(root, n)).isDirectory()
      : isDicomSeriesDir(path.join(root, n)))
  ).sort();
  if (names.length === 0 && mods.length === 1 && isDicomSeriesDir(root)) {
    const id = path.basename(root).replace(/[^A-Za-z0-9._-]+/g, "_");
    return [{ id, images: { [mods[0]]: root }, aligned: true }];
  }
  const modOf = (tag: string) =>
    byLower.get(tag.toLowerCase()) ?? (/^\d{4}$/.test(tag) ? mods[Number(tag)] : undefined);
  for (const name of names) {
    const stem = stripImageExt(name);
    let id = "", mod: string | undefined;
    for (const sep of ["_", "-"]) {
      const at = stem.lastIndexOf(sep);
      if (at <= 0) continue;
      mod = modOf(stem.slice(at + 1));
      if (mod) {
        id = stem.slice(0, at);
        break;
      }
    }
    if (!mod) continue;
    const imgs = cases.get(id) ?? {};
    if (imgs[mod]) {
      fail(
        `Cannot read input ${root}`,
        `case ${id} has two ${mod} images (${path.basename(refPath(imgs[mod]))}, ${name})`,
      );
    }
    imgs[mod] = path.join(root, name);
    cases.set(id, imgs);
  }
  if (cases.size === 0 && names.length > 0) {
    // No tagged file: 4-D files with one frame per modality (or plain files for one modality).
    for (const name of names) {
      const file = path.join(root, name);
      const frames = mods.length === 1 ? 1 : (await readImage(file)).frames;
      if (frames !== mods.length) {
        fail(
          `Cannot read input ${root}`,
          `no <caseId>_<modality>.nii.gz files for the run's modalities (${
            run.plan.modalities.join(", ")
          }), and ${name} is not a ${mods.length}-frame image (one frame per modality: ${
            mods.join(", ")
          }); found ${names.slice(0, 5).join(", ")}${names.length > 5 ? ", ..." : ""}`,
        );
      }
      cases.set(
        stripImageExt(name),
        mods.length === 1
          ? { [mods[0]]: file }
          : Object.fromEntries(mods.map((m, i) => [m, { path: file, frame: i }])),
      );
    }
  }
  if (cases.size === 0) {
    fail(
      `Cannot read input ${root}`,
      `no <caseId>_<modality>.nii.gz files for the run's modalities (${
        run.plan.modalities.join(", ")
      }); the folder has no image files (.nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr) and no DICOM ` +
        `series folders`,
    );
  }
  // Modalities on one grid are treated like the training data's aligned cases (one common crop);
  // preprocessing keeps separate crops when the grids differ.
  return [...cases].map(([id, images]) => ({ id, images, aligned: true }));
}

function fromManifest(
  m: Manifest,
  run: PredictRun,
  split: string | undefined,
  source: string,
): PredictCase[] {
  // Cases lacking a modality are checked one by one (unpaired runs store stand-ins; checkCase).
  if (!run.plan.modalities.some((x) => m.modalities.includes(x))) {
    fail(
      `Cannot predict ${source}`,
      `it has none of the model's modalities (the model reads ${
        run.plan.modalities.join(", ")
      }; the data has ${m.modalities.join(", ")})`,
    );
  }
  const cases = m.cases.filter((c) => split === undefined || c.split === split);
  if (cases.length === 0) {
    fail(`Cannot predict ${source}`, split ? `no cases in split ${split}` : "no cases");
  }
  return cases.map((c) => ({ id: c.id, images: c.images, aligned: c.aligned }));
}

/** Cases of a manifest file (all splits unless `split` is given; labels are ignored). */
export async function casesFromManifest(
  file: string,
  run: PredictRun,
  opts: { split?: string } = {},
): Promise<PredictCase[]> {
  if (!existsSync(file)) fail(`Cannot read manifest ${file}`, "file not found");
  return fromManifest(await loadManifest(file), run, opts.split, file);
}

/** Cases of a dataset folder: its manifest.yaml, else the detected layout (MS-CMRSeg, AMOS, ...). */
export async function casesFromDataset(
  dir: string,
  run: PredictRun,
  opts: { split?: string } = {},
): Promise<PredictCase[]> {
  const root = path.resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory()) {
    fail(`Cannot read dataset ${root}`, "the folder does not exist");
  }
  const own = path.join(root, "manifest.yaml");
  const m = existsSync(own) ? await loadManifest(own) : await importDataset(root);
  return fromManifest(m, run, opts.split, root);
}

function checkCase(c: PredictCase, run: PredictRun): void {
  if (!/^[A-Za-z0-9._-]+$/.test(c.id)) {
    fail(
      `Cannot predict case '${c.id}'`,
      "case ids may use letters, digits, '.', '_' and '-' only",
    );
  }
  const have = run.plan.modalities.filter((m) => c.images[m] !== undefined);
  const reads = `the model reads ${run.plan.modalities.join(", ")}; the case has ${
    Object.keys(c.images).join(", ") || "none"
  }`;
  if (have.length === 0) {
    fail(`Cannot predict case ${c.id}`, `it has no image the model reads (${reads})`);
  }
  for (const m of run.plan.modalities) {
    if (c.images[m] === undefined) {
      if (run.partners[m]) continue;
      fail(
        `Cannot predict case ${c.id}`,
        `it has no ${m} image (${reads}), and run ${run.dir} stores no stand-in ${m} volume ` +
          `(${
            path.relative(run.dir, partnerFiles(run.partnersDir, m).nifti)
          }) to pair it with. Runs store ` +
          `stand-ins only when trained on unpaired data (cases lacking a modality); this run was ` +
          `trained on paired data, so give every case all of ${
            run.plan.modalities.join(", ")
          }; or ` +
          `before runs stored them: resuming it where its training data is (train --resume) ` +
          `writes them`,
      );
    }
    const p = refPath(c.images[m]);
    if (!existsSync(p)) fail(`Cannot predict case ${c.id}`, `${m} image ${p} does not exist`);
  }
}

/**
 * A case's images in memory, as the Predictor takes them: the run's modalities the case has (a
 * missing one gets the run's stand-in), NaN/Inf handled as the run's training data was.
 */
export async function readPredictCase(
  run: PredictRun,
  c: PredictCase,
  cache?: ImageCache,
): Promise<CaseImages> {
  const images: Record<string, NiftiImage> = {};
  for (const m of run.plan.modalities) {
    if (c.images[m] === undefined) continue;
    images[m] = await readImageRef(c.images[m], {
      id: c.id,
      what: `images.${m}`,
      nonFinite: run.config.nonFinite,
      cache,
    });
  }
  return { id: c.id, images, aligned: c.aligned };
}

/** Predicts every case and writes <outDir>/<caseId>_<modality>.nii.gz (see module doc). */
export async function predictCases(
  run: PredictRun,
  cases: PredictCase[],
  opts: PredictOptions,
): Promise<PredictResult> {
  const t0 = performance.now();
  if (cases.length === 0) throw new Error("Cannot predict: no cases given");
  const ids = new Set<string>();
  for (const c of cases) {
    checkCase(c, run);
    if (ids.has(c.id)) fail(`Cannot predict case ${c.id}`, "the id appears twice");
    ids.add(c.id);
  }
  const overlap = opts.overlap ?? run.config.validation.overlap;
  if (!(overlap >= 0 && overlap <= 0.95)) {
    throw new Error(`Cannot predict: overlap must be in [0, 0.95], got ${overlap}`);
  }
  const labelValues = opts.labelValues ?? "index";
  run.predictor.labelValues(labelValues);
  const outDir = path.resolve(opts.outDir);
  await mkdir(outDir, { recursive: true });
  const result: PredictResult = { cases: [], seconds: 0 };
  // Keeps the last 4-D file decoded, so its frames (one per modality) are read once.
  const cache = new ImageCache(0);
  for (const c of cases) {
    const images = await readPredictCase(run, c, cache);
    const maps = await run.predictor.predict(images, {
      overlap,
      mirror: opts.mirror,
      perModality: opts.perModality,
      labelValues,
      onWindows: opts.onWindows ? (d, t) => opts.onWindows!(d, t, c.id) : undefined,
    });
    const files: Record<string, string> = {};
    for (const o of maps) {
      const file = path.join(
        outDir,
        o.output === "fused" ? `${c.id}.nii.gz` : `${c.id}_${o.modality}.nii.gz`,
      );
      await writeNifti(file, { data: o.values, dims: o.dims, affine: o.affine }, {
        datatype: o.datatype,
      });
      files[o.output] = file;
    }
    result.cases.push({ id: c.id, files });
    opts.onProgress?.(result.cases.length, cases.length, c.id);
  }
  result.seconds = (performance.now() - t0) / 1000;
  return result;
}
