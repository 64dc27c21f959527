/**
 * Inference with a trained run on new data.
 *
 * `loadRun(runDir)` rebuilds a run's model from its config.json and plan.json (both written by
 * `trainTask`) and restores the weights of best.ckpt, last.ckpt or a given checkpoint, after checking
 * that the checkpoint was written for the same model.
 *
 * `predictCases(run, cases, { outDir })` preprocesses the new images exactly like the training data
 * (RAS reorientation, resampling to the run's target spacing, body crop; MR: per-volume z-score; CT:
 * clipped and z-scored with the TRAINING dataset's statistics), runs sliding-window inference and
 * writes one label map per predicted modality on that modality's original grid, as
 * <outDir>/<caseId>_<modality>.nii.gz (class indices, background 0; written atomically).
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
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { initBackend } from "../engine.ts";
import {
  type ImageRef,
  labelValueMap,
  loadManifest,
  type Manifest,
  refPath,
} from "../data/manifest.ts";
import { importDataset } from "../data/importers.ts";
import { loadCaseRecord, preprocessDataset, probabilitiesToOriginal } from "../data/preprocess.ts";
import { loadUnlabeledCase } from "../data/cases.ts";
import { writeNifti } from "../data/nifti.ts";
import { IMAGE_FILE_RE, isDicomSeriesDir, readImage, stripImageExt } from "../data/image_io.ts";
import { Rng } from "../data/rng.ts";
import { signatureDifferences } from "../train/run.ts";
import { parseTrainConfig, type TrainConfig } from "../train/config.ts";
import { resolveRegions } from "../train/regions.ts";
import { buildMethod, type MethodModel } from "../train/methods.ts";
import { loadModelWeights, modelSignature, type RunPlan, sameModel } from "../train/run.ts";
import type { PreparedData } from "../train/data.ts";
import { finalLabels, FUSED_OUTPUT, predictCase } from "../train/validate.ts";
import type { Volume } from "../data/cases.ts";
import { loadPartners, partnerFiles } from "./partners.ts";

export interface LoadRunOptions {
  /** "best" (default; last.ckpt when the run has no best.ckpt), "last", or a checkpoint file. */
  checkpoint?: string;
  /** Compute backend (default: the run's). */
  device?: "cpu" | "cuda";
  /** CPU threads (default: the run's; 0 = all cores). */
  threads?: number;
}

/** A trained run ready for inference. */
export interface LoadedRun {
  dir: string;
  config: TrainConfig;
  plan: RunPlan;
  model: MethodModel;
  /** The checkpoint file the weights came from, and its iteration. */
  checkpoint: string;
  iteration: number;
  /** Stored stand-ins for modalities a case lacks (unpaired runs; empty otherwise). */
  partners: Record<string, Volume>;
  dispose(): void;
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
  /** Folder for the preprocessed inputs (default: a temporary folder, removed afterwards). */
  workDir?: string;
}

export interface PredictResult {
  cases: { id: string; files: Record<string, string> }[];
  seconds: number;
}

function fail(what: string, why: string): never {
  throw new Error(`${what}: ${why}`);
}

async function readJson<T>(file: string, what: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    fail(what, `${file} does not exist`);
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    fail(what, `${file} is not valid JSON (${(e as Error).message})`);
  }
}

/** The checkpoint file `choice` names in `runDir`. */
export function resolveCheckpoint(runDir: string, choice = "best"): string {
  const what = `Cannot load run ${runDir}`;
  if (choice === "best" || choice === "last") {
    const best = path.join(runDir, "best.ckpt"), last = path.join(runDir, "last.ckpt");
    if (choice === "best" && existsSync(best)) return best;
    if (existsSync(last)) return last;
    fail(
      what,
      choice === "best" ? `it has neither best.ckpt nor last.ckpt` : `${last} does not exist`,
    );
  }
  for (const p of [path.resolve(choice), path.resolve(runDir, choice)]) if (existsSync(p)) return p;
  fail(what, `checkpoint ${choice} does not exist (expected best, last or a .ckpt file)`);
}

/** Rebuilds a run's model and restores its weights (see module doc). */
export async function loadRun(runDir: string, opts: LoadRunOptions = {}): Promise<LoadedRun> {
  const dir = path.resolve(runDir);
  const what = `Cannot load run ${dir}`;
  if (!existsSync(dir) || !statSync(dir).isDirectory()) fail(what, "the folder does not exist");
  const rawConfig = await readJson<Record<string, unknown>>(path.join(dir, "config.json"), what);
  let config: TrainConfig;
  try {
    // Runs written before region outputs existed have none.
    config = parseTrainConfig(
      rawConfig && typeof rawConfig === "object" && !("regions" in rawConfig)
        ? { ...rawConfig, regions: "none" }
        : rawConfig,
    );
  } catch (e) {
    fail(what, `config.json is not a valid training config (${(e as Error).message})`);
  }
  const configFile = path.join(dir, "config.json");
  const planFile = path.join(dir, "plan.json");
  if (!existsSync(planFile)) {
    fail(
      what,
      `${planFile} does not exist (the run was trained before runs recorded their plan; resuming ` +
        `it writes one and trains only the iterations left, if any: \`train ${config.task} ` +
        `--config ${configFile} --out ${dir} --resume\`)`,
    );
  }
  const plan = await readJson<RunPlan>(planFile, what);
  if (plan.version !== 1) fail(what, `${planFile} has format version ${plan.version}, expected 1`);
  const signature = modelSignature(config, plan.modalities, plan.classes.length, plan.network);
  if (!sameModel(signature, plan.signature)) {
    fail(
      what,
      `config.json and plan.json describe different models (${
        signatureDifferences(signature, plan.signature, "in config.json", "in plan.json").join("; ")
      })`,
    );
  }
  const file = resolveCheckpoint(dir, opts.checkpoint);
  const partners = await loadPartners(dir, plan.modalities);
  initBackend({
    device: opts.device ?? config.device,
    threads: (opts.threads ?? config.threads) || undefined,
    deterministic: config.deterministic,
  });
  const init = new Rng(config.seed, "predict");
  const model = buildMethod({
    config,
    plan: plan.network,
    numClasses: plan.classes.length,
    regions: config.method === "mutual" ? null : resolveRegions(config.regions, plan.classes),
    modalities: plan.modalities.length,
    primary: plan.primary,
    rng: () => {
      const r = init.derive("init", init.nextU32());
      return () => r.next();
    },
    // The checkpoint holds every weight: the backbone's pretrained file is not needed (or read).
    pretrained: false,
  });
  let iteration: number;
  try {
    iteration = loadModelWeights(file, signature, model).iteration;
  } catch (e) {
    model.dispose();
    throw e;
  }
  model.student.setTraining(false);
  return {
    dir,
    config,
    plan,
    model,
    checkpoint: file,
    iteration,
    partners,
    dispose: () => model.dispose(),
  };
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
export async function casesFromFolder(dir: string, run: LoadedRun): Promise<PredictCase[]> {
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
  run: LoadedRun,
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
  run: LoadedRun,
  opts: { split?: string } = {},
): Promise<PredictCase[]> {
  if (!existsSync(file)) fail(`Cannot read manifest ${file}`, "file not found");
  return fromManifest(await loadManifest(file), run, opts.split, file);
}

/** Cases of a dataset folder: its manifest.yaml, else the detected layout (MS-CMRSeg, AMOS, ...). */
export async function casesFromDataset(
  dir: string,
  run: LoadedRun,
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

function checkCase(c: PredictCase, run: LoadedRun): void {
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
            path.relative(run.dir, partnerFiles(run.dir, m).nifti)
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

/** Voxel value written for each class index. */
function labelValuesOf(plan: RunPlan, mode: "index" | "file"): number[] {
  if (mode === "index") return plan.classes.map((_, k) => k);
  if (mode !== "file") {
    throw new Error(`Cannot predict: labelValues must be "index" or "file", got '${mode}'`);
  }
  const classes = plan.dataset.classes;
  return plan.classes.map((name, k) => (k === 0 ? classes.background ?? 0 : classes[name]));
}

/** Predicts every case and writes <outDir>/<caseId>_<modality>.nii.gz (see module doc). */
export async function predictCases(
  run: LoadedRun,
  cases: PredictCase[],
  opts: PredictOptions,
): Promise<PredictResult> {
  const t0 = performance.now();
  const plan = run.plan;
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
  const config: TrainConfig = {
    ...run.config,
    validation: {
      ...run.config.validation,
      overlap,
      mirror: opts.mirror ?? run.config.validation.mirror,
    },
  };
  const outDir = path.resolve(opts.outDir);
  await mkdir(outDir, { recursive: true });

  const manifest: Manifest = {
    task: plan.dataset.task,
    modalities: plan.dataset.modalities,
    modalityKinds: plan.dataset.modalityKinds,
    classes: plan.dataset.classes,
    ...(plan.dataset.labelMap ? { labelMap: plan.dataset.labelMap } : {}),
    cases: cases.map((c) => ({
      id: c.id,
      images: Object.fromEntries(
        plan.modalities.filter((m) => c.images[m] !== undefined).map((m) => [m, c.images[m]]),
      ),
      labeled: false,
      split: "test" as const,
      ...(c.aligned !== undefined ? { aligned: c.aligned } : {}),
    })),
  };
  const work = opts.workDir
    ? path.resolve(opts.workDir)
    : await mkdtemp(path.join(os.tmpdir(), "comodal-predict-"));
  await mkdir(work, { recursive: true });
  const result: PredictResult = { cases: [], seconds: 0 };
  try {
    const pp = await preprocessDataset(manifest, {
      fingerprint: plan.fingerprint,
      outDir: work,
      targetSpacing: plan.targetSpacing,
      splits: ["test"],
      nonFinite: run.config.nonFinite,
    });
    for (const m of plan.modalities) {
      const want = plan.normalization[m], got = pp.fingerprint.perModality[m];
      if (
        want.kind === "ct" &&
        (got.mean !== want.mean || got.std !== want.std || got.p005 !== want.p005 ||
          got.p995 !== want.p995)
      ) {
        throw new Error(
          `Cannot predict: preprocessing did not use the training statistics for ${m} (CT); this is a bug in predict`,
        );
      }
    }
    const data: PreparedData = {
      manifest,
      plan: pp,
      preprocessedDir: work,
      modalities: plan.modalities,
      primary: plan.primary,
      classes: plan.classes,
      labelMap: labelValueMap(manifest),
      targetSpacing: pp.targetSpacing,
      stage: { stage: "fullres", spacing: pp.targetSpacing, why: "" },
      labeled: [],
      unlabeled: [],
      validation: [],
      describe: {},
    };
    const K = plan.classes.length;
    const values = labelValuesOf(plan, opts.labelValues ?? "index");
    const datatype = Math.max(...values) <= 255 && Math.min(...values) >= 0 ? "uint8" : "int16";
    for (const c of cases) {
      const rec = await loadCaseRecord(work, c.id);
      const cs = await loadUnlabeledCase(work, rec, { modalities: plan.modalities });
      // Only the modalities the case has are predicted; a missing one gets the run's stand-in.
      const probs = await predictCase(run.model, data, cs, {
        patch: plan.patch,
        config,
        partners: run.partners,
        onWindows: opts.onWindows ? (d, t) => opts.onWindows!(d, t, c.id) : undefined,
      });
      const files: Record<string, string> = {};
      const fused = probs.has(FUSED_OUTPUT);
      for (const [o, p] of probs) {
        // Co-registered cases of multi-decoder models: one fused <case>.nii.gz, and the decoders'
        // own maps only on request (perModality).
        if (fused && o !== FUSED_OUTPUT && !opts.perModality) continue;
        const m = plan.modalities[o === FUSED_OUTPUT ? run.model.outputs[0] : o];
        const pm = rec.modalities[m];
        const labels = finalLabels(probabilitiesToOriginal(p, K, pm), K, pm.source.dims, config);
        const file = path.join(
          outDir,
          o === FUSED_OUTPUT ? `${c.id}.nii.gz` : `${c.id}_${m}.nii.gz`,
        );
        const data = datatype === "uint8"
          ? new Uint8Array(labels.length)
          : new Int16Array(labels.length);
        for (let i = 0; i < labels.length; i++) data[i] = values[labels[i]];
        await writeNifti(file, { data, dims: pm.source.dims, affine: pm.source.affine }, {
          datatype,
        });
        files[o === FUSED_OUTPUT ? "fused" : m] = file;
      }
      result.cases.push({ id: c.id, files });
      opts.onProgress?.(result.cases.length, cases.length, c.id);
    }
  } finally {
    if (!opts.workDir) await rm(work, { recursive: true, force: true });
  }
  result.seconds = (performance.now() - t0) / 1000;
  return result;
}
