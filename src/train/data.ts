/**
 * Data for a training run: resolve the dataset (built-in synthetic phantoms, a folder in a known
 * layout, or a manifest), preprocess it (cached on disk), pick the labeled cases, and load the
 * training and validation cases. Label files of cases the run treats as unlabeled, and of test
 * cases, are never opened: see labelsInUse.
 */
import { existsSync } from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { importDataset } from "../data/importers.ts";
import { labelValueMap, loadManifest, type Manifest, selectLabeled } from "../data/manifest.ts";
import { loadCaseRecord, preprocessDataset } from "../data/prepared_cache.ts";
import type { PreprocessPlan } from "../data/preprocess_plan.ts";
import {
  type LabeledCase,
  loadedBytes,
  loadPreprocessedCases,
  type UnlabeledCase,
} from "../data/cases.ts";
import { Rng } from "../data/rng.ts";
import { LabelAccess } from "../data/label_access.ts";
import { SYNTH_TASKS, synthesize, type SynthTask } from "../data/synth.ts";
import type { Method, TrainConfig } from "./config.ts";
import type { Vec3 } from "../data/affine.ts";
import { autoPatchSize } from "../nn/plan.ts";
import type { Triple } from "../nn/layers.ts";
import { defaultPatchVoxels } from "./patch.ts";

/** Folder for generated and preprocessed data: $COMODAL_CACHE or <repo>/.cache. */
let cacheOverride: string | null = null;
let memoryOverride: number | null = null;

/**
 * Sets this module's cache folder (null: back to $COMODAL_CACHE or .cache/). Tests use it instead
 * of the environment: `deno test --parallel` runs every test file in one process, so an
 * environment variable one file sets is seen by the others.
 */
export function setCacheRoot(dir: string | null): void {
  cacheOverride = dir === null ? null : path.resolve(dir);
}

/** Stands in for the available memory in bytes (null: the system's, or $COMODAL_AVAILABLE_MEMORY). */
export function setAvailableMemory(bytes: number | null): void {
  memoryOverride = bytes;
}

export function cacheRoot(): string {
  if (cacheOverride) return cacheOverride;
  const env = Deno.env.get("COMODAL_CACHE");
  if (env) return path.resolve(env);
  return path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../.cache");
}

export interface PreparedData {
  manifest: Manifest;
  plan: PreprocessPlan;
  preprocessedDir: string;
  /** Modalities the run uses, in model input order. */
  modalities: string[];
  /** Index (into modalities) of the modality single-modality methods use. */
  primary: number;
  /** Class names, background first. */
  classes: string[];
  labelMap: Map<number, number>;
  /** Target spacing (x, y, z) in mm. */
  targetSpacing: Vec3;
  /** Full-resolution or low-resolution stage (nnU-Net 3d_fullres / 3d_lowres) and why. */
  stage: StagePlan;
  labeled: LabeledCase[];
  unlabeled: UnlabeledCase[];
  validation: LabeledCase[];
  /**
   * The label files the run may open (labeled training cases in use, labeled validation cases);
   * `manifest` names no other label file. Absent: none (prediction).
   */
  labels?: LabelAccess;
  describe: Record<string, unknown>;
}

export interface StagePlan {
  stage: "fullres" | "lowres";
  /** Target spacing (x, y, z) in mm of the chosen stage. */
  spacing: Vec3;
  /** One line for the user: the coverage that decided it ("" when nothing was planned). */
  why: string;
}

/** Below this share of the median image covered by the patch, a low-resolution stage is planned. */
export const LOWRES_COVERAGE = 0.25;

/**
 * nnU-Net's choice between 3d_fullres and 3d_lowres. `shapes` are the training images' dims
 * (x, y, z) at `spacing` (x, y, z) after the crop. When the patch planned within `budget` voxels
 * covers less than LOWRES_COVERAGE of the median image, the spacing grows by 3% per step (only the
 * finer axes while some axis is more than 2x finer than the coarsest, as nnU-Net does) until it does.
 */
export function planStage(shapes: readonly Vec3[], spacing: Vec3, budget: number): StagePlan {
  const med = [0, 1, 2].map((a) => {
    const s = shapes.map((x) => x[a]).sort((p, q) => p - q);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }) as Vec3;
  const at = (sp: Vec3) => med.map((n, a) => Math.max(1, (n * spacing[a]) / sp[a])) as Vec3;
  const coverage = (sp: Vec3) => {
    const m = at(sp);
    const dhw: Triple = [Math.round(m[2]), Math.round(m[1]), Math.round(m[0])];
    const p = autoPatchSize(dhw, [sp[2], sp[1], sp[0]], budget);
    return {
      patch: p,
      median: dhw,
      share: Math.min(1, (p[0] * p[1] * p[2]) / (dhw[0] * dhw[1] * dhw[2])),
    };
  };
  const fmt = (v: readonly number[]) => `[${v.map((x) => +x.toFixed(2)).join(", ")}]`;
  const full = coverage(spacing);
  const pct = (x: number) => `${Math.round(100 * x)}%`;
  if (full.share >= LOWRES_COVERAGE) {
    return {
      stage: "fullres",
      spacing,
      why:
        `Plan: full resolution ${fmt(spacing)} mm (x, y, z): the patch ${fmt(full.patch)} covers ` +
        `${pct(full.share)} of the median image ${fmt(full.median)} (D, H, W)`,
    };
  }
  const sp = [...spacing] as Vec3;
  for (let i = 0; i < 500 && coverage(sp).share < LOWRES_COVERAGE; i++) {
    const mx = Math.max(...sp);
    const fine = sp.map((v) => mx / v > 2);
    for (let a = 0; a < 3; a++) if (!fine.some((f) => f) || fine[a]) sp[a] *= 1.03;
  }
  const low = coverage(sp);
  return {
    stage: "lowres",
    spacing: sp,
    why:
      `Plan: low resolution ${fmt(sp)} mm (x, y, z), as nnU-Net's 3d_lowres: at ${
        fmt(spacing)
      } mm the ` +
      `patch ${fmt(full.patch)} would cover ${pct(full.share)} of the median image ${
        fmt(full.median)
      } ` +
      `(D, H, W; below ${pct(LOWRES_COVERAGE)}); at ${fmt(sp)} mm the patch ${
        fmt(low.patch)
      } covers ` +
      `${pct(low.share)} of ${
        fmt(low.median)
      }; predictions are mapped back to the original grid. ` +
      `Set stage=fullres or targetSpacing to choose`,
  };
}

/** A short hash of the phantom generator's source, so a changed generator is not served stale data. */
function generatorVersion(): string {
  const dir = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../data");
  const text = ["synth.ts", "phantom.ts"].map((f) => {
    try {
      return Deno.readTextFileSync(path.join(dir, f));
    } catch {
      return f;
    }
  }).join("\n");
  return shortHash(text).slice(0, 8);
}

/** A task argument naming an existing folder (a dataset in one of the importers' layouts). */
function isDatasetFolder(task: string): boolean {
  if ((SYNTH_TASKS as readonly string[]).includes(task) && !task.includes("/")) return false;
  try {
    return Deno.statSync(task).isDirectory;
  } catch {
    return false;
  }
}

function isManifestPath(task: string): boolean {
  return /\.(ya?ml|json)$/i.test(task);
}

function shortHash(s: string): string {
  return createHash("sha256").update(s).digest("hex").slice(0, 12);
}

async function resolveManifest(
  c: TrainConfig,
  quiet: boolean,
): Promise<{ manifest: Manifest; source: string }> {
  if (isManifestPath(c.task)) {
    if (!existsSync(c.task)) throw new Error(`Cannot train: manifest ${c.task} does not exist`);
    return { manifest: await loadManifest(c.task), source: path.resolve(c.task) };
  }
  if (isDatasetFolder(c.task)) {
    // A dataset folder given as the task: its own manifest.yaml, or the layout detected.
    const dir = path.resolve(c.task);
    const own = path.join(dir, "manifest.yaml");
    if (!quiet && !existsSync(own)) console.error(`Importing the dataset in ${dir}`);
    return {
      manifest: existsSync(own) ? await loadManifest(own) : await importDataset(dir),
      source: dir,
    };
  }
  if (!(SYNTH_TASKS as readonly string[]).includes(c.task)) {
    throw new Error(
      `Unknown task '${c.task}': expected one of ${
        SYNTH_TASKS.join(", ")
      }, a manifest file (.yaml/.json) or a dataset folder (MS-CMRSeg, AMOS, Decathlon, nnU-Net raw, BraTS)`,
    );
  }
  let dir = c.data ? path.resolve(c.data) : "";
  if (!dir) {
    dir = path.join(
      cacheRoot(),
      "synthetic",
      `${c.task}-n${c.syntheticCases}-s0-${generatorVersion()}`,
    );
    if (!existsSync(path.join(dir, ".complete"))) {
      if (!quiet) {
        console.error(
          `Generating the built-in synthetic ${c.task} dataset (${c.syntheticCases} cases) in ${dir}`,
        );
      }
      await synthesize(c.task as SynthTask, {
        outDir: dir,
        cases: c.syntheticCases,
        seed: 0,
        onProgress: quiet ? undefined : (done: number, total: number) => {
          if (done === total || done % 5 === 0) console.error(`  synthesised ${done}/${total}`);
        },
      });
      await Deno.writeTextFile(path.join(dir, ".complete"), new Date().toISOString() + "\n");
    }
  } else if (!existsSync(dir)) {
    throw new Error(`Cannot train ${c.task}: data folder ${dir} does not exist`);
  }
  // A folder with its own manifest.yaml (the synthetic tasks write one) uses it; otherwise the
  // layout is detected (MS-CMRSeg, AMOS, Decathlon, nnU-Net raw).
  const own = path.join(dir, "manifest.yaml");
  const manifest = existsSync(own) ? await loadManifest(own) : await importDataset(dir);
  if (manifest.task !== c.task && !c.data) {
    throw new Error(`Synthetic data in ${dir} is for task ${manifest.task}, not ${c.task}`);
  }
  return { manifest, source: dir };
}

/**
 * What `method: auto` trains on a manifest: early fusion when every case has each of `modalities`
 * and is marked aligned (co-registered: BraTS, Decathlon, nnU-Net raw), since at equal wall time
 * CMC's encoder and decoder per modality make it several times slower per iteration on such data
 * (README, "Results on real data"); CMC when modalities are unpaired or misaligned, where voxel-wise
 * channel stacking has no meaning; supervised when there is one modality.
 */
export function autoMethod(
  manifest: Manifest,
  modalities: readonly string[],
): { method: Method; why: string } {
  if (modalities.length < 2) {
    return { method: "supervised", why: `one modality (${modalities.join(", ") || "none"})` };
  }
  const apart = manifest.cases.filter((k) =>
    k.aligned !== true || modalities.some((m) => k.images[m] === undefined)
  );
  if (apart.length === 0) {
    return {
      method: "early-fusion",
      why: `every case has ${modalities.join(", ")} co-registered`,
    };
  }
  return {
    method: "cmc",
    why: `${apart.length} of ${manifest.cases.length} cases lack a modality or are not marked ` +
      `co-registered (first: ${apart[0].id})`,
  };
}

/** The modalities a run uses: `modalities`, else all (cardiac with a two-branch method: the first two). */
function runModalities(c: TrainConfig, manifest: Manifest): string[] {
  return c.modalities ??
    (c.task === "cardiac" &&
        (c.method === "cmc" || c.method === "early-fusion" || c.method === "mutual" ||
          c.method === "auto")
      ? manifest.modalities.slice(0, 2)
      : [...manifest.modalities]);
}

/** The task's manifest and where it came from, found once and handed on to `prepareData`. */
export interface FoundData {
  manifest: Manifest;
  source: string;
}

/**
 * Resolves `method: auto` in place from the data (see autoMethod); prints the choice unless quiet.
 * Returns the manifest it read (undefined when the method was given), for `prepareData`.
 */
export async function resolveMethod(
  c: TrainConfig,
  opts: { quiet?: boolean } = {},
): Promise<FoundData | undefined> {
  if (c.method !== "auto") return undefined;
  const found = await resolveManifest(c, opts.quiet ?? false);
  const manifest = found.manifest;
  const r = autoMethod(manifest, runModalities(c, manifest));
  c.method = r.method;
  if (!opts.quiet) {
    console.error(
      `Method ${r.method} (method=auto: ${r.why}; give --method to choose, e.g. --method cmc)`,
    );
  }
  return found;
}

export async function prepareData(
  c: TrainConfig,
  opts: { quiet?: boolean; found?: FoundData } = {},
): Promise<PreparedData> {
  const quiet = opts.quiet ?? false;
  const { manifest: found, source } = opts.found ?? await resolveMethod(c, opts) ??
    await resolveManifest(c, quiet);
  // Unlabeled means never opened: the run's label files are decided here, once, and from here on
  // the manifest names no label file of an unlabeled or test case (see labelsInUse).
  const { labels, labeledIds } = labelsInUse(found, c);
  const manifest = labels.restrict(found);
  // Every modality of the data by default (BraTS: four sequences), except on the cardiac task, whose
  // default is the paper's pair (the first two sequences, bSSFP and LGE); `modalities` overrides.
  const modalities = runModalities(c, manifest);
  for (const m of modalities) {
    if (!manifest.modalities.includes(m)) {
      throw new Error(
        `Modality ${m} is not in the ${manifest.task} data (it has ${
          manifest.modalities.join(", ")
        })`,
      );
    }
  }
  const needsTwo = c.method === "cmc" || c.method === "early-fusion" || c.method === "mutual";
  if (needsTwo && modalities.length < 2) {
    throw new Error(
      `Method ${c.method} needs at least 2 modalities; the data has ${
        modalities.join(", ") || "none"
      }`,
    );
  }
  const primary = c.supervisedModality ? modalities.indexOf(c.supervisedModality) : 0;
  if (primary < 0) {
    throw new Error(
      `supervisedModality ${c.supervisedModality} is not one of ${modalities.join(", ")}`,
    );
  }

  // Preprocessed data per target spacing (x, y, z); undefined = the fingerprint's median spacing.
  const dirFor = (spacingXYZ: readonly number[] | undefined) =>
    path.join(
      cacheRoot(),
      "preprocessed",
      `${manifest.task}-${
        shortHash(
          source +
            JSON.stringify(spacingXYZ ? [spacingXYZ[2], spacingXYZ[1], spacingXYZ[0]] : null) +
            (c.nonFinite === "zero" ? "nonfinite=zero" : ""),
        )
      }`,
    );
  const preprocessAt = (spacingXYZ: readonly number[] | undefined) =>
    preprocessDataset(manifest, {
      outDir: dirFor(spacingXYZ),
      nonFinite: c.nonFinite,
      targetSpacing: spacingXYZ ? [...spacingXYZ] : undefined,
      onProgress: quiet ? undefined : (done, total, label) => {
        if (done === total || done % 5 === 0) {
          console.error(`  preprocessed ${done}/${total} ${label}`);
        }
      },
    });
  const given = c.targetSpacing
    ? [c.targetSpacing[2], c.targetSpacing[1], c.targetSpacing[0]]
    : undefined;
  let ppDir = dirFor(given);
  let plan = await preprocessAt(given);
  // nnU-Net's 3d_lowres rule: when the planned patch covers less than a quarter of the median
  // training image, train (and predict) at a coarser spacing where it covers a quarter; predictions
  // are mapped back to the original grid.
  let stage: StagePlan = { stage: "fullres", spacing: plan.targetSpacing, why: "" };
  if (!c.targetSpacing && !c.patchSize && c.stage === "auto") {
    const shapes: Vec3[] = [];
    for (const x of plan.cases.filter((x) => x.split === "train")) {
      const rec = await loadCaseRecord(ppDir, x.id);
      for (const m of modalities) if (rec.modalities[m]) shapes.push(rec.modalities[m].dims);
    }
    if (shapes.length) {
      stage = planStage(shapes, plan.targetSpacing, c.patchVoxels ?? defaultPatchVoxels(c.device));
      if (stage.stage === "lowres") {
        ppDir = dirFor(stage.spacing);
        plan = await preprocessAt(stage.spacing);
      }
    }
  }
  if (stage.why && !quiet) console.error(stage.why);

  // Subsets (maxTrainCases / maxValidationCases), then a memory check before anything is loaded.
  const inUse = (split: string) =>
    plan.cases.filter((x) => x.split === split && x.modalities.some((m) => modalities.includes(m)));
  const trainIds = subset(
    inUse("train").map((x) => x.id),
    c.maxTrainCases,
    c.seed,
    "train",
    labeledIds,
  );
  const valIds = subset(inUse("val").map((x) => x.id), c.maxValidationCases, c.seed, "val");
  const need = await loadedBytes(ppDir, [...trainIds, ...valIds], modalities);
  // COMODAL_AVAILABLE_MEMORY (bytes) stands in for the system's figure (tests; shared machines).
  const limit = memoryOverride ?? Number(Deno.env.get("COMODAL_AVAILABLE_MEMORY"));
  const available = limit > 0 ? limit : Deno.systemMemoryInfo().available;
  if (need > 0.8 * available) {
    const gb = (b: number) => (b / 2 ** 30).toFixed(1);
    throw new Error(
      `Cannot train on ${manifest.task}: its ${trainIds.length} training and ${valIds.length} validation ` +
        `case(s) need ${gb(need)} GiB in memory after preprocessing, and this machine has ` +
        `${gb(available)} GiB available; use a subset with --set maxTrainCases=N and ` +
        `--set maxValidationCases=N`,
    );
  }
  const train = await loadPreprocessedCases(ppDir, {
    splits: ["train"],
    labeledIds,
    modalities,
    ids: trainIds,
  });
  const val = await loadPreprocessedCases(ppDir, { splits: ["val"], modalities, ids: valIds });
  if (train.labeled.length === 0) {
    throw new Error(`Cannot train on ${manifest.task}: no labeled training case has a label map`);
  }
  return {
    manifest,
    plan,
    preprocessedDir: ppDir,
    modalities,
    primary,
    classes: plan.classes,
    labelMap: labelValueMap(manifest),
    targetSpacing: plan.targetSpacing,
    stage,
    labeled: train.labeled,
    unlabeled: train.unlabeled,
    validation: val.labeled,
    labels,
    describe: {
      source,
      preprocessed: ppDir,
      modalities,
      classes: plan.classes,
      targetSpacing: plan.targetSpacing,
      stage: stage.stage,
      labeled: train.labeled.map((x) => x.id),
      unlabeled: train.unlabeled.length,
      validation: val.labeled.map((x) => x.id),
    },
  };
}

/**
 * The label files a run may open: those of the labeled training cases it keeps (every labeled one,
 * or the `labeled` count or ratio drawn with the seed) and of the labeled validation cases. Test
 * cases' labels are for evaluation after prediction (`evaluate`), never for training.
 */
function labelsInUse(
  manifest: Manifest,
  c: TrainConfig,
): { labels: LabelAccess; labeledIds: string[] } {
  const trainLabeled = manifest.cases.filter((x) => x.split === "train" && x.labeled);
  if (trainLabeled.length === 0) {
    throw new Error(`Cannot train on ${manifest.task}: no labeled training cases`);
  }
  // Built-in synthetic data is fully labeled; unless told otherwise, half of its training cases
  // keep their labels so the default run is semi-supervised. Real data keeps its own flags.
  // (A synthetic task's name is never read as a dataset folder: see isDatasetFolder.)
  const builtIn = !c.data && (SYNTH_TASKS as readonly string[]).includes(c.task);
  const labeled = c.labeled ?? (builtIn ? 0.5 : undefined);
  const labeledIds = labeled === undefined
    ? trainLabeled.map((x) => x.id)
    : selectLabeled(manifest.cases, { labeled, seed: c.seed });
  const keep = new Set(labeledIds);
  const cases = manifest.cases.filter((x) =>
    x.split === "train" ? keep.has(x.id) : x.split === "val" && x.labeled
  );
  return { labels: LabelAccess.forCases(cases, "this training run"), labeledIds };
}

/**
 * At most `max` of `ids`, drawn with the seed (all of them when max is unset or large enough). When
 * `labeled` is given, the subset keeps at least one of those ids.
 */
function subset(
  ids: string[],
  max: number | undefined,
  seed: number,
  what: string,
  labeled?: readonly string[],
): string[] {
  if (max === undefined || ids.length <= max) return ids;
  const r = new Rng(seed, `subset-${what}`);
  const order = ids.map((id) => ({ id, k: r.next() })).sort((a, b) => a.k - b.k).map((x) => x.id);
  const pick = order.slice(0, max);
  const isLabeled = new Set(labeled ?? []);
  if (labeled && !pick.some((id) => isLabeled.has(id))) {
    const first = order.find((id) => isLabeled.has(id));
    if (first) pick[pick.length - 1] = first;
  }
  const keep = new Set(pick);
  return ids.filter((id) => keep.has(id));
}
