/**
 * The preprocessing plan, typed: the target spacing (the fingerprint's default or a given one),
 * whether to crop to the body, each modality's kind and normalisation (CT with the dataset
 * statistics of the fingerprint, MR per volume), and the number of classes: everything the
 * per-case transform depends on. `PreprocessPlan` is the plan as a preprocessed folder records it
 * (preprocess.json). The patch size is planned with the network (src/nn/plan.ts).
 */
import type { Vec3 } from "./affine.ts";
import {
  classNames,
  type Manifest,
  type ManifestCase,
  type ModalityKind,
  modalityKind,
} from "./manifest.ts";
import type { Fingerprint } from "./fingerprint.ts";

/** CT intensity statistics of the training data (CT is clipped and z-scored with them). */
export interface CtStats {
  mean: number;
  std: number;
  p005: number;
  p995: number;
}

/** What the per-case transform depends on: the plan's spacing, crop and normalisation. */
export interface CaseTransformSettings {
  target: Vec3;
  crop: boolean;
  kinds: Record<string, ModalityKind>;
  /** CT statistics of the training data (CT is clipped and z-scored with them). */
  ctStats: Record<string, CtStats>;
  /** Number of classes (voxel counts per class of the labels). */
  k: number;
}

/** What a plan is made from besides the manifest and the fingerprint. */
export interface PreprocessPlanOptions {
  /** Target spacing [x, y, z] in mm (default: the fingerprint's). */
  targetSpacing?: readonly number[];
  /** Crop to the body bounding box (default true). */
  crop?: boolean;
}

/**
 * The per-case transform's settings for a manifest: the target spacing (given, else the
 * fingerprint's default; three positive numbers), the crop, each modality's kind, the CT
 * statistics from the fingerprint and the number of classes.
 */
export function planCaseTransform(
  manifest: Manifest,
  fingerprint: Fingerprint,
  opts: PreprocessPlanOptions = {},
): CaseTransformSettings {
  const target = (opts.targetSpacing ? [...opts.targetSpacing] : fingerprint.targetSpacing) as Vec3;
  if (target.length !== 3 || target.some((v) => !(v > 0))) {
    throw new Error(
      `Cannot preprocess: target spacing must be three positive numbers, got ${target}`,
    );
  }
  const kinds = Object.fromEntries(manifest.modalities.map((m) => [m, modalityKind(manifest, m)]));
  const ctStats = Object.fromEntries(
    manifest.modalities.filter((m) => kinds[m] === "ct").map((m) => {
      const s = fingerprint.perModality[m];
      return [m, { mean: s.mean, std: s.std, p005: s.p005, p995: s.p995 }];
    }),
  );
  return { target, crop: opts.crop ?? true, kinds, ctStats, k: classNames(manifest).length };
}

/** The plan as a preprocessed folder records it (preprocess.json). */
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
