/**
 * The training patch size: the config's, or one planned from the training images (nnU-Net style).
 * @module
 */
import { autoPatchSize } from "../nn/plan.ts";
import type { Triple } from "../nn/layers.ts";
import { type TrainConfig, vitTokenPatch } from "./config.ts";
import type { PreparedData } from "./data.ts";

/**
 * Voxel budget of a planned patch: 64^3 on the CPU (the plain U-Net recipe's patch; a 4-level
 * U-Net step at batch 2 takes about 0.5 s on 2 cores), 128^3 on CUDA.
 */
export function defaultPatchVoxels(device: TrainConfig["device"]): number {
  return device === "cuda" ? 128 ** 3 : 64 ** 3;
}

/** Per-axis median (D, H, W) of the training images' shapes at the target spacing, after the crop. */
export function medianShape(data: Pick<PreparedData, "labeled" | "unlabeled">): Triple {
  const shapes: Triple[] = [];
  for (const c of [...data.labeled, ...data.unlabeled]) {
    for (const v of Object.values(c.volumes)) shapes.push([v.dims[2], v.dims[1], v.dims[0]]);
  }
  if (shapes.length === 0) throw new Error("Cannot plan a patch size: no training images");
  return [0, 1, 2].map((a) => {
    const s = shapes.map((x) => x[a]).sort((p, q) => p - q);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : Math.round((s[m - 1] + s[m]) / 2);
  }) as Triple;
}

/**
 * The patch size (D, H, W) to train with: config.patchSize when given (median null), else planned
 * from the median training shape (returned) and target spacing within config.patchVoxels; a planned
 * patch is rounded up to a multiple of the ViT token patch with that backbone.
 */
export function resolvePatchSize(
  c: TrainConfig,
  data: PreparedData,
): { patch: Triple; median: Triple | null } {
  if (c.patchSize) return { patch: [...c.patchSize] as Triple, median: null };
  const s = data.targetSpacing;
  const median = medianShape(data);
  const patch = autoPatchSize(
    median,
    [s[2], s[1], s[0]],
    c.patchVoxels ?? defaultPatchVoxels(c.device),
  );
  const tok = vitTokenPatch(c);
  if (!tok) return { patch, median };
  return {
    patch: patch.map((p, a) => Math.max(tok[a], Math.ceil(p / tok[a]) * tok[a])) as Triple,
    median,
  };
}
