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
import { preprocessDataset, type PreprocessPlan } from "../data/preprocess.ts";
import {
  type LabeledCase,
  loadedBytes,
  loadPreprocessedCases,
  type UnlabeledCase,
} from "../data/cases.ts";
import { Rng } from "../data/rng.ts";
import { LabelAccess } from "../data/label_access.ts";
import { SYNTH_TASKS, synthesize, type SynthTask } from "../data/synth.ts";
import type { TrainConfig } from "./config.ts";
import type { Vec3 } from "../data/affine.ts";

/** Folder for generated and preprocessed data: $COMODAL_CACHE or <repo>/.cache. */
export function cacheRoot(): string {
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

export async function prepareData(
  c: TrainConfig,
  opts: { quiet?: boolean } = {},
): Promise<PreparedData> {
  const quiet = opts.quiet ?? false;
  const { manifest: found, source } = await resolveManifest(c, quiet);
  // Unlabeled means never opened: the run's label files are decided here, once, and from here on
  // the manifest names no label file of an unlabeled or test case (see labelsInUse).
  const { labels, labeledIds } = labelsInUse(found, c);
  const manifest = labels.restrict(found);
  // Every modality of the data by default (BraTS: four sequences), except on the cardiac task, whose
  // default is the paper's pair (the first two sequences, bSSFP and LGE); `modalities` overrides.
  const modalities = c.modalities ??
    (c.task === "cardiac" &&
        (c.method === "cmc" || c.method === "early-fusion" || c.method === "mutual")
      ? manifest.modalities.slice(0, 2)
      : [...manifest.modalities]);
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

  const ppDir = path.join(
    cacheRoot(),
    "preprocessed",
    `${manifest.task}-${
      shortHash(
        source + JSON.stringify(c.targetSpacing ?? null) +
          (c.nonFinite === "zero" ? "nonfinite=zero" : ""),
      )
    }`,
  );
  const plan = await preprocessDataset(manifest, {
    outDir: ppDir,
    nonFinite: c.nonFinite,
    targetSpacing: c.targetSpacing
      ? [c.targetSpacing[2], c.targetSpacing[1], c.targetSpacing[0]]
      : undefined,
    onProgress: quiet ? undefined : (done, total, label) => {
      if (done === total || done % 5 === 0) {
        console.error(`  preprocessed ${done}/${total} ${label}`);
      }
    },
  });

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
  const limit = Number(Deno.env.get("COMODAL_AVAILABLE_MEMORY"));
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
