/**
 * Network plans: per-level kernel sizes, strides and widths derived from the patch size and the
 * voxel spacing, so anisotropic data (e.g. 1.25 x 1.25 x 8 mm cardiac stacks) is downsampled only
 * along axes where it makes sense (the nnU-Net rule).
 */
import type { Triple } from "./layers.ts";

export interface LevelPlan {
  kernel: Triple;
  /** Stride of the first conv of this level (level 0: [1,1,1]). */
  stride: Triple;
  width: number;
}

export interface UNetPlan {
  levels: LevelPlan[];
  /** The patch size the plan was made for (D, H, W). */
  patchSize: Triple;
}

export interface PlanOptions {
  /** Patch size in voxels (D, H, W). */
  patchSize: Triple;
  /** Voxel spacing in mm along (D, H, W). */
  spacing: Triple;
  /** Most resolution levels (including the full-resolution one). Default 5. */
  maxLevels?: number;
  /** Widths per level; default 16, 32, 64, 128, 256 (capped at maxWidth). */
  widths?: number[];
  baseWidth?: number;
  maxWidth?: number;
  /** An axis is not pooled further once its feature map is smaller than this. Default 4. */
  minFeatureSize?: number;
}

/**
 * Builds a plan: at each level an axis is downsampled by 2 when its current spacing is at most
 * twice the smallest current spacing and its size stays >= minFeatureSize; the kernel is 1 along an
 * axis whose spacing is still more than twice the smallest (so thick slices are not mixed early).
 */
export function planUNet(opts: PlanOptions): UNetPlan {
  const maxLevels = opts.maxLevels ?? 5;
  const base = opts.baseWidth ?? 16;
  const maxWidth = opts.maxWidth ?? 256;
  const minSize = opts.minFeatureSize ?? 4;
  const size = [...opts.patchSize] as Triple;
  const spacing = [...opts.spacing] as Triple;
  if (size.some((s) => !Number.isInteger(s) || s < 1)) {
    throw new Error(`Network plan: patch size [${opts.patchSize}] must be positive integers`);
  }
  if (spacing.some((s) => !(s > 0))) {
    throw new Error(`Network plan: spacing [${opts.spacing}] must be positive`);
  }
  const widthAt = (l: number) => opts.widths?.[l] ?? Math.min(base * 2 ** l, maxWidth);
  const kernelFor = (sp: Triple): Triple => {
    const m = Math.min(...sp);
    return sp.map((s) => (s <= 2 * m ? 3 : 1)) as Triple;
  };
  const levels: LevelPlan[] = [{ kernel: kernelFor(spacing), stride: [1, 1, 1], width: widthAt(0) }];
  while (levels.length < maxLevels) {
    const m = Math.min(...spacing);
    const stride = [0, 1, 2].map((a) =>
      spacing[a] <= 2 * m && size[a] % 2 === 0 && size[a] / 2 >= minSize ? 2 : 1
    ) as Triple;
    if (stride.every((s) => s === 1)) break;
    for (let a = 0; a < 3; a++) {
      size[a] /= stride[a];
      spacing[a] *= stride[a];
    }
    levels.push({ kernel: kernelFor(spacing), stride, width: widthAt(levels.length) });
  }
  if (opts.widths && opts.widths.length < levels.length) levels.length = opts.widths.length;
  return { levels, patchSize: [...opts.patchSize] as Triple };
}

/** Total downsampling factor per axis: patch sizes must be multiples of it. */
export function planDivisor(plan: UNetPlan): Triple {
  const f: Triple = [1, 1, 1];
  for (const l of plan.levels) for (let a = 0; a < 3; a++) f[a] *= l.stride[a];
  return f;
}
