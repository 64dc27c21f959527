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
  const levels: LevelPlan[] = [{
    kernel: kernelFor(spacing),
    stride: [1, 1, 1],
    width: widthAt(0),
  }];
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

/**
 * An nnU-Net-style patch size (D, H, W) for images of median shape `shape` (voxels at the target
 * spacing `spacing`, both D, H, W). Every axis is kept at a multiple of the largest power of two (up
 * to 16) that leaves at least 4 voxels after pooling, so the network can downsample it. Starting
 * from the whole median image, the axis with the largest physical extent (mm) is shrunk by one such
 * step until the patch holds at most `budget` voxels.
 */
export function autoPatchSize(shape: Triple, spacing: Triple, budget: number): Triple {
  if (shape.some((s) => !(s >= 1)) || spacing.some((s) => !(s > 0)) || !(budget >= 1)) {
    throw new Error(
      `Automatic patch size: median shape [${shape}], spacing [${spacing}] and voxel budget ${budget} must be positive`,
    );
  }
  const step = (v: number) => {
    let m = 1;
    while (m < 16 && v / (2 * m) >= 4) m *= 2;
    return m;
  };
  const snap = (v: number) => {
    const m = step(v);
    return Math.max(m, Math.round(v / m) * m);
  };
  const p = shape.map((s) => snap(Math.max(1, Math.round(s)))) as Triple;
  while (p[0] * p[1] * p[2] > budget) {
    let a = -1;
    for (let b = 0; b < 3; b++) {
      if (p[b] <= 1) continue;
      if (a < 0 || p[b] * spacing[b] > p[a] * spacing[a]) a = b;
    }
    if (a < 0) break;
    const m = step(p[a] - 1);
    p[a] = Math.max(1, Math.floor((p[a] - 1) / m) * m);
  }
  return p;
}
