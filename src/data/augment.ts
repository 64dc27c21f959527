/**
 * Augmentation (METHOD.md section 5): spatial transforms drawn as one 3x3 matrix in the patch frame
 * (millimetres, axes of the patch grid) that the sampler applies to every modality and label alike
 * while it crops (trilinear for images, nearest for labels); intensity transforms applied per
 * modality to the sampled patch; misalignment simulation as an independent rigid transform of one
 * modality (and its label) about the patch centre.
 */
import { type Mat3, mul3, rotation3, type Vec3 } from "./affine.ts";
import type { Rng } from "./rng.ts";

export interface AugmentOptions {
  /** Probability of mirroring each patch axis (default 0.5). */
  flipProb?: number;
  /** Probability of a random multiple of 90 degrees in-plane (default 0.5; only with isotropic in-plane spacing). */
  rot90Prob?: number;
  /** Probability and range (degrees) of a small rotation (defaults 0.2, 15). */
  rotateProb?: number;
  rotateDeg?: number;
  /** Probability and range of an isotropic scale (defaults 0.2, [0.85, 1.15]). */
  scaleProb?: number;
  scaleRange?: [number, number];
  /** Multiplicative intensity scale (defaults 0.15, [0.75, 1.25]). */
  intensityScaleProb?: number;
  intensityScaleRange?: [number, number];
  /** Additive shift in units of the normalised intensity (defaults 0.15, 0.1). */
  intensityShiftProb?: number;
  intensityShift?: number;
  /** Gamma (defaults 0.3, [0.7, 1.5]), mean and std kept. */
  gammaProb?: number;
  gammaRange?: [number, number];
  /** Gaussian noise with std drawn from [0, noiseStd] (defaults 0.1, 0.3). */
  noiseProb?: number;
  noiseStd?: number;
}

export const DEFAULT_AUGMENT: Required<AugmentOptions> = {
  flipProb: 0.5,
  rot90Prob: 0.5,
  rotateProb: 0.2,
  rotateDeg: 15,
  scaleProb: 0.2,
  scaleRange: [0.85, 1.15],
  intensityScaleProb: 0.15,
  intensityScaleRange: [0.75, 1.25],
  intensityShiftProb: 0.15,
  intensityShift: 0.1,
  gammaProb: 0.3,
  gammaRange: [0.7, 1.5],
  noiseProb: 0.1,
  noiseStd: 0.3,
};

/** Random flips of each axis (p 0.5), nothing else: the plain U-Net recipe. */
export const FLIPS_ONLY: Required<AugmentOptions> = {
  ...DEFAULT_AUGMENT,
  rot90Prob: 0,
  rotateProb: 0,
  scaleProb: 0,
  intensityScaleProb: 0,
  intensityShiftProb: 0,
  gammaProb: 0,
  noiseProb: 0,
};

/** No augmentation at all (validation patches). */
export const NO_AUGMENT: Required<AugmentOptions> = { ...FLIPS_ONLY, flipProb: 0 };

export interface MisalignOptions {
  /** Largest translation in mm (each axis drawn in [-T, T], then the vector limited to length T). */
  translationMm: number;
  /** Largest rotation in degrees (about each axis, drawn in [-R, R]). */
  rotationDeg: number;
  /** The modality to move (default: a random one per patch). */
  modality?: string;
  /** Probability per patch (default 1). */
  prob?: number;
}

/** The axis with the largest spacing when it is more than 3x the smallest, else -1 (isotropic enough). */
export function thickAxis(spacing: readonly number[]): number {
  const mx = Math.max(...spacing), mn = Math.min(...spacing);
  return mx > 3 * mn ? spacing.indexOf(mx) : -1;
}

/**
 * Draws the spatial transform in the patch frame: u_world = S u_patch (mm about the patch centre).
 * Rotations are about the thick axis only for anisotropic spacing; 90-degree turns only in a plane
 * whose two spacings agree within 1%.
 */
export function drawSpatial(rng: Rng, spacing: Vec3, options: AugmentOptions = {}): Mat3 {
  const o = { ...DEFAULT_AUGMENT, ...options };
  let s: Mat3 = [1, 0, 0, 0, 1, 0, 0, 0, 1];
  // Flips.
  const f = [0, 1, 2].map(() => (rng.chance(o.flipProb) ? -1 : 1));
  s = [f[0], 0, 0, 0, f[1], 0, 0, 0, f[2]];
  const thick = thickAxis(spacing);
  const normal = thick >= 0 ? thick : 2;
  const [a, b] = [0, 1, 2].filter((i) => i !== normal);
  if (
    rng.chance(o.rot90Prob) &&
    Math.abs(spacing[a] - spacing[b]) <= 0.01 * Math.max(spacing[a], spacing[b])
  ) {
    const k = 1 + rng.int(3);
    const ang = (k * Math.PI) / 2;
    const r = axisRotation(normal, ang);
    s = mul3(r, s);
  }
  if (rng.chance(o.scaleProb)) {
    const z = rng.uniform(o.scaleRange[0], o.scaleRange[1]);
    s = s.map((v) => v * z);
  }
  if (rng.chance(o.rotateProb)) {
    const lim = (o.rotateDeg * Math.PI) / 180;
    let r: Mat3;
    if (thick >= 0) r = axisRotation(thick, rng.uniform(-lim, lim));
    else r = rotation3(rng.uniform(-lim, lim), rng.uniform(-lim, lim), rng.uniform(-lim, lim));
    s = mul3(r, s);
  }
  return s.map((v) => Math.round(v * 1e12) / 1e12);
}

/** Rotation by `angle` about axis 0, 1 or 2. */
export function axisRotation(axis: number, angle: number): Mat3 {
  return rotation3(axis === 0 ? angle : 0, axis === 1 ? angle : 0, axis === 2 ? angle : 0);
}

/** Draws a rigid misalignment: rotation (3x3) and translation (mm). */
export function drawMisalignment(
  rng: Rng,
  o: MisalignOptions,
): { rotation: Mat3; translation: Vec3 } {
  const lim = (o.rotationDeg * Math.PI) / 180;
  const rotation = rotation3(
    rng.uniform(-lim, lim),
    rng.uniform(-lim, lim),
    rng.uniform(-lim, lim),
  );
  let t: Vec3 = [rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1)];
  const len = Math.hypot(...t);
  if (len > 1) t = t.map((v) => v / len) as Vec3;
  return { rotation, translation: t.map((v) => v * o.translationMm) as Vec3 };
}

/** Intensity augmentation of one modality's patch, in place. */
export function augmentIntensity(data: Float32Array, rng: Rng, options: AugmentOptions = {}): void {
  const o = { ...DEFAULT_AUGMENT, ...options };
  const n = data.length;
  if (rng.chance(o.intensityScaleProb)) {
    const s = rng.uniform(o.intensityScaleRange[0], o.intensityScaleRange[1]);
    for (let i = 0; i < n; i++) data[i] *= s;
  }
  if (rng.chance(o.intensityShiftProb)) {
    const b = rng.uniform(-o.intensityShift, o.intensityShift);
    for (let i = 0; i < n; i++) data[i] += b;
  }
  if (rng.chance(o.gammaProb)) {
    const g = rng.uniform(o.gammaRange[0], o.gammaRange[1]);
    let mn = Infinity, mx = -Infinity, s1 = 0, s2 = 0;
    for (let i = 0; i < n; i++) {
      const v = data[i];
      if (v < mn) mn = v;
      if (v > mx) mx = v;
      s1 += v;
      s2 += v * v;
    }
    const range = mx - mn;
    if (range > 1e-8) {
      const mean0 = s1 / n, std0 = Math.sqrt(Math.max(0, s2 / n - mean0 * mean0));
      let t1 = 0, t2 = 0;
      for (let i = 0; i < n; i++) {
        const v = Math.pow((data[i] - mn) / range, g) * range + mn;
        data[i] = v;
        t1 += v;
        t2 += v * v;
      }
      const mean1 = t1 / n, std1 = Math.sqrt(Math.max(0, t2 / n - mean1 * mean1));
      const k = std1 > 1e-8 ? std0 / std1 : 1;
      for (let i = 0; i < n; i++) data[i] = (data[i] - mean1) * k + mean0;
    }
  }
  if (rng.chance(o.noiseProb)) {
    const sd = rng.uniform(0, o.noiseStd);
    const noise = rng.fillNormal(new Float32Array(n), sd);
    for (let i = 0; i < n; i++) data[i] += noise[i];
  }
}
