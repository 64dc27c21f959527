/**
 * Training configuration: one zod schema with every default of METHOD.md, the choices marked (ours)
 * as options. Configs come from code, a YAML/JSON file, and `--set key=value` overrides; unknown
 * keys are errors that name the key path.
 */
import { readFileSync } from "node:fs";
import YAML from "yaml";
import { z } from "zod";
import { labeledProblem } from "../data/manifest.ts";

const triple = z.tuple([
  z.number().int().positive(),
  z.number().int().positive(),
  z.number().int().positive(),
]);
const tripleF = z.tuple([z.number().positive(), z.number().positive(), z.number().positive()]);

/**
 * The ViT backbone (network.backbone = "vit"): SAM-Med3D's ViT-B is patchSize 16, dim 768, depth 12,
 * heads 12, neckChannels 384, relPos true, windowSize 14, globalAttnIndexes [2, 5, 8, 11] (on a
 * 128^3 patch); the defaults are a small model that trains on a CPU.
 */
export const VitConfigSchema = z.strictObject({
  /** Token patch size p (a power of 2, one for all axes or per axis); must divide patchSize. */
  patchSize: z.union([z.number().int().positive(), triple]).default(8),
  dim: z.number().int().positive().default(96),
  depth: z.number().int().positive().default(4),
  heads: z.number().int().positive().default(4),
  mlpRatio: z.number().positive().default(4),
  /** Width of the neck's output; default: the deepest level's width. */
  neckChannels: z.number().int().positive().optional(),
  /** Adapter bottleneck width after each block's attention (0 = no adapters). */
  adapterDim: z.number().int().nonnegative().default(0),
  /** Freeze the patch/position embeddings and the first k blocks (adapters stay trainable). */
  frozenBlocks: z.number().int().nonnegative().default(0),
  /** SAM's decomposed relative position bias (blocks.{i}.attn.rel_pos_d/h/w) in every block. */
  relPos: z.boolean().default(false),
  /** Attention window in tokens (one for all axes or per axis) of the blocks not in globalAttnIndexes; 0 = global. */
  windowSize: z.union([z.number().int().nonnegative(), triple]).default(0),
  /** Blocks with global attention when windowSize > 0. */
  globalAttnIndexes: z.array(z.number().int().nonnegative()).default([]),
  /** Pretrained weights: a safetensors file with SAM-Med3D image-encoder names. */
  weights: z.string().optional(),
  /** Key prefix in the weights file (e.g. "image_encoder."). */
  prefix: z.string().default(""),
  /** Fail when a backbone key is missing or a file key under the prefix is unused. */
  strict: z.boolean().default(false),
});

const VIT_DEFAULTS = {
  patchSize: 8,
  dim: 96,
  depth: 4,
  heads: 4,
  mlpRatio: 4,
  adapterDim: 0,
  frozenBlocks: 0,
  relPos: false,
  windowSize: 0,
  globalAttnIndexes: [],
  prefix: "",
  strict: false,
};

export const METHODS = ["cmc", "supervised", "early-fusion", "mean-teacher", "mutual"] as const;
export type Method = typeof METHODS[number];
/** `method` as given: one of METHODS, or "auto" (resolved from the data by `autoMethod`). */
export const METHOD_CHOICES = ["auto", ...METHODS] as const;

export const TrainConfigSchema = z.strictObject({
  /** Task name (cardiac, abdomen, orbit) or a manifest path. */
  task: z.string().min(1),
  /** Folder with the task's data in its native layout; default: the built-in synthetic data. */
  data: z.string().optional(),
  /** Output run folder; default runs/<task>-<method>-<date>-<time>, a new folder per run. */
  out: z.string().optional(),
  /**
   * "auto" (default): early-fusion when every case has all the run's modalities co-registered,
   * cmc when they are not (unpaired or misaligned), supervised for one modality (src/train/data.ts
   * autoMethod). A run stores the resolved method in config.json.
   */
  method: z.enum(METHOD_CHOICES).default("auto"),
  /** Modalities to use (names from the manifest); default: all of them (cardiac: the first two). */
  modalities: z.array(z.string()).optional(),
  /** For `supervised`: the one modality it trains on (default: the first). */
  supervisedModality: z.string().optional(),
  /** Labeled training cases: a count (a whole number >= 1) or a ratio in (0, 1]. Default: every labeled case. */
  labeled: z.number().refine((v) => labeledProblem(v) === null, {
    error: (iss) => labeledProblem(Number(iss.input)) ?? "invalid",
  }).optional(),
  seed: z.number().int().nonnegative().default(0),
  iterations: z.number().int().positive().default(600),
  /**
   * Wall-clock budget of the training loop in seconds (CLI: --time 15m). The iteration count then
   * follows from the measured speed (the cosine schedule ends when the budget is spent) and
   * `iterations` is only the first estimate. Default on real data (a dataset folder or manifest)
   * when `iterations` is not given: DEFAULT_REAL_DATA_TIME_S.
   */
  time: z.number().positive().optional(),
  batchLabeled: z.number().int().positive().default(1),
  batchUnlabeled: z.number().int().nonnegative().default(1),
  /**
   * Patch size (D, H, W) in voxels at the target spacing. Default: planned from the training images'
   * median shape and spacing within patchVoxels (nnU-Net style); the cardiac task uses [8, 80, 80].
   */
  patchSize: triple.optional(),
  /** Voxel budget of the planned patch (default 64^3 = 262144 on the CPU, 128^3 on CUDA). */
  patchVoxels: z.number().int().positive().optional(),
  /** Target spacing (D, H, W) in mm; default: the median spacing of the training set. */
  targetSpacing: tripleF.optional(),
  /**
   * "auto": nnU-Net's rule, a low-resolution stage (coarser spacing) when the planned patch covers
   * less than a quarter of the median training image; "fullres": always the median spacing.
   */
  stage: z.enum(["auto", "fullres"]).default("auto"),
  /**
   * Train on at most this many training cases (a subset drawn with the seed; labeled cases first
   * come as they fall). For datasets too large for this machine's memory or time budget.
   */
  maxTrainCases: z.number().int().positive().optional(),
  /** Load and evaluate at most this many validation cases (a subset drawn with the seed). */
  maxValidationCases: z.number().int().positive().optional(),
  /**
   * Region-based outputs (src/train/regions.ts): "auto" (BraTS's whole tumour / core / enhancing
   * when the classes are BraTS's), "none", or name -> classes (names or indices), nested.
   */
  regions: z.union([
    z.literal("auto"),
    z.literal("none"),
    z.record(z.string(), z.array(z.union([z.string(), z.number().int()]))),
  ]).default("auto"),
  /** NaN/Inf voxels in an image: "error" (default; names the file and the first voxel) or "zero". */
  nonFinite: z.enum(["error", "zero"]).default("error"),
  network: z.strictObject({
    baseWidth: z.number().int().positive().default(16),
    maxWidth: z.number().int().positive().default(256),
    maxLevels: z.number().int().min(2).max(7).default(5),
    mia: z.boolean().default(true),
    fusion: z.enum(["add", "concat", "none"]).default("add"),
    /** "add" fusion starts as the identity (gate scaled by a learnable scalar from 0; ours). */
    fusionZeroGate: z.boolean().default(true),
    sharedDecoder: z.boolean().default(false),
    /**
     * Deep-supervision heads on the decoder levels below full resolution (at most levels - 2),
     * weighted 1/2^i as nnU-Net does; 0 = off.
     */
    deepSupervision: z.number().int().nonnegative().default(2),
    norm: z.enum(["instance", "group"]).default("instance"),
    /** Initial weights: "kaiming" (normal, nnU-Net) or "pytorch" (PyTorch's default uniform). */
    init: z.enum(["kaiming", "pytorch"]).default("kaiming"),
    /** Encoder backbone: the 3D U-Net encoder (default) or a ViT (foundation backbone, src/nn/vit.ts). */
    backbone: z.enum(["unet", "vit"]).default("unet"),
    vit: VitConfigSchema.default(VIT_DEFAULTS),
  }).default({
    baseWidth: 16,
    maxWidth: 256,
    maxLevels: 5,
    mia: true,
    fusion: "add",
    fusionZeroGate: true,
    sharedDecoder: false,
    deepSupervision: 2,
    norm: "instance",
    init: "kaiming",
    backbone: "unet",
    vit: VIT_DEFAULTS,
  }),
  optimizer: z.strictObject({
    kind: z.enum(["adamw", "sgd"]).default("adamw"),
    lr: z.number().positive().default(3e-4),
    weightDecay: z.number().nonnegative().default(1e-5),
    momentum: z.number().min(0).max(1).default(0.99),
    schedule: z.enum(["cosine", "poly", "constant"]).default("cosine"),
    warmup: z.number().int().nonnegative().default(50),
  }).default({
    kind: "adamw",
    lr: 3e-4,
    weightDecay: 1e-5,
    momentum: 0.99,
    schedule: "cosine",
    warmup: 50,
  }),
  loss: z.strictObject({
    lambdaCsc: z.number().nonnegative().default(0.1),
    lambdaCac: z.number().nonnegative().default(0.1),
    /** Ramp length as a fraction of the iterations. */
    rampFraction: z.number().min(0).max(1).default(0.4),
    cscGrid: z.number().int().positive().default(4),
    cscTau: z.number().positive().default(0.5),
    /**
     * CMC: weight of a supervised loss on the fused output (mean of the decoders' logits) of aligned
     * labeled pairs, beside each decoder's own supervised loss.
     */
    lambdaFused: z.number().nonnegative().default(0),
    /** Centre L_csc's channel descriptors before normalising them (src/losses/csc.ts). */
    cscCenter: z.boolean().default(false),
    cacTau: z.number().positive().default(0.1),
    cacMinMass: z.number().nonnegative().default(1),
    /**
     * A class enters L_cac only with a soft mass of at least max(cacMinMass, cacMinFraction x the
     * patch's voxels) in both branches (ours: a fixed mass of 1 almost never leaves out an absent class).
     */
    cacMinFraction: z.number().min(0).max(1).default(0.001),
    /** Add 1 - softDice(p^a, p^b) for aligned pairs. */
    voxelwise: z.boolean().default(false),
    /** Mean teacher: weight of the softmax-MSE consistency (its own, not lambdaCac's). */
    lambdaMt: z.number().nonnegative().default(1),
    /** Mean teacher: std of the Gaussian noise added to student and teacher inputs (independently). */
    mtNoise: z.number().nonnegative().default(0.1),
    /** Mutual learning: weight of the pseudo-label cross-entropy. */
    lambdaMutual: z.number().nonnegative().default(1),
    /** Mutual learning: confidence threshold for pseudo-labels. */
    pseudoThreshold: z.number().min(0).max(1).default(0.7),
  }).default({
    lambdaCsc: 0.1,
    lambdaCac: 0.1,
    rampFraction: 0.4,
    cscGrid: 4,
    cscTau: 0.5,
    lambdaFused: 0,
    cscCenter: false,
    cacTau: 0.1,
    cacMinMass: 1,
    cacMinFraction: 0.001,
    voxelwise: false,
    lambdaMt: 1,
    mtNoise: 0.1,
    lambdaMutual: 1,
    pseudoThreshold: 0.7,
  }),
  /** EMA teacher for L_cac targets (the mean-teacher method always uses one). */
  meanTeacher: z.boolean().default(false),
  emaDecay: z.number().min(0).max(1).default(0.99),
  augment: z.strictObject({
    enabled: z.boolean().default(true),
    /**
     * "default": flips, 90-degree turns, small rotation and scaling, intensity scale/shift, gamma,
     * noise; "flips": random flips of each axis only (the plain U-Net recipe). enabled=false: none.
     */
    mode: z.enum(["default", "flips"]).default("default"),
    misalignMm: z.number().nonnegative().default(0),
    misalignDeg: z.number().nonnegative().default(0),
  }).default({ enabled: true, mode: "default", misalignMm: 0, misalignDeg: 0 }),
  validation: z.strictObject({
    every: z.number().int().nonnegative().default(200),
    overlap: z.number().min(0).max(0.95).default(0.5),
    /** Mirror test-time augmentation in the final evaluation and `predict` (not in the quick validations). */
    mirror: z.boolean().default(true),
    /** Most validation cases evaluated during training (all at the end). */
    maxCases: z.number().int().positive().default(4),
    /** Keep only the largest connected component of every foreground class in predictions. */
    largestComponent: z.boolean().default(false),
  }).default({ every: 200, overlap: 0.5, mirror: true, maxCases: 4, largestComponent: false }),
  checkpointEvery: z.number().int().nonnegative().default(100),
  deterministic: z.boolean().default(false),
  threads: z.number().int().nonnegative().default(0),
  /** Background threads that prepare batches (0 = on the training thread). */
  loaderWorkers: z.number().int().nonnegative().default(1),
  device: z.enum(["cpu", "cuda"]).default("cpu"),
  /** Synthetic data: number of cases generated when the built-in data is used. */
  syntheticCases: z.number().int().positive().default(20),
  /** Write PNG overlays of a few slices per validation case. */
  images: z.boolean().default(true),
});

/** Training-loop budget on real data when neither `iterations` nor `time` is given (15 minutes). */
export const DEFAULT_REAL_DATA_TIME_S = 15 * 60;

/** Parses a duration: "15m", "90s", "1h30m", "2h", or a plain number of seconds. */
export function parseDuration(text: string): number {
  const t = text.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Number(t);
  const m = /^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?$/.exec(t);
  if (!m || !t || (m[1] === undefined && m[2] === undefined && m[3] === undefined)) {
    throw new Error(`Cannot read the duration '${text}': expected e.g. 15m, 90s, 1h30m or seconds`);
  }
  const s = Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3] ?? 0);
  if (!(s > 0)) throw new Error(`Cannot read the duration '${text}': it must be longer than 0 s`);
  return s;
}

export type TrainConfig = z.output<typeof TrainConfigSchema>;
export type TrainConfigInput = z.input<typeof TrainConfigSchema>;

/** Formats zod issues as "key.path: message" lines. */
export function formatIssues(issues: z.core.$ZodIssue[]): string {
  return issues.map((i) => `${i.path.length ? i.path.join(".") : "(root)"}: ${i.message}`).join(
    "; ",
  );
}

/**
 * Defaults that depend on the task, applied under the user's values. The cardiac structures (LV
 * blood pool, myocardium, RV) are single connected objects, so their predictions keep the largest
 * component (removes isolated false positives, as nnU-Net's post-processing does).
 */
export const TASK_DEFAULTS: Record<string, Record<string, unknown>> = {
  cardiac: { patchSize: [8, 80, 80], validation: { largestComponent: true } },
};

function mergeUnder(
  defaults: Record<string, unknown>,
  user: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...defaults };
  for (const [k, v] of Object.entries(user)) {
    const d = out[k];
    out[k] = d && v && typeof d === "object" && typeof v === "object" && !Array.isArray(v)
      ? mergeUnder(d as Record<string, unknown>, v as Record<string, unknown>)
      : v;
  }
  return out;
}

/** Validates a config object; `source` names where it came from in the error. */
export function parseTrainConfig(input: unknown, source = "training config"): TrainConfig {
  if (input && typeof input === "object" && !Array.isArray(input)) {
    const task = (input as Record<string, unknown>).task;
    const d = typeof task === "string" ? TASK_DEFAULTS[task] : undefined;
    if (d) input = mergeUnder(d, input as Record<string, unknown>);
  }
  const r = TrainConfigSchema.safeParse(input);
  if (!r.success) throw new Error(`Invalid ${source}: ${formatIssues(r.error.issues)}`);
  const combos = checkCombinations(r.data);
  if (combos.length) throw new Error(`Invalid ${source}: ${combos.join("; ")}`);
  return r.data;
}

/** The ViT token patch (D, H, W) of a config, or null with the U-Net backbone. */
export function vitTokenPatch(c: TrainConfig): [number, number, number] | null {
  if (c.network.backbone !== "vit") return null;
  const p = c.network.vit.patchSize;
  return typeof p === "number" ? [p, p, p] : [p[0], p[1], p[2]];
}

/** Checks across keys that the schema cannot express; returns "key.path: message" lines. */
function checkCombinations(c: TrainConfig): string[] {
  const out: string[] = [];
  const v = c.network.vit;
  if (c.network.backbone !== "vit") {
    if (v.weights) {
      out.push(
        `network.vit.weights: set, but network.backbone is "${c.network.backbone}" (set network.backbone=vit)`,
      );
    }
    return out;
  }
  const p = typeof v.patchSize === "number" ? [v.patchSize, v.patchSize, v.patchSize] : v.patchSize;
  p.forEach((q, a) => {
    if ((q & (q - 1)) !== 0) {
      out.push(`network.vit.patchSize: ${q} along ${"DHW"[a]} is not a power of 2`);
    } else if (c.patchSize && c.patchSize[a] % q !== 0) {
      out.push(
        `network.vit.patchSize: ${q} does not divide patchSize [${c.patchSize.join(", ")}] along ` +
          `${"DHW"[a]} (${c.patchSize[a]} voxels); choose a patchSize that is a multiple of it`,
      );
    }
  });
  if (v.dim % v.heads !== 0) {
    out.push(`network.vit.heads: ${v.heads} does not divide network.vit.dim ${v.dim}`);
  }
  if (v.frozenBlocks > v.depth) {
    out.push(`network.vit.frozenBlocks: ${v.frozenBlocks} exceeds network.vit.depth ${v.depth}`);
  }
  const bad = v.globalAttnIndexes.filter((i) => i >= v.depth);
  if (bad.length) {
    out.push(
      `network.vit.globalAttnIndexes: ${bad.join(", ")} not a block index (depth ${v.depth})`,
    );
  }
  return out;
}

/** Reads a YAML or JSON config file (keys as in TrainConfig, partial). */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`Cannot read config ${path}: ${(e as Error).message}`);
  }
  try {
    const v = YAML.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      throw new Error("expected a mapping at the top level");
    }
    return v as Record<string, unknown>;
  } catch (e) {
    throw new Error(`Cannot parse config ${path}: ${(e as Error).message}`);
  }
}

/**
 * Applies "a.b.c=value" overrides (value parsed as YAML: numbers, booleans, lists) to a plain object.
 * Unknown keys are caught later by the strict schema, with their full path.
 */
export function applyOverrides(
  base: Record<string, unknown>,
  sets: string[],
): Record<string, unknown> {
  const out = structuredClone(base);
  for (const s of sets) {
    const eq = s.indexOf("=");
    if (eq <= 0) throw new Error(`Cannot apply override '${s}': expected key=value`);
    const path = s.slice(0, eq).split(".");
    const value = YAML.parse(s.slice(eq + 1));
    let node = out as Record<string, unknown>;
    for (const k of path.slice(0, -1)) {
      if (node[k] === undefined) node[k] = {};
      if (typeof node[k] !== "object" || node[k] === null) {
        throw new Error(`Cannot apply override '${s}': '${k}' is not a section`);
      }
      node = node[k] as Record<string, unknown>;
    }
    node[path[path.length - 1]] = value;
  }
  return out;
}
